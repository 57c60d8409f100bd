"""The sending side of a live migration: a running VM goes to another corrald (a :class:`Target`: a
:class:`corral.client.remote.Remote`).

Steps (the VM's lock held, journaled as ``migrate``): the target prepares (``POST /v1/migrations/incoming``); each
disk's top node is mirrored (``sync=full``: the chain flattened) into an NBD client node on the target's export; once
all are ready the machine state is sent; at its end (the source's vCPUs stopped) the mirrors are cancelled (a ready
mirror ends in sync, without pivot) and the target is told to commit; then the source's QEMU quits and the VM's
record and files go. The VM keeps its id, name, MAC and spec.

What holds after a failure before the commit (the target refuses or fails, its QEMU dies, the migration fails, is
cancelled or times out): the migration and the mirrors are cancelled, the NBD nodes removed, the vCPUs run again, the
target's arriving VM is deleted: the VM runs on here as before, nothing is left there. A commit whose answer is lost
is settled by asking the target to abort: removed there (the VM runs on here), or already running there (the
migration finished). If the target cannot be reached at all then, the VM stays paused here (never running on both
hosts) and the error says so.

A daemon killed mid-way: recovery cancels the jobs and the migration, removes the nodes and continues the vCPUs
(``jobs``, ``nodes``, ``migrating``, ``paused``); the target removes its arrival by itself once its QEMU exits (the
stream ended) or when not committed in time. Killed after ``committing`` was noted, the VM is left paused with a
reason saying it may run on the target now (:func:`recover`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from corral import faults
from corral.engine import blockjobs
from corral.engine import live_migration as live
from corral.engine.cmdline import DiskNodes
from corral.engine.monitor import Monitor, MonitorError
from corral.errors import CorralError, EngineError, InvalidInput
from corral.migration.incoming import check_movable
from corral.migration.models import IncomingAnswer, IncomingDisk, IncomingRequest, MigrationResult
from corral.operations.journal import Operation
from corral.operations.recovery import Outcome
from corral.store.db import OperationRecord, VMRecord
from corral.vm.machine import Machine
from corral.vm.service import VMService
from corral.vm.states import VMState, check_operation

KIND = "migrate"
API_PREFIX = "/v1"  # corral.api.models.API_PREFIX (nothing below the API imports it)


class Target(Protocol):
    """The corrald a VM goes to: :class:`corral.client.remote.Remote` is one (its URL, an admin's token, its pinned
    certificate)."""

    @property
    def url(self) -> str: ...

    @property
    def token(self) -> str: ...

    def ssl_context(self) -> ssl.SSLContext | bool: ...


class MigrationFailed(EngineError):
    """The migration did not happen; the VM runs on here."""


def http_client(target: Target, timeout: float = 120.0) -> httpx.AsyncClient:
    """The target's API over HTTPS with its token and pinned certificate."""
    return httpx.AsyncClient(base_url=target.url.rstrip("/") + API_PREFIX, verify=target.ssl_context(),
                             headers={"Authorization": f"Bearer {target.token}"},
                             timeout=httpx.Timeout(timeout, connect=10.0))


def _error(r: httpx.Response) -> str:
    try:
        return str(r.json().get("message") or r.text)
    except ValueError:
        return r.text.strip() or f"HTTP {r.status_code}"


async def _disks(vms: VMService, rec: VMRecord, monitor: Monitor) -> list[tuple[IncomingDisk, str]]:
    """Each disk to move with the node it is mirrored from (a mirror starts at a root node): the root disk's top node,
    each extra disk's throttle node (so the copy keeps to its I/O limits)."""
    sizes = {str(d.get("qdev", "")): int(d["inserted"]["image"]["virtual-size"])
             for d in await monitor.execute("query-block") if "inserted" in d}
    root_size = next((s for q, s in sizes.items() if blockjobs.ROOT_DEVICE in q), None)
    if root_size is None:
        raise EngineError(f"the root disk of '{rec.name}' is not in QEMU's block graph")
    out = [(IncomingDisk(root=True, name="", size=root_size), await blockjobs.top_node(monitor))]
    for d in vms.store.list_disks(rec.name):
        if d.port is None:
            raise InvalidInput(f"VM '{rec.name}' has a detached disk '{d.name}': attach it (or remove it) first, it "
                               "would not move")
        nodes = DiskNodes.of(d.name)
        size = next((s for q, s in sizes.items() if nodes.device in q), d.size)
        out.append((IncomingDisk(root=False, name=d.name, size=size, port=d.port, limits=d.limits,
                                 serial=d.serial), nodes.top))  # mirrored from the root (its throttle node)
    return out


class Departures:
    def __init__(self, vms: VMService, host_name: str) -> None:
        self.vms = vms
        self.host_name = host_name

    async def migrate(self, name: str, target: Target, timeout: float = 600.0) -> MigrationResult:
        """Move running VM ``name`` to ``target`` (see the module's docstring for what holds after a failure)."""
        t0 = time.monotonic()
        vms = self.vms
        async with vms.operation_lock(name), http_client(target) as http:
            rec = vms.get(name)
            check_operation(name, "migrate", rec.state)
            check_movable(rec.spec)
            if snaps := vms.store.list_snapshots(name):
                raise InvalidInput(f"VM '{name}' has snapshots ({', '.join(x.name for x in snaps)}), which cannot "
                                   "move (they would be deleted with it here): `corral snapshot rm` them first")
            m = vms.machine(name)
            if m is None or m.monitor is None:
                raise EngineError(f"the monitor of VM '{name}' is not connected")
            monitor = m.monitor
            disks = await _disks(vms, rec, monitor)
            req = IncomingRequest(spec=rec.spec.model_dump(mode="json"), id=rec.id, mac=rec.mac,
                                  created_at=rec.created_at, disks=[d for d, _ in disks], source=self.host_name)
            # The target, so that a restarted daemon can settle the migration there too (the row, token included,
            # lives as long as the migration, in the daemon's private store).
            peer = {"url": target.url, "token": target.token, "cert_pem": getattr(target, "cert_pem", None),
                    "ca_file": getattr(target, "ca_file", None)}
            with vms.journal.run(KIND, name, target=target.url, peer=peer) as op:
                vms.event(name, "migrate", f"migrating to {target.url}", target=target.url)
                answer = await self._prepare(http, req)
                mirrors = [live.Mirror(device=node, target=f"mig-{i}", job=f"mig-{i}") for i, (_, node)
                           in enumerate(disks)]
                try:
                    stream, copied = await self._send(op, monitor, answer, mirrors, timeout)
                except BaseException as exc:
                    await self._roll_back(op, name, m, http, mirrors, exc)
                    raise
                op.note(paused=None, migrating=None, committing=True)  # from here the VM may run there
                await self._commit(op, name, m, http)
                faults.point("migrate.after-commit")
                await self._retire(name, m, target.url)
        vms._locks.pop(name, None)  # noqa: SLF001 - the VM is gone from here, as after a delete
        result = MigrationResult(vm=name, target=target.url, seconds=round(time.monotonic() - t0, 3),
                                 downtime_ms=stream.downtime_ms, ram_bytes=stream.ram_bytes, disk_bytes=copied,
                                 migrate_ms=stream.total_ms)
        vms.event(name, "migrate", f"migrated to {target.url} in {result.seconds:.1f}s (downtime "
                  f"{result.downtime_ms} ms, {result.ram_bytes >> 20} MiB of state, {result.disk_bytes >> 20} MiB "
                  "of disk)", **result.model_dump(exclude={"vm"}))
        return result

    async def _prepare(self, http: httpx.AsyncClient, req: IncomingRequest) -> IncomingAnswer:
        """The target's answer; if it was lost (or garbled) the target may have prepared: it is told to abort."""
        name = req.spec["name"]
        try:
            r = await http.post("/migrations/incoming", json=req.model_dump(mode="json"))
            if r.status_code != 201:
                raise MigrationFailed(f"the target refused the VM: {_error(r)}")
            return IncomingAnswer.model_validate(r.json())
        except MigrationFailed:
            raise
        except (httpx.HTTPError, ValueError) as exc:
            with contextlib.suppress(httpx.HTTPError):
                await http.delete(f"/migrations/incoming/{name}")
            raise MigrationFailed(f"the target's answer to the migration was lost: {exc}") from exc

    async def _send(self, op: Operation, monitor: Monitor, answer: IncomingAnswer, mirrors: list[live.Mirror],
                    timeout: float) -> tuple[live.StreamResult, int]:
        def noted(mirror: live.Mirror) -> None:
            op.add("nodes", mirror.target)
            op.add("jobs", mirror.job)

        tls = self.vms.paths(op.rec.vm or "").migration_tls
        op.add("files", str(tls / "keys.psk"))
        await asyncio.to_thread(live.write_key, tls, answer.psk)
        await live.add_creds(monitor, tls, "client")

        await live.mirror_disks(monitor, answer.nbd_host, answer.nbd_port,
                                list(zip(mirrors, answer.exports, strict=True)), noted)
        jobs = [mm.job for mm in mirrors]
        await live.wait_ready(monitor, jobs, timeout)
        faults.point("migrate.during-mirror")
        op.note(migrating=True, paused=True)  # QEMU stops the vCPUs at the end of the stream
        stream = await live.migrate(monitor, answer.migrate_uri, timeout, jobs)
        copied = await live.finish_mirrors(monitor, jobs)
        op.note(jobs=None)
        for mm in mirrors:
            await blockjobs.remove_node(monitor, mm.target)
        op.note(nodes=None)
        faults.point("migrate.before-commit")
        return stream, copied

    async def _roll_back(self, op: Operation, name: str, m: Machine, http: httpx.AsyncClient,
                         mirrors: list[live.Mirror], exc: BaseException) -> None:
        """Before the commit: the VM runs on here; nothing stays on the target."""
        undone: list[str] = []
        monitor = m.monitor
        if monitor is not None and not m.exited.is_set():
            with contextlib.suppress(CorralError):
                await live.cancel(monitor)
            await live.drop_mirrors(monitor, mirrors)
            await live.drop_creds(monitor)
            with contextlib.suppress(MonitorError):
                if not (await monitor.execute("query-status")).get("running"):
                    await monitor.execute("cont")  # from postmigrate too: QEMU takes its disks back
                    undone.append("vCPUs continued")
        op.note(jobs=None, nodes=None, migrating=None, paused=None)
        await asyncio.to_thread(shutil.rmtree, self.vms.paths(name).migration_tls, True)
        try:
            r = await http.delete(f"/migrations/incoming/{name}")
            if r.status_code not in (204, 404):
                undone.append(f"the target did not remove its copy: {_error(r)}")
        except httpx.HTTPError as e:
            undone.append(f"the target could not be told to remove its copy ({e}): it does so itself")
        msg = exc.message if isinstance(exc, CorralError) else (str(exc) or type(exc).__name__)
        self.vms.event(name, "migrate", f"migration failed: {msg}; the VM runs on here"
                       + (f" ({'; '.join(undone)})" if undone else ""), result="error")

    async def _commit(self, op: Operation, name: str, m: Machine, http: httpx.AsyncClient) -> None:
        """Tell the target to go on. A refusal is a failed migration (the VM continues here); a lost answer is settled
        by an abort request: 409 means the VM runs there (done)."""
        try:
            r = await http.post(f"/migrations/incoming/{name}/commit")
            if r.status_code == 200:
                return
            failure = f"the target did not take the VM over: {_error(r)}"
        except httpx.HTTPError as exc:
            failure = f"the target's answer to the hand-over was lost ({exc})"
        try:
            r = await http.delete(f"/migrations/incoming/{name}")
            status, said = r.status_code, _error(r)
        except httpx.HTTPError as exc:
            status, said = 0, f"cannot be reached: {exc}"
        if status == 409:
            return  # it runs there
        if status not in (204, 404):  # neither removed there nor running there for sure: never run it twice
            reason = (f"migrating to {http.base_url}: {failure}, and the target {said}: the VM may run there; left "
                      "paused here (check there, then `corral rm --force` here or `corral resume`)")
            if m.monitor is not None:
                await live.drop_creds(m.monitor)
            await self.vms._set_state(name, VMState.PAUSED, reason)  # noqa: SLF001
            op.note(committing=None)
            raise MigrationFailed(reason)
        monitor = m.monitor
        if monitor is not None:
            await live.drop_creds(monitor)
            with contextlib.suppress(MonitorError):
                await monitor.execute("cont")
        op.note(committing=None)
        self.vms.event(name, "migrate", f"migration failed: {failure}; the VM runs on here", result="error")
        raise MigrationFailed(f"{failure}; the VM runs on here")

    async def _retire(self, name: str, m: Machine, url: str) -> None:
        """The VM runs on the target: the source's QEMU quits, its record and files go."""
        m.requested, m.stop_reason = "migrate", f"migrated to {url}"
        if m.monitor is not None:
            with contextlib.suppress(MonitorError):
                await m.monitor.execute("quit")
        try:
            await asyncio.wait_for(m.exited.wait(), 30)
        except TimeoutError:
            await self.vms._kill_machine(m)  # noqa: SLF001
        await self.vms._delete(name, False)  # noqa: SLF001


@dataclass(frozen=True)
class _JournaledTarget:
    """The target as the journal row keeps it (what :class:`corral.client.remote.Remote` holds, and verifies alike)."""

    url: str
    token: str
    cert_pem: str | None = None
    ca_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.cert_pem:
            ctx = ssl.create_default_context(cadata=self.cert_pem)
            ctx.check_hostname = False  # pinned: only this very certificate verifies
            return ctx
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True


async def _abort_there(data: dict[str, Any], name: str) -> int | str:
    """Ask the target to remove its arriving copy: the HTTP status (204, 404: none there; 409: it runs there), or
    why it could not be asked."""
    peer = data.get("peer")
    if not isinstance(peer, dict):
        return "the target is not known"
    try:
        async with http_client(_JournaledTarget(**peer), timeout=15.0) as http:
            return (await http.delete(f"/migrations/incoming/{name}")).status_code
    except (httpx.HTTPError, TypeError, ssl.SSLError) as exc:
        return f"the target cannot be reached ({exc})"


async def recover(vms: VMService, op: OperationRecord) -> Outcome:
    """``migrate`` left by a dead daemon. The target is asked to remove its arriving copy. Before ``committing``: rolled
    back (the shared keys cancel the jobs and the migration, remove the nodes, continue the vCPUs). After it: removed
    there (or never there) means the VM runs on here (continued); running there (409) means the migration is done (the
    copy here is removed); the target out of reach leaves the VM paused here, with a reason saying so, never continued
    (it must not run on both hosts)."""
    data: dict[str, Any] = op.data
    if op.vm is None:
        return Outcome(False)
    there = await _abort_there(data, op.vm)
    said = {204: "its arriving copy removed there", 404: "nothing there"}.get(there, str(there)) \
        if isinstance(there, int) else there
    rec = vms.store.get_vm(op.vm)
    m = vms.machine(op.vm)
    if m is not None and m.monitor is not None and not data.get("committing"):
        await live.drop_creds(m.monitor)  # a later suspend must not ask for TLS
    if not data.get("committing") or rec is None:
        return Outcome(False, f"the VM runs on here; the target: {said}")
    if there == 409:
        await vms._delete(op.vm, True)  # noqa: SLF001 - it runs on the target: this copy's QEMU killed, its files go
        return Outcome(True, f"it runs on the target {data.get('target')}: removed here")
    if there in (204, 404) and m is not None and m.monitor is not None:
        await live.drop_creds(m.monitor)
        if not (await m.monitor.execute("query-status")).get("running"):
            await m.monitor.execute("cont")
        await vms._set_state(op.vm, VMState.RUNNING, "")  # noqa: SLF001
        return Outcome(False, f"the target had not taken it over ({said}): the VM runs on here")
    reason = (f"its migration to {data.get('target')} was interrupted after the hand-over and {said}: it may run "
              f"there now; check there, then `corral rm --force {op.vm}` here (or `corral resume {op.vm}` if not)")
    if rec.state == VMState.PAUSED:
        await vms._set_state(op.vm, VMState.PAUSED, reason)  # noqa: SLF001
    return Outcome(True, reason)
