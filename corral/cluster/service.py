"""The cluster as the API sees it: init and join, the hosts, drain, and where a VM is or goes.

A host is in a cluster when its home holds ``cluster.json`` (written by `corral cluster init|join`): its name, the
etcd it uses (and whether corrald started that etcd itself), its labels. Without it none of this runs and the host
is alone, on SQLite, as before. The host's own VMs stay in its SQLite store (their runtime: QEMU, disks); etcd holds
what the cluster shares (corral.cluster.registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from corral import detach
from corral.auth.principal import Principal
from corral.cluster import etcd_server, fence, peer
from corral.cluster.member import LEASE_TTL, Member
from corral.cluster.models import (
    ClusterConfig,
    ClusterSettings,
    DrainResult,
    HostRecord,
    HostState,
    PlacementRequest,
    Strategy,
    VMPlacement,
)
from corral.cluster.registry import EtcdUnavailable, Registry, Snapshot, parse_endpoints
from corral.errors import Conflict, CorralError, EngineError, InvalidInput, NotFound
from corral.fleet import FLEET_LABEL
from corral.migration.models import MigrationResult
from corral.migration.service import MigrationService
from corral.settings import Settings, parse_listen
from corral.store.db import VMRecord
from corral.vm import host as host_capacity
from corral.vm import labels as lbl
from corral.vm.service import VMService

if TYPE_CHECKING:
    from corral.backup.service import BackupService
from corral.vm.spec import VMSpec

log = logging.getLogger(__name__)

CONFIG_FILE = "cluster.json"
FENCE_LOG = "cluster-fence.log"
#: Lease TTLs a host must have been seen down before its HA VMs are started elsewhere, on top of the lease's own
#: expiry (its fence fired at 0.7 TTL after its last renewal: corral.cluster.fence).
FENCE_GRACE = 0.5
#: Tries of a placement whose transaction lost a race (another launch took the room first).
PLACE_TRIES = 8
HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class ClusterService:
    def __init__(self, vms: VMService, settings: Settings, info: Callable[[str], dict[str, Any] | None],
                 cert_pem: Callable[[], str]) -> None:
        self.vms = vms
        self.settings = settings
        self.info = info
        self.cert_pem = cert_pem
        self.config: ClusterConfig | None = None
        self.member: Member | None = None
        self.registry: Registry | None = None
        self.migrations: Callable[[], MigrationService] | None = None  # live migration (corral.migration)
        self.backups: Callable[[], BackupService] | None = None  # HA restarts restore from backups
        self._down_since: dict[str, float] = {}  # host -> when this host first saw it down (monotonic)
        self._restoring: set[str] = set()
        vms.start_checks.append(self._start_check)

    # -- configuration ----------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.settings.home / CONFIG_FILE

    @property
    def secret(self) -> str | None:
        """The cluster's secret, once read from etcd: the gate admits the other members with it."""
        return self.member.secret if self.member is not None else None

    @property
    def enabled(self) -> bool:
        return self.member is not None

    @property
    def name(self) -> str:
        return self.config.name if self.config is not None else ""

    def address(self) -> tuple[str, str]:
        """(IP, https URL) of this host's TLS listener: what the other members reach it by."""
        if not self.settings.listen:
            raise InvalidInput("this host's corrald does not listen on TCP, so other hosts cannot reach it: start "
                               "it with `corrald --listen ADDR:PORT` (CORRAL_LISTEN), ADDR an address they reach")
        ip, port = parse_listen(self.settings.listen)
        if ip in ("0.0.0.0", "::", ""):
            raise InvalidInput(f"corrald listens on {self.settings.listen}, which is no address another host can "
                               "use: listen on this host's cluster address (CORRAL_LISTEN=IP:PORT)")
        return ip, f"https://{ip}:{port}"

    def base_record(self) -> HostRecord:
        assert self.config is not None
        _, url = self.address()
        accel = self.vms._accel  # noqa: SLF001 - what the first start probed; empty until then
        return HostRecord(name=self.config.name, address=url, cert_pem=self.cert_pem(), labels=self.config.labels,
                          cpus=host_capacity.host_cpus(), memory_mib=host_capacity.host_memory_mib(),
                          cpu_overcommit=self.settings.cpu_overcommit,
                          memory_overcommit=self.settings.memory_overcommit,
                          images=sorted(m.name if m.arch == "x86_64" else f"{m.name}@{m.arch}"
                                        for m in self.vms.images.list()),
                          templates=sorted(self.templates()), qemu_version=self.qemu_version,
                          accelerator=accel.name if accel is not None else "")

    qemu_version = ""
    templates: Callable[[], list[str]] = staticmethod(lambda: [])  # type: ignore[assignment]

    # -- start, init, join ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """At daemon start: rejoin the cluster this home belongs to, if any (etcd down: keep trying, VMs run)."""
        try:
            doc = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            return
        self.config = ClusterConfig.model_validate(doc)
        await self._connect(first=False)

    async def _connect(self, first: bool) -> None:
        assert self.config is not None
        if self.config.managed_etcd:
            try:
                await asyncio.to_thread(self._ensure_etcd)
            except (CorralError, OSError) as exc:
                if first:
                    raise
                log.warning("%s; tried again while this host runs", exc)  # the daemon starts, its VMs run
        self.registry = Registry(self.config.etcd)
        secret = await self.registry.ensure_secret() if first else None
        restart = (lambda: asyncio.to_thread(self._ensure_etcd)) if self.config.managed_etcd else None
        self.member = Member(self.vms, self.registry, self.base_record, self.info, self.lease_ttl,
                             on_unavailable=restart, ensure_fence=self._ensure_fence, after=self._failover)
        self.member.secret = secret
        self.member.start()
        if first:
            await asyncio.wait_for(self.member.connected.wait(), 30)
            deadline = time.monotonic() + 20
            while self.name not in (await self.registry.snapshot()).alive:  # the fence took the lease
                if time.monotonic() > deadline:
                    raise EngineError(f"the fence did not take this host's lease: see {self.settings.home / FENCE_LOG}")
                await asyncio.sleep(0.1)

    @property
    def lease_ttl(self) -> int:
        return int(os.environ.get("CORRAL_CLUSTER_LEASE_TTL", LEASE_TTL))

    def _ensure_fence(self) -> None:
        """Start this host's fence (it holds the lease: corral.cluster.fence) unless it runs."""
        home = self.settings.home
        if fence.running(home) is None:
            detach.spawn_detached(fence.argv(home), home / FENCE_LOG)
            deadline = time.monotonic() + 10
            while fence.running(home) is None and time.monotonic() < deadline:
                time.sleep(0.05)

    async def _start_check(self, rec: VMRecord) -> None:
        """Fencing on this side: an HA VM starts only on the host etcd places it on (after a failover, the dead
        host's copy must not come back when that host does)."""
        if not rec.spec.placement.ha or self.registry is None:
            return
        try:
            p = await self.registry.placement(rec.name)
        except EtcdUnavailable as exc:
            raise Conflict(f"HA VM '{rec.name}' starts only where the cluster places it, and etcd cannot be asked "
                           f"now ({exc.message}): not started") from None
        if p is not None and p.host != self.name:
            raise Conflict(f"HA VM '{rec.name}' now runs on host '{p.host}' (restarted there while this host was "
                           f"down): not started here; remove this copy with `corral rm {rec.name}` on this host")

    async def _failover(self, snap: Snapshot) -> None:
        """Each pass: take over the HA VMs of hosts down for longer than the fence needs, one transaction each (of
        several hosts trying, exactly one wins), and restore them here from their newest backup."""
        from corral.cluster.placement import NoHostFits, place

        now = time.monotonic()
        for h in snap.hosts:
            if snap.host_state(h) == HostState.DOWN:
                self._down_since.setdefault(h, now)
            else:
                self._down_since.pop(h, None)
        repo = snap.settings.ha_repo
        for vm, p in sorted(snap.placements.items()):
            if (not p.ha or p.host == self.name or p.host not in self._down_since or vm in self._restoring
                    or now - self._down_since[p.host] < self.lease_ttl * FENCE_GRACE
                    or self.vms.store.get_vm(vm) is not None):
                continue
            if repo is None:
                log.warning("HA VM '%s' of down host %s cannot be restarted: the cluster has no HA repository "
                            "(`corral cluster init --ha-repo DIR`)", vm, p.host)
                continue
            req = PlacementRequest(vm=vm, vcpus=p.vcpus, memory_mib=p.memory_mib, host=self.name,
                                   image=p.image or None)
            try:
                place(req, snap.host_list(), list(snap.placements.values()))
            except NoHostFits:
                continue  # no room here: another host may take it
            mine = p.model_copy(update={"host": self.name, "state": "creating", "updated_at": time.time()})
            if not await self._need().claim(mine, snap.revisions.get(vm, 0)):
                continue
            self._restoring.add(vm)
            self.vms.spawn_background(self._restore(vm, repo, p.host), f"ha-{vm}")

    async def _restore(self, vm: str, repo: str, dead: str) -> None:
        try:
            if self.backups is None:
                raise InvalidInput("this corrald has no backup service")
            backups = self.backups()
            found = await backups.list_backups(repo, vm)
            if not found:
                raise NotFound(f"no backup of '{vm}' in the HA repository {repo}")
            newest = max(found, key=lambda b: b.created)
            await backups.restore(newest.id, repo, to=vm, in_place=None)
            await self.vms.start(vm)
            self.vms.event(vm, "ha", f"started here from backup {newest.id} ({newest.created:%Y-%m-%d %H:%M:%S}Z) "
                           f"after host '{dead}' went down", backup=newest.id, dead_host=dead)
        except CorralError as exc:
            self.vms.event(vm, "ha", f"could not start it here after host '{dead}' went down: {exc.message}",
                           result="error", dead_host=dead)
        finally:
            self._restoring.discard(vm)
            if self.member is not None:
                self.member.wake.set()

    def _ensure_etcd(self) -> None:
        ip, _ = self.address()
        etcd_server.ensure(self.settings.home / "etcd" / "data", self.name, ip)

    async def init(self, etcd: str | None, name: str | None, labels: dict[str, str],
                   ha_repo: str | None = None) -> HostRecord:
        """Make this host the first member: start etcd here (or use ``etcd``), make the cluster's secret."""
        if ha_repo is not None and not Path(ha_repo).is_absolute():
            raise InvalidInput(f"--ha-repo {ha_repo!r}: give an absolute path every host sees (a shared directory)")
        if ha_repo is not None and self.backups is not None and not (Path(ha_repo) / "corral-backup.json").exists():
            await self.backups().init_repo(ha_repo)  # a new or empty directory becomes the HA repository
        rec = await self._begin(etcd, name, labels, creating=True)
        if ha_repo is not None:
            await self._need().set_settings(ClusterSettings(ha_repo=ha_repo))
        return rec

    async def join(self, etcd: str, name: str | None, labels: dict[str, str]) -> HostRecord:
        return await self._begin(etcd, name, labels, creating=False)

    async def _begin(self, etcd: str | None, name: str | None, labels: dict[str, str], creating: bool) -> HostRecord:
        if self.config is not None:
            raise Conflict(f"this host is already a member of a cluster, as '{self.config.name}' (etcd "
                           f"{self.config.etcd}): nothing changed")
        ip, _ = self.address()
        name = name or socket.gethostname().split(".")[0].lower()
        if not HOST_NAME.match(name):
            raise InvalidInput(f"{name!r} is not a host name: use lower-case letters, digits and '-'")
        try:
            checked = lbl.check_labels(labels)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        managed = creating and etcd is None
        url = etcd or f"http://{ip}:{etcd_server.CLIENT_PORT}"
        parse_endpoints(url)
        self.config = ClusterConfig(name=name, etcd=url, managed_etcd=managed, labels=checked)
        try:
            if not creating:
                probe = Registry(url)
                try:
                    snap = await probe.snapshot()
                finally:
                    await probe.close()
                if not snap.secret:
                    raise InvalidInput(f"etcd at {url} holds no Corral cluster: run `corral cluster init` on the "
                                       "first host, then join it")
                if name in snap.alive:
                    raise Conflict(f"a host named '{name}' is already a live member: join with another --name")
            tmp = self.config_path.with_suffix(".tmp")  # first: the fence reads it
            tmp.write_text(self.config.model_dump_json(indent=2) + "\n")
            tmp.replace(self.config_path)
            await self._connect(first=True)
        except BaseException:
            await self._drop()
            raise
        self.vms.event(None, "cluster", f"{'created the cluster' if creating else 'joined the cluster'} as host "
                       f"'{name}' (etcd {url})", host=name, etcd=url)
        return self.base_record()

    async def _drop(self) -> None:
        """Undo a failed init or join: no fence, no cluster.json, nothing held."""
        pid = fence.running(self.settings.home)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self.config_path.unlink(missing_ok=True)
        if self.member is not None:
            await self.member.stop()
        elif self.registry is not None:
            await self.registry.close()
        self.config, self.member, self.registry = None, None, None

    async def stop(self) -> None:
        if self.member is not None:
            await self.member.stop()

    # -- reading ----------------------------------------------------------------------------------------------
    def _need(self) -> Registry:
        if self.registry is None:
            raise InvalidInput("this host is in no cluster: `corral cluster init`, or `corral cluster join ETCD`")
        return self.registry

    async def snapshot(self) -> Snapshot:
        return await self._need().snapshot()

    async def hosts(self) -> list[HostRecord]:
        return (await self.snapshot()).host_list()

    async def host(self, name: str) -> HostRecord:
        for h in await self.hosts():
            if h.name == name:
                return h
        raise NotFound(f"no host named '{name}' in the cluster: see `corral host ls`")

    async def set_draining(self, name: str, draining: bool) -> HostRecord:
        await self.host(name)
        await self._need().set_draining(name, draining)
        self.vms.event(None, "drain" if draining else "undrain",
                       f"host '{name}' {'takes no new VMs' if draining else 'takes new VMs again'}", host=name)
        return await self.host(name)

    # -- where a VM is, or goes -------------------------------------------------------------------------------
    async def owner_of(self, vm: str) -> HostRecord | None:
        """The other host that holds ``vm``; None when this host does (or nobody: the local route answers)."""
        if self.registry is None or self.vms.store.get_vm(vm) is not None:
            return None
        snap = await self.registry.snapshot()
        p = snap.placements.get(vm)
        if p is None or p.host == self.name:
            return None
        h = snap.hosts.get(p.host)
        if h is None:
            return None
        if snap.host_state(p.host) == HostState.DOWN:
            raise CorralError(f"VM '{vm}' is on host '{p.host}', which is down (its lease expired): it cannot be "
                              "reached now; see `corral host ls`")
        return h

    async def place(self, spec: VMSpec, *, exclude: list[str] | None = None) -> tuple[HostRecord, bool]:
        """Choose the host for a new VM and reserve its room there (a transaction, retried when another placement
        won the race); (host, whether it is this one)."""
        from corral.cluster.placement import place  # the scheduler: a pure function

        reg = self._need()
        req = PlacementRequest(vm=spec.name, vcpus=spec.vcpus, memory_mib=spec.memory, image=_image_key(spec),
                               host=spec.placement.host, host_labels=spec.placement.host_labels,
                               group=spec.placement.group or spec.labels.get(FLEET_LABEL),
                               strategy=Strategy(spec.placement.strategy), exclude=exclude or [])
        for _ in range(PLACE_TRIES):
            snap = await reg.snapshot()
            if spec.name in snap.placements:
                raise Conflict(f"a VM named '{spec.name}' already exists in the cluster (on host "
                               f"'{snap.placements[spec.name].host}'): choose another name")
            chosen = place(req, snap.host_list(), list(snap.placements.values()))
            p = VMPlacement(name=spec.name, host=chosen.name, vcpus=spec.vcpus, memory_mib=spec.memory,
                            group=req.group, state="creating", project=spec.project, owner=spec.owner,
                            image=spec.image, ha=spec.placement.ha, updated_at=time.time())
            if await reg.reserve(p, snap.hostrev.get(chosen.name, 0)):
                return chosen, chosen.name == self.name
        raise Conflict(f"VM '{spec.name}' could not be placed: other launches kept taking the room first; try again")

    async def unplace(self, vm: str, host: str) -> None:
        with contextlib.suppress(CorralError):
            await self._need().release(vm, host)

    # -- moving VMs: live migration and drain ---------------------------------------------------------------
    async def migrate(self, name: str, to: str | None, timeout: float = 600.0) -> MigrationResult:
        """Move running VM ``name`` (it must be here) live to host ``to``, or where the scheduler puts it (this host
        excluded); on success its placement moves in etcd. On failure it runs on here, nothing left there."""
        from corral.cluster.placement import place

        reg = self._need()
        rec = self.vms.store.get_vm(name)
        if rec is None:
            raise NotFound(f"no VM named '{name}' on host '{self.name}'")
        if to == self.name:
            raise InvalidInput(f"VM '{name}' already runs on host '{to}': name another host (`corral host ls`)")
        snap = await reg.snapshot()
        hosts = snap.host_list()
        if to is not None and to not in snap.hosts:
            raise NotFound(f"no host named '{to}' in the cluster: see `corral host ls`")
        current = snap.placements.get(name)
        req = PlacementRequest(vm=name, vcpus=rec.spec.vcpus, memory_mib=rec.spec.memory, image=_image_key(rec.spec),
                               host=to, group=current.group if current is not None else None,
                               exclude=[self.name], host_labels={} if to else rec.spec.placement.host_labels)
        target = place(req, hosts, list(snap.placements.values()))
        if self.migrations is None:
            raise InvalidInput("this corrald runs no live migration service")
        remote = peer.PeerTarget(target, self.secret or "")
        self.vms.event(name, "migrate", f"moving live to host '{target.name}'", result="started", to=target.name)
        result = await self.migrations().migrate(name, remote, timeout)
        moved = VMPlacement(name=name, host=target.name, vcpus=rec.spec.vcpus, memory_mib=rec.spec.memory,
                            group=req.group, state="running", project=rec.spec.project, owner=rec.spec.owner,
                            image=rec.spec.image, ha=rec.spec.placement.ha, vm_id=rec.id, updated_at=time.time(),
                            info=current.info if current is not None else None)
        if not await reg.move(name, self.name, moved):
            log.warning("VM '%s' moved to %s, but its placement no longer named this host", name, target.name)
            await reg.update_placement(moved)
        if self.member is not None:
            self.member.wake.set()
        return result.model_copy(update={"target": target.name})

    async def drain(self, name: str, timeout: float = 3600.0) -> DrainResult:
        """Mark host ``name`` draining, then move its running VMs live to the others (placed as new ones would be,
        that host excluded). A VM that cannot move stays, named in the result; stopped VMs stay where their disks
        are."""
        await self.set_draining(name, True)
        snap = await self.snapshot()
        moved, failed, stayed = [], {}, []
        for vm, p in sorted(snap.placements.items()):
            if p.host != name:
                continue
            if p.state != "running":
                stayed.append(vm)
                continue
            try:
                if name == self.name:
                    await self.migrate(vm, None)
                else:
                    await self._remote_move(snap.hosts[name], vm)
                moved.append(vm)
            except CorralError as exc:
                failed[vm] = exc.message
        return DrainResult(host=name, moved=moved, failed=failed, stayed=stayed)

    async def _remote_move(self, host: HostRecord, vm: str) -> None:
        async with self.peer(host, timeout=3600.0) as c:
            r = await c.post(f"/v1/vms/{vm}/move", json={"to": None})
            if r.status_code >= 400:
                try:
                    msg = r.json().get("message", r.text)
                except ValueError:
                    msg = r.text
                raise CorralError(str(msg))

    def peer(self, host: HostRecord, principal: Principal | None = None, timeout: float = 600.0) -> httpx.AsyncClient:
        if not self.secret:
            raise EtcdUnavailable("the cluster's secret was not read from etcd yet: try again")
        return peer.client(host, self.secret, principal, timeout)


def _image_key(spec: VMSpec) -> str:
    """The image as hosts publish theirs: NAME for x86_64, NAME@ARCH for another architecture."""
    return spec.image if spec.arch == "x86_64" else f"{spec.image}@{spec.arch}"
