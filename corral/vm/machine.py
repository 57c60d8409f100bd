"""The runtime handle of one VM whose QEMU process exists: its process, monitor, guest agent and supervisor.

The service owns these; nothing outside ``corral.vm`` sees them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.engine.guest_agent import GuestAgent
from corral.engine.monitor import Monitor
from corral.engine.process import ProcessIdentity


@dataclass
class Machine:
    name: str
    vm_id: str
    ident: ProcessIdentity
    accel: str
    started_at: float
    monitor: Monitor | None  # None while the monitor cannot be reached (state unknown)
    agent: GuestAgent
    child: asyncio.subprocess.Process | None = None  # set when this daemon started QEMU (gives the exit status)
    supervisor: asyncio.Task[None] | None = None
    #: Why QEMU is exiting, from the SHUTDOWN event (guest-shutdown, guest-panic, host-qmp-quit, ...).
    shutdown_reason: str | None = None
    panicked: bool = False
    #: Set when a user asked for the stop or kill, so the exit is not a crash.
    requested: str | None = None
    #: Who asked for it (the actor of that request), recorded on the exit that follows.
    requested_by: str | None = None
    #: The state reason of the ``suspended`` VM after a requested suspend (by a user, or by idle control).
    suspend_reason: str = "suspended by user"
    #: The state reason of the ``stopped`` VM after a requested stop, when it was not a user's.
    stop_reason: str | None = None
    agent_ready: bool = False
    #: Set once the agent answered and the guest was provisioned (SSH key, private NICs) for this boot.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ready_task: asyncio.Task[None] | None = None
    ready_error: str | None = None
    ssh_port: int | None = None
    addresses: list[str] = field(default_factory=list)
    addresses_at: float = 0.0  #: monotonic time of the last answer (VMService.refresh_addresses)
    addresses_task: asyncio.Future[None] | None = None  #: the question being asked, shared by all who ask
    #: The agent's last ``guest-network-get-interfaces`` answer and its monotonic time, kept by idle control's
    #: sampler (it asks every running VM each interval): the metrics sampler reads it rather than ask the guest again.
    interfaces_seen: tuple[float, list[dict[str, Any]]] | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    #: A copy's data port id -> set when the guest closes that port (QMP VSERPORT_CHANGE, open false): its guest
    #: side has exited, so corral.vm.data_copy asks its exit status now rather than polling all along.
    port_closed: dict[str, asyncio.Event] = field(default_factory=dict)
    #: Set by each RESET event (the guest rebooted); cleared by whoever waits for the next one.
    reset: asyncio.Event = field(default_factory=asyncio.Event)
    #: This QEMU loaded a suspended VM's saved state (the guest continues its boot; its clock lags).
    resumed: bool = False
    #: This QEMU loaded another VM's saved state (a template's): this gives the guest its own identity and provisions
    #: it, instead of the usual provisioning, and waits for the agent to answer; it returns the guest's boot_id.
    personalize: Callable[[Machine], Awaitable[str]] | None = None
    #: Run after every later readiness of this QEMU (a guest reboot, a re-provisioning), in the background.
    after_ready: Callable[[Machine], Coroutine[Any, Any, None]] | None = None


@dataclass(frozen=True)
class Origin:
    """How a VM made from a template starts (given by corral.templates through ``VMService.origin_of``)."""

    disk: Path  #: the qcow2 its own disk is an overlay on
    memory: Path  #: the RAM file it maps privately (copy-on-write)
    state: Path | None  #: the device state loaded at this start (saved with x-ignore-shared); None: boot from disk
    personalize: Callable[[Machine], Awaitable[str]]
    loaded: Callable[[], None]  #: called once the state is loaded (later starts boot from the disk)
    after_ready: Callable[[Machine], Coroutine[Any, Any, None]] | None = None  #: see Machine.after_ready
    #: Awaited after QEMU started and before the state loads (the host side of a device the saved guest uses).
    before_load: Callable[[], Awaitable[None]] | None = None
    #: Awaited once the state loaded, before the vCPUs run, with the VM's guest agent: what is sent then is read by
    #: the guest the moment it runs, while the host records the start.
    after_load: Callable[[GuestAgent], Awaitable[None]] | None = None
