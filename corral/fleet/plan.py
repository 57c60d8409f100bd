"""The plan: what to do so the host's VMs match a fleet file. Pure: desired specs + current VMs -> actions.

Only VMs labelled ``corral.fleet=NAME`` belong to the fleet: they are changed, and with ``prune`` deleted when no
longer declared. Any other VM is never touched; a declared name already taken by one is a conflict.

What can change in place: labels, description, the restart policy and the idle policy at once; vcpus, memory and the
balloon in the spec, which take effect when the VM is next started (a running VM is stopped and started: "restart
needed"). Any other field (image, disk, ports, networks, cloud-init, display, mounts: `corral mount` changes those, ...)
cannot change in place: the plan reports a conflict, and the VM must be deleted (or renamed in the file) to be
recreated.

A declared VM that exists but has never been started (no QEMU ever exited for it: an earlier apply was interrupted
between its create and its start, e.g. by a crash of corrald) is started: what apply's create promised. A VM that
ran and was stopped stays stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from corral.fleet import FLEET_LABEL
from corral.vm.spec import VMSpec

LIVE_FIELDS = ("labels", "description", "restart", "idle")
RESTART_FIELDS = ("vcpus", "memory", "balloon")
FIXED_FIELDS = ("image", "arch", "disk", "ports", "networks", "cloud_init", "ssh_keys", "hostname", "owner",
                "project", "mounts", "display")

Kind = Literal["create", "start", "change", "delete", "unchanged", "conflict"]


@dataclass(frozen=True)
class Current:
    """A VM as it is: its spec, whether it runs (a running VM must be restarted for vcpus/memory), and whether it
    has ever run (``last_exit_reason`` is empty only until its first QEMU exits or runs)."""

    spec: VMSpec
    state: str = "stopped"
    never_started: bool = False

    @property
    def pending_start(self) -> bool:
        """Created by an apply that did not get to start it."""
        return self.never_started and self.state == "stopped"

    @property
    def running(self) -> bool:
        return self.state in ("running", "paused", "starting")


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: Any
    new: Any

    @property
    def needs_restart(self) -> bool:
        return self.field in RESTART_FIELDS


@dataclass(frozen=True)
class Action:
    kind: Kind
    name: str
    spec: VMSpec | None = None  # create: the spec; change: the desired spec
    changes: tuple[FieldChange, ...] = ()
    restart: bool = False  # change: the VM runs and a changed field needs a new QEMU
    start: bool = False  # change or start: the VM was created by an interrupted apply and never started
    reason: str = ""  # conflict: why

    def update(self) -> dict[str, Any]:
        """A change's fields, as `PATCH /v1/vms/{name}` takes them."""
        assert self.spec is not None
        return {c.field: self.spec.model_dump(mode="json")[c.field] for c in self.changes}


@dataclass
class Plan:
    fleet: str
    actions: list[Action] = field(default_factory=list)

    def of(self, kind: Kind) -> list[Action]:
        return [a for a in self.actions if a.kind == kind]

    @property
    def has_changes(self) -> bool:
        return any(a.kind in ("create", "start", "change", "delete") for a in self.actions)

    @property
    def conflicts(self) -> list[Action]:
        return self.of("conflict")


def _value(spec: VMSpec, name: str) -> Any:
    return spec.model_dump(mode="json")[name]


def plan(fleet: str, desired: list[VMSpec], current: list[Current], prune: bool = False) -> Plan:
    """The actions that make ``current`` match ``desired`` for fleet ``fleet``, in the order to run them:
    deletions first (freeing names, ports and memory), then changes, then creations and starts; unchanged and conflicts
    are listed for the report. Without ``prune``, undeclared VMs of the fleet are left alone (not listed)."""
    by_name = {c.spec.name: c for c in current}
    wanted = {s.name for s in desired}
    out = Plan(fleet)
    for c in sorted(current, key=lambda c: c.spec.name):
        if c.spec.labels.get(FLEET_LABEL) == fleet and c.spec.name not in wanted and prune:
            out.actions.append(Action("delete", c.spec.name))
    changes: list[Action] = []
    creates: list[Action] = []
    rest: list[Action] = []
    for spec in desired:
        cur = by_name.get(spec.name)
        if cur is None:
            creates.append(Action("create", spec.name, spec=spec))
            continue
        theirs = cur.spec.labels.get(FLEET_LABEL)
        if theirs != fleet:
            owner = f"fleet '{theirs}'" if theirs else "no fleet"
            rest.append(Action("conflict", spec.name, reason=f"a VM named '{spec.name}' exists and belongs to "
                               f"{owner}: it is left alone"))
            continue
        fixed = [f for f in FIXED_FIELDS if _value(spec, f) != _value(cur.spec, f)
                 and not (f == "owner" and spec.owner == "")]
        if fixed:
            rest.append(Action("conflict", spec.name, changes=tuple(
                FieldChange(f, _value(cur.spec, f), _value(spec, f)) for f in fixed),
                reason=f"{', '.join(fixed)} cannot change in place: delete the VM to recreate it"))
            continue
        diff = tuple(FieldChange(f, _value(cur.spec, f), _value(spec, f)) for f in (*LIVE_FIELDS, *RESTART_FIELDS)
                     if _value(spec, f) != _value(cur.spec, f))
        if diff:
            changes.append(Action("change", spec.name, spec=spec, changes=diff,
                                  restart=cur.running and any(c.needs_restart for c in diff),
                                  start=cur.pending_start))
        elif cur.pending_start:
            creates.append(Action("start", spec.name, spec=spec, start=True,
                                  reason="created by an earlier apply that was interrupted before it started it"))
        else:
            rest.append(Action("unchanged", spec.name))
    out.actions += changes + creates + rest
    return out
