"""Sandbox runs: a sample in a throwaway VM, watched, then the VM destroyed (docs/explanation/sandbox.md).

:class:`SandboxService` is composed over the VM service and the network service, like the other domain services:
it makes an ordinary VM (a :class:`~corral.vm.spec.VMSpec` without the NAT NIC, ``ephemeral``), on a private network
of its own for ``isolated`` and ``egress-log`` (with the sink, :mod:`corral.sandbox.sink`, on it for the latter),
copies the sample in and runs the command through the guest agent (the same code as ``corral cp`` and ``corral
exec``), then stops the VM and reads what changed from its disk on the host (:mod:`corral.sandbox.diskdiff`).

All or nothing for the host: every step registers its undo on one ``AsyncExitStack``, so whatever fails (or the
request is cancelled), the VM, its network, the sink and the scratch directory are removed; ``keep`` keeps only the
VM (stopped) and its network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

from corral.engine import qemu_img
from corral.engine.cmdline import SANDBOX, SANDBOX_UNPRIVILEGED
from corral.engine.guest_agent import ExecOutput, GuestAgent
from corral.errors import CorralError, InvalidInput
from corral.guest import commands, files
from corral.network import private
from corral.operations.recovery import Outcome, Recovery
from corral.paths import SANDBOX_DIR
from corral.sandbox import diskdiff, guest, sink
from corral.sandbox.models import (
    MAX_OUTPUT,
    Connection,
    NetMode,
    Output,
    ProcessSeen,
    SandboxReport,
    SandboxRun,
)
from corral.store.db import OperationRecord
from corral.vm.service import VMService
from corral.vm.spec import VMSpec

log = logging.getLogger(__name__)

BOOT_TIMEOUT = 300.0
STOP_TIMEOUT = 15.0  # ACPI power-off, then QEMU is killed
AGENT_GRACE = 60.0  # past the timeout: the agent itself may hang (the sample may have killed it)
LABEL = "sandbox"

NO_SCREEN = ("no screenshot: Corral's VMs have no display device (-nodefaults, -display none; the console is the "
             "serial port), so there is no screen to capture")


class SandboxService:
    def __init__(self, vms: VMService) -> None:
        self.vms = vms
        self.networks = vms.networks

    def _dir(self, name: str) -> Path:
        return self.vms.settings.home / SANDBOX_DIR / name

    async def run(self, req: SandboxRun) -> SandboxReport:
        """Run ``req``'s sample in a fresh VM and report what it did. Raises (having removed everything) when the
        VM cannot be made or booted; a sample that fails, hangs or breaks its guest is a report, not an error."""
        if req.template is not None:
            raise InvalidInput("--template is not possible for sandboxes yet: a template's machine holds the NAT "
                               "NIC a sandbox must not have; use --image (docs/explanation/sandbox.md)")
        image = req.image or "tiny"
        manifest = self.vms.images.get(image)  # NotFound before anything is made
        name = f"sbx-{secrets.token_hex(3)}"
        command = req.command or [f"{guest.GUEST_DIR}/{req.sample_name}"]
        sample_path = f"{guest.GUEST_DIR}/{req.sample_name}"
        t0 = time.monotonic()
        seconds: dict[str, float] = {}
        work = self._dir(name)
        sock, pidfile, sink_log = work / "sink.sock", work / "sink.pid", work / "sink.log"
        # Journaled (begin/end, not the current operation of what it calls): a daemon that dies mid-run leaves
        # nothing behind, the next one undoes it (_recover). Not `run`: the VM's own operations keep their rows.
        op = self.vms.journal.begin("sandbox", name, network=name if req.net != NetMode.NONE else None,
                                    keep=req.keep, sink=str(sock), pidfile=str(pidfile), dirs=[str(work)])
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.vms.journal.end, op)
            work.mkdir(parents=True, mode=0o700)
            stack.callback(shutil.rmtree, work, True)
            gateway = ""
            if req.net != NetMode.NONE:
                net = await self.networks.create(name)
                if not req.keep:
                    stack.push_async_callback(self._remove_network, name)
                gateway = str(list(ipaddress.ip_network(net.subnet).hosts())[-1])
            spec = VMSpec(name=name, image=image, nat=False, networks=[name] if gateway else [],
                          ephemeral=not req.keep,  # kept for study: started again, it shows what the sample left
                          unprivileged=not gateway and os.geteuid() == 0, labels={LABEL: "true"},
                          description=f"sandbox run of {req.sample_name}")
            await self.vms.create(spec)
            if not req.keep:
                stack.push_async_callback(self._delete_vm, name)
            await self.vms.start(name)
            await self.vms.readiness.wait_ready(name, BOOT_TIMEOUT)
            agent = await self.vms.agent(name, "run a sandbox sample in")
            qemu_uid = _qemu_uid(self.vms, name)
            seconds["boot"] = time.monotonic() - t0
            if req.net == NetMode.EGRESS_LOG:
                await asyncio.to_thread(sink.start, sock, self.networks.socket(name), pidfile, sink_log,
                                        private.random_mac(), gateway)
                stack.callback(sink.stop, sock, pidfile)
            await commands.run(agent, ["/bin/sh", "-c", SETUP_SCRIPT, "sh", guest.GUEST_DIR], timeout=60)
            if gateway:  # its DHCP client is gone now: the address again (it may have flushed it), then the route
                await self.networks.configure_guest(self.vms._get(name), agent)
            if req.net == NetMode.EGRESS_LOG:
                await commands.run(agent, ["/bin/sh", "-c", ROUTE_SCRIPT, "sh", gateway], timeout=30)
            await files.write_file(agent, sample_path, _once(req.sample_bytes()), mode=0o755)
            t_run = time.monotonic()
            result = await self._execute(name, command, sample_path, req.timeout)
            seconds["run"] = time.monotonic() - t_run
            t_collect = time.monotonic()
            await asyncio.sleep(guest.SAMPLE_EVERY * 2)  # the sampler's last scan
            processes, proc_note = await self._processes(agent, command)
            with contextlib.suppress(CorralError):  # what the guest wrote reaches the disk before QEMU stops
                await commands.run(agent, ["sync"], timeout=30, check=False)
            await self.vms.stop(name, timeout=STOP_TIMEOUT, force=True)
            connections, conn_note = None, _no_sink_note(req.net)
            if req.net == NetMode.EGRESS_LOG:
                await asyncio.to_thread(sink.stop, sock, pidfile)
                records, dropped = sink.read_records(sink_log)
                connections = [Connection.model_validate(r) for r in records]
                conn_note = ("recorded by the sink on the VM's network (it answered ARP, DNS with NXDOMAIN, TCP "
                             "with RST, and forwarded nothing)" + (f"; {dropped} more not kept" if dropped else ""))
            changes, files_note = await self._file_changes(name, image, manifest.disk_format, work)
            seconds["collect"] = time.monotonic() - t_collect
            seconds["total"] = time.monotonic() - t0
            return SandboxReport(
                vm=name, source=f"image:{image}", net=req.net, command=command, exit_code=result.exit_code,
                signal=result.signal, timed_out=result.timed_out, timeout=req.timeout,
                stdout=_output(result.stdout, result.stdout_bytes), stderr=_output(result.stderr, result.stderr_bytes),
                seconds={k: round(v, 3) for k, v in seconds.items()},
                processes=processes, processes_note=proc_note, files=changes, files_note=files_note,
                connections=connections, connections_note=conn_note, screenshot=None, screenshot_note=NO_SCREEN,
                kept=req.keep, protections=_protections(req.net, spec.unprivileged, qemu_uid)
                + ([result.note] if result.note else []),
            )
        raise AssertionError("unreachable")  # pragma: no cover - the stack re-raises or the block returned

    async def _execute(self, name: str, command: list[str], sample_path: str, timeout: float) -> _Result:
        res = _Result()
        try:
            async with asyncio.timeout(timeout + AGENT_GRACE):
                async for item in self.vms.exec(name, guest.wrapper_argv(command), env={"SAMPLE": sample_path},
                                                timeout=timeout):
                    if isinstance(item, ExecOutput):
                        res.add(item.stream, item.data)
                    else:
                        res.exit_code, res.signal, res.timed_out = item.exit_code, item.signal, item.timed_out
        except TimeoutError:
            res.timed_out = True
            res.note = "the guest agent did not report the command's end: the VM was stopped from the host"
        except CorralError as exc:
            res.note = f"the command's run was cut short: {exc.message}"
        return res

    async def _processes(self, agent: GuestAgent, command: list[str]) -> tuple[list[ProcessSeen], str]:
        try:
            text = (await agent.read_file(guest.PROC_LOG))[: 1 << 20].decode(errors="replace")
        except CorralError as exc:
            return [], f"no process list: the guest's log could not be read ({exc.message})"
        trace: str | None = None
        with contextlib.suppress(CorralError):
            trace = (await agent.read_file(guest.TRACE))[: 8 << 20].decode(errors="replace")
        procs, traced = guest.processes(text, trace, command)
        if traced:
            note = ("every fork from the guest kernel's tracer (sched_process_fork/exec/exit events), command lines "
                    f"from /proc sampled every {guest.SAMPLE_EVERY}s (a short-lived process shows the file it "
                    "executed); what the guest kernel shows, which a sample running as root could tamper with")
        else:
            note = (f"sampled from /proc in the guest every {guest.SAMPLE_EVERY}s (the guest has no tracefs: a "
                    "process shorter than that can be missed; a sample running as root could forge it)")
        return procs, note

    async def _file_changes(self, name: str, image: str, disk_format: str,
                            work: Path) -> tuple[list[diskdiff.FileChange] | None, str]:
        """The diff of the VM's disk against its image's, read on the host after the VM stopped."""
        base_raw, after_raw = work / "image.raw", work / "after.raw"
        try:
            await qemu_img.convert_raw(self.vms.images.dir(image) / "disk.qcow2", base_raw, disk_format)
            await qemu_img.convert_raw(self.vms.paths(name).disk, after_raw)
            before, cut_b = await asyncio.to_thread(_walk, base_raw, work)
            after, cut_a = await asyncio.to_thread(_walk, after_raw, work)
        except (CorralError, diskdiff.DiffError) as exc:
            return None, f"no file list: {exc}"
        finally:
            base_raw.unlink(missing_ok=True)
            after_raw.unlink(missing_ok=True)
        note = ("read on the host from the stopped VM's disk against the image's (qemu-img, debugfs): the guest "
                "cannot hide a change; files kept only in memory (tmpfs: /tmp, /run on tiny) are not on the disk; "
                "the list includes Corral's own provisioning (/root/.ssh, /etc/hosts on a network)")
        if cut_a or cut_b:
            note += f"; cut at {diskdiff.MAX_ENTRIES} entries"
        return diskdiff.diff(before, after), note

    def register_recovery(self, recovery: Recovery) -> None:
        recovery.kinds["sandbox"] = self._recover

    async def _recover(self, op: OperationRecord) -> Outcome:
        """A run a dead daemon left: its sink stopped, its VM and network deleted (kept with ``keep``, stopped or
        as the restart found it), its scratch directory removed (the journal's ``dirs``)."""
        data, name = op.data, str(op.vm)
        await asyncio.to_thread(sink.stop, Path(data["sink"]), Path(data["pidfile"]))
        if data.get("keep"):
            return Outcome(False, f"sandbox VM {name} kept (--keep)")
        done = []
        if self.vms.store.get_vm(name) is not None:
            await self.vms.delete(name, force=True)
            done.append(f"VM {name} deleted")
        network = data.get("network")
        if network and self.vms.store.get_network(network) is not None:
            await self.networks.remove(network)
            done.append(f"network {network} removed")
        return Outcome(False, "; ".join(done))

    async def _delete_vm(self, name: str) -> None:
        try:
            await self.vms.delete(name, force=True)
        except CorralError as exc:
            log.warning("sandbox VM %s could not be deleted: %s", name, exc.message)

    async def _remove_network(self, name: str) -> None:
        try:
            await self.networks.remove(name)
        except CorralError as exc:
            log.warning("sandbox network %s could not be removed: %s", name, exc.message)


#: The guest's set-up: the sample's directory ($1), and no DHCP client left on its NIC: on tiny the first NIC is
#: eth0, whose udhcpc (started by the boot's background part, which may still run when the agent answers) would
#: flush the private network's address; with no NAT nothing answers it anyway.
SETUP_SCRIPT = r"""
mkdir -p "$1" || exit 1
i=0
while [ "$i" -lt 300 ] && pidof rc.background >/dev/null 2>&1; do sleep 0.1; i=$((i + 1)); done
killall udhcpc 2>/dev/null
exit 0
"""
#: egress-log: the sink ($1) is the guest's gateway and DNS server (an isolated guest has no route out at all).
ROUTE_SCRIPT = 'ip route replace default via "$1" && printf "nameserver %s\\n" "$1" > /etc/resolv.conf'


class _Result:
    """The command's end and its bounded output."""

    def __init__(self) -> None:
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.timed_out = False
        self.note = ""
        self.stdout, self.stderr = bytearray(), bytearray()
        self.stdout_bytes = self.stderr_bytes = 0

    def add(self, stream: str, data: bytes) -> None:
        buf = self.stdout if stream == "stdout" else self.stderr
        if stream == "stdout":
            self.stdout_bytes += len(data)
        else:
            self.stderr_bytes += len(data)
        buf += data[: max(0, MAX_OUTPUT - len(buf))]


def _output(data: bytearray, total: int) -> Output:
    return Output(text=bytes(data).decode(errors="replace"), bytes=total, truncated=total > len(data))


def _walk(raw: Path, work: Path) -> tuple[dict[str, diskdiff.Entry], bool]:
    return diskdiff.walk(diskdiff.ext_device(raw), work)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _no_sink_note(net: NetMode) -> str:
    if net == NetMode.NONE:
        return "none possible: the VM had no network interface but lo"
    return "not recorded: an isolated network has no sink (use --net egress-log); nothing could leave it"


def _qemu_uid(vms: VMService, name: str) -> int | None:
    """The uid the VM's QEMU runs as now (from /proc: what it is, not what it was told)."""
    m = vms.machine(name)
    try:
        status = Path(f"/proc/{m.ident.pid}/status").read_text() if m is not None else ""
    except OSError:
        return None
    line = next((x for x in status.splitlines() if x.startswith("Uid:")), "")
    return int(line.split()[2]) if line else None  # the effective uid


def _protections(net: NetMode, unprivileged: bool, uid: int | None) -> list[str]:
    nic = {NetMode.NONE: "no NIC at all (no NAT, no port or SSH forward)",
           NetMode.ISOLATED: "only a private network of its own, no route out (no NAT, no forwards)",
           NetMode.EGRESS_LOG: "only a private network of its own whose one other member is the sink, which "
                               "forwards nothing (no NAT, no forwards)"}[net]
    return [
        "QEMU's seccomp sandbox: -sandbox " + (SANDBOX_UNPRIVILEGED if unprivileged else SANDBOX),
        (f"QEMU ran unprivileged: -runas nobody, seen running as uid {uid} (its seccomp filter allows set*id "
         "calls, which give nothing once root is dropped: docs/explanation/sandbox.md)") if unprivileged else
        (f"QEMU ran as the daemon's user (uid {uid}): " + (
            "a private network's switch socket is the daemon's user's, which an unprivileged QEMU could not reach"
            if net != NetMode.NONE else "the daemon does not run as root, so QEMU cannot drop to another user")),
        nic,
        "no shared folders, no extra disks; the disk is a temporary overlay on the image (ephemeral)",
        "guest agent used only to copy the sample in, run the command, read the process log and sync",
        f"stdout and stderr kept up to {MAX_OUTPUT} bytes each; the command bounded by the timeout",
    ]

