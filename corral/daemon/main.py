"""corrald's entry point.

Start-up: take the single-instance lock (flock on corrald.pid, released by the kernel when the process dies, so a
crash leaves no stale lock), open the store, re-attach to running VMs, then serve the API on a unix socket created
under umask 077 (mode 0600 from the first moment), and with ``--listen ADDR:PORT`` (CORRAL_LISTEN) over TCP with TLS
too, through corral.api.gate (corral.daemon.listener). Shut-down (SIGTERM/SIGINT) stops supervising and leaves every
QEMU running: VMs outlive the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator
from typing import IO, Any

import uvicorn
from fastapi import FastAPI

from corral import paths
from corral.api.app import create_app
from corral.api.deps import Services, auth_service
from corral.api.forward import ClusterForward
from corral.api.routes import daemon as daemon_routes
from corral.api.routes import vms as vm_routes
from corral.auth import tls
from corral.backup.service import BackupService
from corral.cluster.service import ClusterService
from corral.daemon import listener
from corral.errors import CorralError
from corral.idle.service import IdleService
from corral.images.store import ImageStore
from corral.memory.balloon import BalloonService
from corral.metrics.collector import VMCollector, VMScrape
from corral.metrics.sampler import MetricsSampler, host_name
from corral.migration import service as migration_service
from corral.mounts.service import MountService
from corral.operations.recovery import Recovery
from corral.pools.service import PoolService
from corral.portable.service import PortableService
from corral.sandbox.service import SandboxService
from corral.settings import Settings, load_settings
from corral.storage import full
from corral.storage.disks import DiskService
from corral.storage.recovery import StorageRecovery
from corral.storage.service import StorageService
from corral.store.db import Store
from corral.templates.service import TemplateService
from corral.vm.data_copy import DataCopyService
from corral.vm.eventlog import EventLog
from corral.vm.service import VMService

log = logging.getLogger("corrald")


class AlreadyRunning(CorralError):
    pass


def take_lock(settings: Settings) -> IO[str]:
    """Hold an exclusive flock on corrald.pid for the daemon's lifetime."""
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    f = open(settings.home / paths.DAEMON_PID, "a+")  # noqa: SIM115 - held open: the lock lives with it
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        f.seek(0)
        raise AlreadyRunning(f"corrald is already running for {settings.home} (pid {f.read().strip() or '?'})") from exc
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def bind_socket(settings: Settings) -> socket.socket:
    path = settings.socket
    path.unlink(missing_ok=True)  # safe: we hold the lock, so no live daemon owns it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def build_services(settings: Settings, store: Store, images: ImageStore) -> Services:
    """Every domain service, composed over the VM service: the one place they are wired together."""
    vms = VMService(settings, store, images)
    recovery = Recovery(vms, vms.journal)
    storage = StorageService(vms)
    templates = TemplateService(vms)
    backups = BackupService(vms, settings, storage)
    StorageRecovery(storage).register(recovery)
    disks = DiskService(vms)
    portable = PortableService(storage)
    copies = DataCopyService(vms)
    mounts = MountService(vms)
    sandbox = SandboxService(vms, templates)
    for service in (templates, backups, disks, portable, copies, mounts, sandbox):
        service.register_recovery(recovery)
    migration_service.attach(vms, storage, recovery)  # live migration (corral.migration)
    svc = Services(settings=settings, store=store, images=images, vms=vms, storage=storage,
                   portable=portable, disks=disks, mounts=mounts,
                   backups=backups, idle=IdleService(vms, settings.idle_interval),
                   templates=templates, pools=PoolService(templates), balloon=BalloonService(vms),
                   recovery=recovery, copies=copies, sandbox=sandbox)
    svc.cluster = ClusterService(vms, settings, info=lambda name: _vm_info(svc, name),
                                 cert_pem=lambda: _cert_pem(settings))
    svc.cluster.templates = lambda: [t.name for t in templates.all()]  # type: ignore[method-assign]
    svc.cluster.migrations = lambda: migration_service.attach(vms, storage, recovery)
    svc.cluster.backups = lambda: backups
    return svc


def _vm_info(svc: Services, name: str) -> dict[str, Any] | None:
    """A VM as `corral ls` shows it, JSON-ready: what the cluster shows of it while its host does not answer."""
    rec = svc.store.get_vm(name)
    if rec is None:
        return None
    return vm_routes.to_info(svc, rec).model_dump(mode="json", exclude={"disks", "balloon"})


def _cert_pem(settings: Settings) -> str:
    cert, _ = tls.ensure_certificate(settings.home, settings.tls_cert, settings.tls_key)
    return cert.read_text()


async def serve(settings: Settings) -> None:
    lock = take_lock(settings)
    tcp = listener.bind(settings.listen) if settings.listen else None  # first: a port in use fails the start
    store = Store(settings.database)
    images = ImageStore(settings.images_dir, settings.cache)
    svc = build_services(settings, store, images)
    auth_service(svc)  # users and tokens tables made now, not by the first request (a refused login changes nothing)
    vms, backups, idle, pools, recovery = svc.vms, svc.backups, svc.idle, svc.pools, svc.recovery
    cluster = svc.cluster
    assert backups is not None and idle is not None and pools is not None and recovery is not None
    assert cluster is not None
    if settings.listen:
        cluster.qemu_version = daemon_routes.qemu_version(settings.qemu_binary)
    sampler = MetricsSampler(vms, settings.metrics_interval)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        vms.event(None, "daemon", f"corrald started (pid {os.getpid()})")
        await vms.recovery.recover()
        await recovery.run()  # operations a dead daemon left half done: finished or rolled back, then swept
        await cluster.start()  # rejoin the cluster this home belongs to, if any (etcd down: VMs run, it retries)
        housekeeping = asyncio.create_task(_housekeeping(vms))
        expiry = asyncio.create_task(_expiry(vms, settings.expiry_interval))
        disk_full = asyncio.create_task(_disk_full(vms))
        scheduled = asyncio.create_task(_backup_schedules(backups, settings.backup_check_interval))
        await idle.reconcile()  # hold the forwarded ports of VMs suspended with an idle policy again
        idle_loop = asyncio.create_task(idle.run())
        pool_fill = asyncio.create_task(pools.run())  # after recover: members re-attached like any VM
        if remote is not None:
            remote.start()
        metrics = asyncio.create_task(sampler.run())  # GET /metrics renders what it caches
        try:
            yield
        finally:
            if remote is not None:
                await remote.stop()  # first: no remote request runs on a store being closed
            await cluster.stop()
            housekeeping.cancel()
            expiry.cancel()
            disk_full.cancel()
            scheduled.cancel()
            idle_loop.cancel()
            pool_fill.cancel()
            metrics.cancel()
            await idle.close()
            await vms.shutdown()
            vms.event(None, "daemon", "corrald stopped; VMs left running")
            store.close()

    app = create_app(svc)
    app.router.lifespan_context = lifespan
    served = ClusterForward(app, lambda: svc.cluster)  # a VM another host holds: its request goes there
    remote = None
    if tcp is not None:
        cert, key = tls.ensure_certificate(settings.home, settings.tls_cert, settings.tls_key)
        remote = listener.RemoteListener(app, auth_service(svc), tcp, cert, key, inner=served)
    app.state.metrics = sampler.scrape = VMScrape(VMCollector(lambda: sampler.cache, host_name(),
                                                              daemon_starts=lambda: sampler.daemon_starts))
    sock = bind_socket(settings)
    config = uvicorn.Config(served, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=5)
    server = _Server(config, vms.events)
    try:
        await server.serve(sockets=[sock])
    finally:
        settings.socket.unlink(missing_ok=True)
        lock.close()


#: Seconds a shut-down may take before the daemon exits regardless (QEMU runs detached, so no VM is lost).
SHUTDOWN_GRACE = 20.0


class _Server(uvicorn.Server):
    """Ends the event streams first on shut-down: uvicorn waits for open connections before the lifespan ends.

    A shut-down that hangs (a QMP peer that never closes, a thread stuck in I/O) must not leave a daemon that ignores
    SIGTERM: a watchdog thread, armed by the first exit signal, ends the process after :data:`SHUTDOWN_GRACE`
    seconds. That is safe because the VMs outlive the daemon and the store is SQLite in WAL mode (a commit is whole
    or absent); the kernel drops the pidfile lock with the process.
    """

    def __init__(self, config: uvicorn.Config, events: EventLog, grace: float = SHUTDOWN_GRACE) -> None:
        super().__init__(config)
        self.events = events
        self.grace = grace
        self._watchdog: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: object) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Timer(self.grace, _force_exit, args=(self.grace,))
            self._watchdog.daemon = True
            self._watchdog.start()
        super().handle_exit(sig, frame)  # type: ignore[arg-type]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.events.end_streams()
        await super().shutdown(sockets)


def _force_exit(grace: float) -> None:
    log.error("shut-down did not finish within %.0fs: exiting now (VMs keep running)", grace)
    logging.shutdown()
    os._exit(1)


async def _housekeeping(vms: VMService) -> None:
    while True:
        await asyncio.sleep(30)
        await asyncio.to_thread(vms.maintain_logs)


async def _expiry(vms: VMService, interval: float) -> None:
    """Check every VM's expiry every ``interval`` seconds (CORRAL_EXPIRY_INTERVAL): warn, then act."""
    while True:
        await asyncio.sleep(interval)
        try:
            await vms.expiry.check_expiry()
        except Exception:
            log.exception("expiry check failed")


async def _disk_full(vms: VMService) -> None:
    """Resume the VMs paused on a full disk once their file systems have room again (corral.storage.full)."""
    while True:
        await asyncio.sleep(full.POLL_SECONDS)
        try:
            await full.resume_when_freed(vms)
        except Exception:
            log.exception("full-disk poll failed")
async def _backup_schedules(backups: BackupService, interval: float) -> None:
    """Run the due backup schedules every ``interval`` seconds (CORRAL_BACKUP_CHECK_INTERVAL)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await backups.run_due()
        except Exception:
            log.exception("backup schedule check failed")


def main() -> None:
    parser = argparse.ArgumentParser(prog="corrald", description="Corral's daemon: serves the API on a unix socket.")
    parser.add_argument("--listen", metavar="ADDR:PORT", help="serve the API over TCP with TLS too (CORRAL_LISTEN): "
                        "every request needs a token; see docs/explanation/access.md")
    args = parser.parse_args()
    if args.listen:
        os.environ["CORRAL_LISTEN"] = args.listen
    try:
        settings = load_settings()
    except CorralError as exc:
        print(f"corrald: {exc.message}", file=sys.stderr)
        sys.exit(2)
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    logging.basicConfig(
        level=logging.INFO if os.environ.get("CORRAL_DEBUG") is None else logging.DEBUG,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line a forwarded request is noise
    try:
        asyncio.run(serve(settings))
    except CorralError as exc:  # already running, a port in use, a bad TLS file
        print(f"corrald: {exc.message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
