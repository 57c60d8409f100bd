"""The QEMU monitor, through qemu.qmp (QEMU's own asyncio QMP library).

A thin layer: it connects (retrying while QEMU is still creating its socket), executes commands with a timeout,
and hands events to a callback from a background task that never raises into its caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

from corral.errors import EngineError

log = logging.getLogger(__name__)

EventHandler = Callable[[str, dict[str, Any]], Awaitable[None]]

#: Told of every QMP command that failed, as (command, error class or "NoAnswer"); the daemon's metrics set it
#: (corral.metrics.sampler: ``corral_qmp_errors_total``). The engine itself keeps no counters.
error_hook: Callable[[str, str], None] | None = None


def _failed(cmd: str, error: str) -> None:
    if error_hook is not None:
        error_hook(cmd, error)


class MonitorError(EngineError):
    """A QMP command failed, or the monitor could not be reached."""


class Monitor:
    """One QMP connection to one QEMU."""

    def __init__(self, name: str, socket: Path) -> None:
        self.name = name
        self.socket = socket
        self._qmp = QMPClient(name)
        self._events_task: asyncio.Task[None] | None = None

    async def connect(self, timeout: float = 10.0, alive: Callable[[], bool] | None = None) -> None:
        """Connect, retrying until ``timeout``; stop early once ``alive()`` says the process is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not self.socket.exists() and loop.time() < deadline and (alive is None or alive()):
                await asyncio.sleep(0.005)  # QEMU has not created its socket yet (a stat every 5 ms costs nothing)
                continue
            try:
                await asyncio.wait_for(self._qmp.connect(str(self.socket)), timeout=max(0.1, deadline - loop.time()))
                return
            except (TimeoutError, QMPError, OSError) as exc:
                if loop.time() >= deadline or (alive is not None and not alive()):
                    raise MonitorError(
                        f"cannot reach the QEMU monitor of '{self.name}' at {self.socket}: {exc}"
                    ) from exc
                self._qmp = QMPClient(self.name)
                await asyncio.sleep(0.05)

    def watch(self, handler: EventHandler) -> None:
        """Deliver every QMP event to ``handler(name, data)`` until the connection ends."""

        async def pump() -> None:
            try:
                async for event in self._qmp.events:
                    try:
                        data = event.get("data", {})
                        await handler(str(event["event"]), dict(data) if isinstance(data, dict) else {})
                    except Exception:  # a handler bug must not stop the pump
                        log.exception("QMP event handler failed for %s", self.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.debug("event pump of %s ended", self.name, exc_info=True)

        self._events_task = asyncio.create_task(pump(), name=f"qmp-events-{self.name}")

    async def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0,
                      *, counted: bool = True) -> Any:
        """Run one QMP command; each failure counts in ``corral_qmp_errors_total`` unless ``counted`` is False (a
        failure that is the usual answer, as ``closefd`` of a name not passed yet)."""
        try:
            return await asyncio.wait_for(self._qmp.execute(cmd, args), timeout=timeout)
        except ExecuteError as exc:
            if counted:
                _failed(cmd, str(exc.error_class))
            raise MonitorError(f"QMP {cmd} failed on '{self.name}': {exc.error_class}: {exc}") from exc
        except (TimeoutError, QMPError, OSError, EOFError) as exc:
            if counted:
                _failed(cmd, "NoAnswer")
            raise MonitorError(f"QMP {cmd} on '{self.name}' got no answer: {exc or type(exc).__name__}") from exc

    async def pass_fd(self, fd: int, fdname: str, timeout: float = 10.0) -> None:
        """Hand ``fd`` to QEMU (SCM_RIGHTS on the QMP socket) under ``fdname``, for ``fd:NAME`` URIs.

        QEMU gets its own copy; the caller still owns (and closes) ``fd``. A stale descriptor of the same name is
        closed first, so the name always means this one.
        """
        try:
            await self.execute("closefd", {"fdname": fdname}, timeout=timeout, counted=False)
        except MonitorError:
            pass  # no such name yet: the usual case
        try:
            self._qmp.send_fd_scm(fd)
        except (QMPError, OSError) as exc:
            raise MonitorError(f"cannot pass a file descriptor to the QEMU of '{self.name}': {exc}") from exc
        await self.execute("getfd", {"fdname": fdname}, timeout=timeout)

    async def close(self) -> None:
        if self._events_task is not None:
            self._events_task.cancel()
            try:
                await self._events_task
            except asyncio.CancelledError:
                if asyncio.current_task() and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
        try:
            await self._qmp.disconnect()
        except Exception:  # the peer is usually already gone; nothing more to release
            log.debug("QMP disconnect of %s", self.name, exc_info=True)
