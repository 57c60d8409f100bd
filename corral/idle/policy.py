"""The idle policy: when a VM counts as idle (thresholds), and how long it must stay so before it is suspended.

A VM's spec may carry its own (``idle``); without one, its project's default applies (``corral project set P
--idle-suspend 1h``). A policy whose ``suspend_after`` is null is "off": it overrides a project default. Written on
the command line as ``--idle-suspend 30m --idle-cpu 5% --idle-disk 64K/s --idle-net 16K/s`` and in a fleet file as
``idle: {suspend_after: 30m, cpu: 5%, disk: 64K/s, net: 16K/s}``.

Defaults: an idle tiny guest under TCG costs its QEMU about 0.2-0.4 % of one host CPU (measured on a 2-core host;
timer ticks and the agent), a booted Debian guest a little more; 5 % of the VM's vCPUs is far above that and far
below any real work. The disk and network defaults (64 KiB/s, 16 KiB/s) let through the trickle of logs, DHCP
renewals and ARP, and nothing a user would do.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.vm.expiry import MAX_TTL, format_duration, parse_duration
from corral.vm.sizes import format_size, parse_size

DEFAULT_CPU = 5.0  # percent of the VM's vCPUs
DEFAULT_DISK = 64 << 10  # bytes/s read + written
DEFAULT_NET = 16 << 10  # bytes/s received + sent
MIN_SUSPEND_AFTER = 1.0  # seconds (tests use a few seconds; real windows are minutes)
MAX_RATE = 100 << 30  # bytes/s

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$")
_RATE_SUFFIX = re.compile(r"\s*/\s*s\s*$", re.IGNORECASE)


def parse_percent(v: Any) -> float:
    """``5%``, ``5`` or ``0.5%``: a share of the VM's vCPUs, more than 0 and at most 100."""
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a CPU share: use a percentage such as 5%")
    if isinstance(v, int | float):
        value = float(v)
    else:
        m = _PERCENT.match(str(v))
        if not m:
            raise ValueError(f"{v!r} is not a CPU share: use a percentage such as 5%")
        value = float(m[1])
    if not 0 < value <= 100:
        raise ValueError(f"{v!r} is out of range: a CPU share is more than 0% and at most 100%")
    return value


def parse_rate(v: Any) -> int:
    """``64K/s``, ``64K``, ``1M/s`` or a number of bytes per second; 0 means any I/O at all is activity."""
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a rate: use bytes per second such as 64K/s")
    if isinstance(v, int):
        value = v
    elif isinstance(v, float) and v.is_integer():
        value = int(v)
    else:
        text = _RATE_SUFFIX.sub("", str(v))
        try:
            value = parse_size(text)
        except ValueError:
            raise ValueError(f"{v!r} is not a rate: use bytes per second such as 64K/s or 1M/s") from None
    if not 0 <= value <= MAX_RATE:
        raise ValueError(f"{v!r} is out of range: use 0 to 100G/s")
    return value


def parse_after(v: Any) -> float | None:
    """``30m``, ``1h``, ``90`` (seconds); ``off``/``never``/null: no idle suspend (also false: YAML reads a bare
    ``off`` as false)."""
    if v is None or v is False or (isinstance(v, str) and v.strip().lower() in ("off", "never", "none")):
        return None
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise ValueError(f"{v!r} is not a duration: use e.g. 30m or 1h, or off")
    seconds = parse_duration(v) if isinstance(v, str) else float(v)
    if not MIN_SUSPEND_AFTER <= seconds <= MAX_TTL:
        raise ValueError(f"{v!r} is out of range: idle suspend waits at least 1 s and at most 10 years")
    return seconds


class IdlePolicy(BaseModel):
    """When a VM is idle: every measure under its threshold for ``suspend_after`` seconds; then it is suspended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suspend_after: float | None = Field(
        default=None, description="seconds of idleness before the VM is suspended to disk (also '30m', '1h'); "
        "null (or 'off'): never, which overrides the project's default")
    cpu: float = Field(default=DEFAULT_CPU, description="CPU threshold: percent of the VM's vCPUs (also '5%')")
    disk: int = Field(default=DEFAULT_DISK, description="disk threshold: bytes/s read + written (also '64K/s')")
    net: int = Field(default=DEFAULT_NET, description="network threshold: bytes/s received + sent by the guest's "
                     "NICs (also '16K/s')")

    @field_validator("suspend_after", mode="before")
    @classmethod
    def _after(cls, v: Any) -> float | None:
        return parse_after(v)

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: Any) -> float:
        return parse_percent(v)

    @field_validator("disk", "net", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> int:
        return parse_rate(v)

    @property
    def enabled(self) -> bool:
        return self.suspend_after is not None

    def describe(self) -> str:
        """``suspend after 30m idle (cpu < 5%, disk < 64K/s, net < 16K/s)`` or ``off``."""
        if self.suspend_after is None:
            return "off"
        return (f"suspend after {format_duration(self.suspend_after)} idle (cpu < {self.cpu:g}%, "
                f"disk < {format_rate(self.disk)}, net < {format_rate(self.net)})")


def format_rate(bps: float) -> str:
    return f"{format_size(int(bps))}/s"


def effective(own: IdlePolicy | None, project: IdlePolicy | None) -> tuple[IdlePolicy | None, str]:
    """The policy that applies to a VM and where it comes from: its own ("vm"), else its project's ("project")."""
    if own is not None:
        return own, "vm"
    if project is not None:
        return project, "project"
    return None, ""


#: The start of the state reason of a VM that idle control suspended.
IDLE_REASON = "idle:"


class IdleStatus(BaseModel):
    """A VM's idle control, as `corral show` and `corral ls` print it."""

    policy: IdlePolicy | None = Field(default=None, description="the policy that applies (null: none)")
    source: str = Field(default="", description="where it comes from: vm (its own) or project (its project's "
                        "default)")
    last_active: float | None = Field(default=None, description="when the VM was last active (Unix time): a "
                                      "measure at or over its threshold, a user reaching it, or its start")
    quiet_for: float | None = Field(default=None, description="seconds without activity so far (running VMs)")
    cpu: float | None = Field(default=None, description="CPU over the last interval, percent of its vCPUs")
    disk: float | None = Field(default=None, description="disk over the last interval, bytes/s")
    net: float | None = Field(default=None, description="network over the last interval, bytes/s")
    busy: list[str] = Field(default_factory=list, description="why the last interval counted as activity")
    suspended_by_idle: bool = Field(default=False, description="suspended because it was idle")
    auto_resume: bool = Field(default=False, description="suspended, and resumes by itself on exec, shell, cp or "
                              "a connection to a forwarded TCP port")
    held_ports: list[str] = Field(default_factory=list, description="forwarded host ports the daemon listens on "
                                  "while the VM is suspended")
