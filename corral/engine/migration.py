"""Machine state to and from a file: QEMU's migration stream, written to and read from a descriptor we pass it.

The building block of suspend to disk (and, later, of snapshots and templates). QEMU runs under
``-sandbox ...,spawn=deny``, so ``exec:`` URIs are out, and QEMU 7.2 has no ``file:`` URI: the daemon opens the file
itself, hands the descriptor to QEMU over the QMP socket (SCM_RIGHTS, ``getfd``) and migrates to or from ``fd:NAME``.

Saving (:func:`save_state`): a copy's temporary data port (corral.engine.data_channel) is removed, the vCPUs are
stopped, so the stream is one pass (no dirty-page rounds) and the
guest sees no time pass; bandwidth is unlimited. The stream goes to ``PATH.partial``, is fsynced and renamed to
``PATH`` only once QEMU reports ``completed``: a state file that exists is whole. On failure the partial file is
removed and the vCPUs run again if they ran before; the caller still has its running VM.

Loading: QEMU is started with the same command line plus :data:`INCOMING_ARGS` (``-incoming defer``), then
:func:`load_state` passes the file and runs ``migrate-incoming``. QEMU 7.2 exits when an incoming stream is bad
(truncated, corrupted, from another machine type); its last words are in its log. After a load the VM is left
paused or running as it was saved; the caller decides (``cont``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral.engine import data_channel
from corral.engine.monitor import Monitor, MonitorError
from corral.errors import EngineError
from corral.fileio import fsync_dir

#: Saving with this capability leaves out RAM that is a shared file mapping (a template's memory file): the stream
#: holds the devices only, and the loading QEMU maps the RAM from the same file (privately: QEMU >= 4.1 allows it).
IGNORE_SHARED = {"x-ignore-shared": True}

#: Appended to a VM's usual command line: wait for ``migrate-incoming`` instead of booting.
INCOMING_ARGS = ("-incoming", "defer")

FD_NAME = "corral-state"
UNLIMITED_BANDWIDTH = 1 << 40  # bytes/s: in effect no limit (QEMU's default is 128 MiB/s)
POLL = 0.02
SMALL_STREAM = 16 << 20


class MigrationError(EngineError):
    """Saving or loading machine state failed."""


@dataclass(frozen=True)
class Transfer:
    """What one save or load did: bytes in the file and seconds it took."""

    size: int
    seconds: float


_LOG_PREFIX = re.compile(r"^(\S+Z )?qemu-system-\w+: ")


def qemu_last_words(tail: str) -> str:
    """QEMU's log lines (``process.tail``, joined by `` | ``) without their timestamps and program name."""
    return " | ".join(_LOG_PREFIX.sub("", part) for part in tail.split(" | "))


def incoming_argv(argv: list[str]) -> list[str]:
    """The same command line, waiting for the state to be loaded instead of booting."""
    return [*argv, *INCOMING_ARGS]


async def _poll(monitor: Monitor, timeout: float, alive: Callable[[], bool] | None = None,
                interval: float = POLL) -> dict[str, object]:
    """query-migrate until the migration ends (completed, failed, cancelled); the last answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await monitor.execute("query-migrate", timeout=10.0)
        status = info.get("status", "none")
        if status in ("completed", "failed", "cancelled"):
            return dict(info)
        if alive is not None and not alive():
            raise MigrationError(f"QEMU of '{monitor.name}' exited during the migration")
        if loop.time() >= deadline:
            with contextlib.suppress(MonitorError):
                await monitor.execute("migrate_cancel")
            raise MigrationError(f"saving or loading the state of '{monitor.name}' did not finish within "
                                 f"{timeout:.0f}s (status {status})")
        await asyncio.sleep(interval)


async def _set_capabilities(monitor: Monitor, capabilities: dict[str, bool] | None) -> None:
    if capabilities:
        await monitor.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": k, "state": v} for k, v in capabilities.items()]})


#: Migration states in which a save is still under way.
ACTIVE = frozenset({"setup", "active", "pre-switchover", "device", "cancelling", "wait-unplug", "postcopy-active"})


async def save_state(monitor: Monitor, path: Path, *, was_running: bool, timeout: float = 600.0,
                     capabilities: dict[str, bool] | None = None) -> Transfer:
    """Write the machine state (memory and devices) of the QEMU behind ``monitor`` to ``path``.

    QEMU is left stopped, its state saved (status ``postmigrate``): the caller quits it. On failure ``path`` does not
    exist, and the vCPUs are running again if ``was_running``.
    """
    partial = path.with_name(path.name + ".partial")
    t0 = time.monotonic()
    fd = -1
    try:
        # A copy's temporary data port is not on the VM's command line: the state must not hold it (it would not
        # load). The copy using it fails; the guest sees the port go.
        await data_channel.unplug_all(monitor)
        await monitor.execute("stop")
        await monitor.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED_BANDWIDTH})
        await _set_capabilities(monitor, capabilities)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        await monitor.pass_fd(fd, FD_NAME)
        await monitor.execute("migrate", {"uri": f"fd:{FD_NAME}"})
        info = await _poll(monitor, timeout)
        if info.get("status") != "completed":
            raise MigrationError(f"saving the state of '{monitor.name}' failed: "
                                 f"{info.get('error-desc') or info.get('status')}")
        await asyncio.to_thread(os.fsync, fd)
        os.close(fd)
        fd = -1
        os.replace(partial, path)
        await asyncio.to_thread(fsync_dir, path.parent)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        partial.unlink(missing_ok=True)
        if was_running:
            with contextlib.suppress(MonitorError):
                await monitor.execute("cont")  # from postmigrate too: QEMU takes its disks back
        if isinstance(exc, MigrationError) or not isinstance(exc, (MonitorError, OSError)):
            raise
        raise MigrationError(f"saving the state of '{monitor.name}' failed: "
                             f"{getattr(exc, 'message', None) or exc}") from exc
    return Transfer(path.stat().st_size, time.monotonic() - t0)


async def cancel(monitor: Monitor, timeout: float = 10.0) -> None:
    """Cancel a state save under way (one a dead daemon started goes on inside QEMU) and wait until QEMU says
    it is over; nothing happens if none runs."""
    info = await monitor.execute("query-migrate")
    if info.get("status") not in ACTIVE:
        return
    with contextlib.suppress(MonitorError):
        await monitor.execute("migrate_cancel")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await monitor.execute("query-migrate")).get("status") not in ACTIVE:
            return
        await asyncio.sleep(0.05)
    raise MigrationError(f"the state save of '{monitor.name}' did not stop within {timeout:g}s")


async def load_state(monitor: Monitor, path: Path, *, alive: Callable[[], bool] | None = None,
                     timeout: float = 600.0, capabilities: dict[str, bool] | None = None) -> Transfer:
    """Load ``path`` into a QEMU started with :data:`INCOMING_ARGS`. The file is only read.

    ``capabilities`` must be those the stream was saved with (``x-ignore-shared`` changes its format)."""
    t0 = time.monotonic()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise MigrationError(f"cannot read the saved state of '{monitor.name}' ({path}): {exc.strerror}") from exc
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise MigrationError(f"the saved state of '{monitor.name}' ({path}) is empty")
        await _set_capabilities(monitor, capabilities)
        await monitor.pass_fd(fd, FD_NAME)
        await monitor.execute("migrate-incoming", {"uri": f"fd:{FD_NAME}"})
        # A small stream (a template's: no RAM) loads in a few tens of milliseconds: look often.
        info = await _poll(monitor, timeout, alive, interval=POLL if size > SMALL_STREAM else 0.005)
        if info.get("status") != "completed":
            raise MigrationError(f"loading the saved state of '{monitor.name}' failed: "
                                 f"{info.get('error-desc') or info.get('status')}")
        # For this load only: a later save (`corral suspend`) must write an ordinary stream.
        await _set_capabilities(monitor, {k: False for k in capabilities or {}})
    finally:
        os.close(fd)
    return Transfer(size, time.monotonic() - t0)
