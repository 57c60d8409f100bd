"""QEMU processes: started detached from the daemon, recognised again after a daemon restart.

A QEMU process is started in its own session, with stdin from /dev/null, stdout and stderr into the VM's
``qemu.log`` and no descriptor of the daemon's (close_fds), so it outlives the daemon. Identity is the pid *and*
the process start time in clock ticks (field 22 of ``/proc/PID/stat``) *and* the VM's UUID on its command line:
a pid reused by another process never passes for the VM.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from corral.errors import EngineError


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start_ticks: int


def _stat_fields(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return data[data.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None if there is no such process."""
    f = _stat_fields(pid)
    return int(f[19]) if f else None


def cpu_seconds(pid: int) -> float | None:
    """CPU time ``pid`` used so far, user + system, all its threads (seconds); None if there is no such process."""
    f = _stat_fields(pid)
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") if f else None


def _state(path: Path) -> str | None:
    try:
        data = path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return data[data.rindex(")") + 2 :].split(maxsplit=1)[0]


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and has not exited (a zombie has exited).

    A process has exited only when all its threads have: a SIGKILLed QEMU's main thread is a zombie at once, while
    its other threads may still be finishing (an fdatasync in flight, for tens of milliseconds); until the last one
    ends, the process keeps its files open and its image locks held. So a zombie leader with a live thread is alive.
    """
    state = _state(Path(f"/proc/{pid}/stat"))
    if state is None:
        return False
    if state not in ("Z", "X"):
        return True
    try:
        tasks = [t for t in os.listdir(f"/proc/{pid}/task") if t != str(pid)]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return any(_state(Path(f"/proc/{pid}/task/{t}/stat")) not in (None, "Z", "X") for t in tasks)


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def matches(ident: ProcessIdentity, vm_id: str) -> bool:
    """Is the live process at ``ident.pid`` the QEMU of VM ``vm_id``, started at the recorded time?"""
    return is_alive(ident.pid) and start_ticks(ident.pid) == ident.start_ticks and vm_id in cmdline(ident.pid)


async def spawn(argv: list[str], log: Path, cwd: Path) -> asyncio.subprocess.Process:
    """Start ``argv`` detached: own session, no inherited descriptors, output appended to ``log``."""
    with open(log, "ab") as out:  # noqa: ASYNC230 - a local log file, opened once per start
        try:
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError as exc:
            raise EngineError(
                f"QEMU binary {argv[0]!r} not found: install it (apt-get install qemu-system-x86) or set CORRAL_QEMU"
            ) from exc


def identify(pid: int) -> ProcessIdentity:
    ticks = start_ticks(pid)
    if ticks is None:
        raise EngineError(f"process {pid} exited before it could be recorded")
    return ProcessIdentity(pid, ticks)


async def wait_exit(pid: int) -> None:
    """Return once ``pid`` has exited; works for processes that are not our children (via a pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    def ready() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, ready)
    try:
        if is_alive(pid):
            await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def kill(ident: ProcessIdentity, vm_id: str, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to the process only if it is still the VM's QEMU. True if a signal was sent."""
    if not matches(ident, vm_id):
        return False
    try:
        os.kill(ident.pid, sig)
    except ProcessLookupError:
        return False
    return True


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log, joined with ' | ' so an error stays on one line."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def find_qemu(vm_id: str) -> ProcessIdentity | None:
    """Scan /proc for the QEMU of ``vm_id`` (the UUID is on its command line)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        args = cmdline(pid)
        if "-uuid" in args and vm_id in args and is_alive(pid):
            ticks = start_ticks(pid)
            if ticks is not None:
                return ProcessIdentity(pid, ticks)
    return None
