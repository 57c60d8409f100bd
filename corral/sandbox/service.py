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
from corral.sandbox import diskdiff, guest, pcap, sink
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
from corral.templates.service import TemplateService
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
    def __init__(self, vms: VMService, templates: TemplateService | None = None) -> None:
        self.vms = vms
        self.networks = vms.networks
        self.templates = templates

    def _dir(self, name: str) -> Path:
        return self.vms.settings.home / SANDBOX_DIR / name

    async def run(self, req: SandboxRun) -> SandboxReport:
        """Run ``req``'s sample in a fresh VM and report what it did. Raises (having removed everything) when the
        VM cannot be made or booted; a sample that fails, hangs or breaks its guest is a report, not an error."""
        if req.template is not None:
            if self.templates is None:
                raise InvalidInput("--template: this daemon has no template service")
            tpl = self.templates.get(req.template)  # NotFound before anything is made
            image, base = tpl.image, (self.templates.paths(tpl.name).disk, "qcow2")
            source = f"template:{tpl.name}"
        else:
            image = req.image or "tiny"
            manifest = self.vms.images.get(image)  # NotFound before anything is made
            base, source = (self.vms.images.dir(image) / "disk.qcow2", manifest.disk_format), f"image:{image}"
        # From an image, isolated and egress-log get a private network of their own; from a template the VM keeps
        # the template's NAT NIC (its state is in the saved machine), cut off (restrict=on, no forwards).
        private_net = req.template is None and req.net != NetMode.NONE
        name = f"sbx-{secrets.token_hex(3)}"
        command = req.command or [f"{guest.GUEST_DIR}/{req.sample_name}"]
        sample_path = f"{guest.GUEST_DIR}/{req.sample_name}"
        t0 = time.monotonic()
        seconds: dict[str, float] = {}
        work = self._dir(name)
        sock, pidfile, sink_log = work / "sink.sock", work / "sink.pid", work / "sink.log"
        # Journaled (begin/end, not the current operation of what it calls): a daemon that dies mid-run leaves
        # nothing behind, the next one undoes it (_recover). Not `run`: the VM's own operations keep their rows.
        op = self.vms.journal.begin("sandbox", name, network=name if private_net else None,
                                    keep=req.keep, sink=str(sock), pidfile=str(pidfile), dirs=[str(work)])
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.vms.journal.end, op)
            work.mkdir(parents=True, mode=0o700)
            stack.callback(shutil.rmtree, work, True)
            gateway = ""
            if private_net:
                net = await self.networks.create(name)
                if not req.keep:
                    stack.push_async_callback(self._remove_network, name)
                gateway = str(list(ipaddress.ip_network(net.subnet).hosts())[-1])
            spec = VMSpec(name=name, image=image, nat=req.template is not None,
                          nat_restricted=req.template is not None,
                          nat_capture=req.template is not None and req.net == NetMode.EGRESS_LOG,
                          networks=[name] if gateway else [],
                          ephemeral=not req.keep,  # kept for study: started again, it shows what the sample left
                          unprivileged=not gateway and os.geteuid() == 0, labels={LABEL: "true"},
                          description=f"sandbox run of {req.sample_name}")
            if req.template is not None and self.templates is not None:
                # All or nothing itself: a launch that fails deletes the VM it made.
                await self.templates.launch(req.template, spec)
                if not req.keep:
                    stack.push_async_callback(self._delete_vm, name)
            else:
                await self.vms.create(spec)
                if not req.keep:
                    stack.push_async_callback(self._delete_vm, name)
                await self.vms.start(name)
            await self.vms.readiness.wait_ready(name, BOOT_TIMEOUT)
            agent = await self.vms.agent(name, "run a sandbox sample in")
            qemu_uid = _qemu_uid(self.vms, name)
            seconds["boot"] = time.monotonic() - t0
            if req.net == NetMode.EGRESS_LOG and gateway:
                await asyncio.to_thread(sink.start, sock, self.networks.socket(name), pidfile, sink_log,
                                        private.random_mac(), gateway)
                stack.callback(sink.stop, sock, pidfile)
            await commands.run(agent, ["/bin/sh", "-c", SETUP_SCRIPT, "sh", guest.GUEST_DIR], timeout=60)
            if req.template is not None and req.net == NetMode.NONE:
                await self._unplug_nat(name, agent)
            if gateway:  # its DHCP client is gone now: the address again (it may have flushed it), then the route
                await self.networks.configure_guest(self.vms._get(name), agent)
            if req.net == NetMode.EGRESS_LOG and gateway:
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
            connections, conn_note = None, _no_sink_note(req.net, req.template is not None)
            if req.net == NetMode.EGRESS_LOG and req.template is not None:
                connections, conn_note = self._captured(name)
            elif req.net == NetMode.EGRESS_LOG:
                await asyncio.to_thread(sink.stop, sock, pidfile)
                records, dropped = sink.read_records(sink_log)
                connections = [Connection.model_validate(r) for r in records]
                conn_note = ("recorded by the sink on the VM's network (it answered ARP, DNS with NXDOMAIN, TCP "
                             "with RST, and forwarded nothing)" + (f"; {dropped} more not kept" if dropped else ""))
            changes, files_note = await self._file_changes(name, base, work)
            seconds["collect"] = time.monotonic() - t_collect
            seconds["total"] = time.monotonic() - t0
            return SandboxReport(
                vm=name, source=source, net=req.net, command=command, exit_code=result.exit_code,
                signal=result.signal, timed_out=result.timed_out, timeout=req.timeout,
                stdout=_output(result.stdout, result.stdout_bytes), stderr=_output(result.stderr, result.stderr_bytes),
                seconds={k: round(v, 3) for k, v in seconds.items()},
                processes=processes, processes_note=proc_note, files=changes, files_note=files_note,
                connections=connections, connections_note=conn_note, screenshot=None, screenshot_note=NO_SCREEN,
                kept=req.keep, protections=_protections(req.net, spec.unprivileged, qemu_uid, req.template is not None)
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

    async def _unplug_nat(self, name: str, agent: GuestAgent) -> None:
        """``--net none`` from a template: the saved machine has the NAT NIC, which cannot be removed before the
        load; it is restricted already (nothing gets out), its link is set down from the host (QMP ``set_link``:
        QEMU drops whatever the guest sends on it, and the guest cannot undo that) and the interface down in the
        guest."""
        m = self.vms.machine(name)
        if m is None or m.monitor is None:
            raise CorralError(f"sandbox VM {name} is not running")
        await m.monitor.execute("set_link", {"name": "net0", "up": False})
        await commands.run(agent, ["/bin/sh", "-c", LINK_DOWN_SCRIPT], timeout=30)

    def _captured(self, name: str) -> tuple[list[Connection] | None, str]:
        """egress-log from a template: the attempts in what QEMU's filter-dump saw the guest send."""
        try:
            records, dropped, count = pcap.read(self.vms.paths(name).nat_pcap)
        except (OSError, CorralError) as exc:
            return None, f"no connection list: the capture could not be read ({exc})"
        note = (f"read from every frame the guest sent on its NAT NIC ({count} frames, QEMU's filter-dump), which "
                "restrict=on cut off: QEMU answered each TCP SYN with a RST, dropped every datagram (DNS included: "
                "no answer) and forwarded nothing" + (f"; {dropped} more not kept" if dropped else ""))
        return [Connection.model_validate(r) for r in records], note

    async def _file_changes(self, name: str, base: tuple[Path, str],
                            work: Path) -> tuple[list[diskdiff.FileChange] | None, str]:
        """The diff of the VM's disk against its base's (the image's or the template's disk), read on the host after
        the VM stopped."""
        base_raw, after_raw = work / "image.raw", work / "after.raw"
        try:
            await qemu_img.convert_raw(base[0], base_raw, base[1])
            await qemu_img.convert_raw(self.vms.paths(name).disk, after_raw)
            before, cut_b = await asyncio.to_thread(_walk, base_raw, work)
            after, cut_a = await asyncio.to_thread(_walk, after_raw, work)
        except (CorralError, diskdiff.DiffError) as exc:
            return None, f"no file list: {exc}"
        finally:
            base_raw.unlink(missing_ok=True)
            after_raw.unlink(missing_ok=True)
        note = ("read on the host from the stopped VM's disk against its base's (qemu-img, debugfs): the guest "
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
#: --net none from a template: every interface but lo down (the NAT NIC's link is down from the host already).
LINK_DOWN_SCRIPT = ('for i in /sys/class/net/*; do n=${i##*/}; [ "$n" = lo ] || ip link set dev "$n" down || exit 1; '
                    'done')
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


def _no_sink_note(net: NetMode, template: bool = False) -> str:
    if template and net == NetMode.NONE:
        return ("none possible: the template's NAT NIC had its link down (from the host, so QEMU dropped whatever "
                "the guest sent, and in the guest) and was restricted")
    if template:
        return ("not recorded: --net isolated from a template has no capture (use --net egress-log); its NAT NIC "
                "was restricted, nothing could leave it")
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


def _protections(net: NetMode, unprivileged: bool, uid: int | None, template: bool = False) -> list[str]:
    restricted = ("the template's NAT NIC only, cut off: QEMU's restrict=on (slirp refuses every connection and drops "
                  "every datagram the guest starts, DNS at 10.0.2.3 included; it answers only ARP and DHCP itself) "
                  "and no SSH or port forwards")
    nic = {NetMode.NONE: restricted + "; its link set down from the host (QMP set_link) and in the guest",
           NetMode.ISOLATED: restricted,
           NetMode.EGRESS_LOG: restricted + "; every frame the guest sent recorded (QEMU's filter-dump)",
           }[net] if template else {NetMode.NONE: "no NIC at all (no NAT, no port or SSH forward)",
           NetMode.ISOLATED: "only a private network of its own, no route out (no NAT, no forwards)",
           NetMode.EGRESS_LOG: "only a private network of its own whose one other member is the sink, which "
                               "forwards nothing (no NAT, no forwards)"}[net]
    return [
        "QEMU's seccomp sandbox: -sandbox " + (SANDBOX_UNPRIVILEGED if unprivileged else SANDBOX),
        (f"QEMU ran unprivileged: -runas nobody, seen running as uid {uid} (its seccomp filter allows set*id "
         "calls, which give nothing once root is dropped: docs/explanation/sandbox.md)") if unprivileged else
        (f"QEMU ran as the daemon's user (uid {uid}): " + (
            "a private network's switch socket is the daemon's user's, which an unprivileged QEMU could not reach"
            if net != NetMode.NONE and not template
            else "the daemon does not run as root, so QEMU cannot drop to another user")),
        nic,
        "no shared folders, no extra disks; the disk is a temporary overlay on the "
        + ("template's disk" if template else "image") + " (ephemeral)",
        "guest agent used only to copy the sample in, run the command, read the process log and sync",
        f"stdout and stderr kept up to {MAX_OUTPUT} bytes each; the command bounded by the timeout",
    ]

