"""Changes to an existing VM's spec: its labels, and the fields that may change after create (description, restart
policy, idle policy at once; vcpus, memory and the balloon from the VM's next start).

Each change holds the VM's lock, is validated as a whole spec (the same rules as at create), and is recorded as one
event listing what changed from what to what; a change to nothing is no change and records nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from corral.errors import Conflict, InvalidInput
from corral.store.db import VMRecord
from corral.vm import host, labels
from corral.vm.core import VMCore
from corral.vm.spec import VMSpec
from corral.vm.states import VMState


class SpecUpdates:
    """Changes the specs of the VMs of ``vms``."""

    def __init__(self, vms: VMCore) -> None:
        self.vms = vms

    async def set_labels(self, name: str, to_set: Mapping[str, str], to_remove: list[str]) -> VMRecord:
        """Set and remove labels, on a VM in any state (a spec change only). Removing an absent key is fine."""
        async with self.vms._lock(name):
            rec = self.vms._get(name)
            new = {k: v for k, v in rec.spec.labels.items() if k not in to_remove} | dict(to_set)
            try:
                labels.check_labels(new)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            if new == rec.spec.labels:
                return rec
            self.vms.store.update_spec(rec.spec.model_copy(update={"labels": new}))
            changes = [f"{k}={v}" for k, v in to_set.items() if rec.spec.labels.get(k) != v]
            changes += [f"{k}-" for k in to_remove if k in rec.spec.labels]
            self.vms.event(name, "label", f"labels: {' '.join(changes)}", set=dict(to_set),
                           removed=[k for k in to_remove if k in rec.spec.labels])
            return self.vms._get(name)

    async def update(self, name: str, changes: Mapping[str, Any]) -> VMRecord:
        """Change spec fields of an existing VM: labels, description and restart policy at once; vcpus, memory and
        the balloon from its next start (not while it is suspended: its saved state holds the old machine)."""
        allowed = {"labels", "description", "restart", "vcpus", "memory", "idle", "balloon"}
        if bad := sorted(set(changes) - allowed):
            raise InvalidInput(f"cannot change {', '.join(bad)} of an existing VM")
        async with self.vms._lock(name):
            rec = self.vms._get(name)
            try:
                new = VMSpec.model_validate(rec.spec.model_dump() | dict(changes))
            except ValidationError as exc:
                e = exc.errors()[0]
                raise InvalidInput(f"{'.'.join(str(x) for x in e['loc'])}: "
                                   f"{str(e['msg']).removeprefix('Value error, ')}") from None
            changed = [k for k in changes if getattr(new, k) != getattr(rec.spec, k)]
            if not changed:
                return rec
            if {"vcpus", "memory"} & set(changed) and rec.state in (VMState.SUSPENDED, VMState.SUSPENDING):
                raise Conflict(f"VM '{name}' is {rec.state}: its vcpus and memory can change once it is stopped "
                               "or running")
            if "balloon" in changed:  # a device, from the next start (docs/explanation/memory.md)
                if rec.state in (VMState.SUSPENDED, VMState.SUSPENDING):
                    raise Conflict(f"VM '{name}' is {rec.state}: its balloon can change once it is stopped or running")
                if new.balloon and self.vms.store.template_of(name) is not None:
                    raise InvalidInput(f"VM '{name}' was made from a template: its memory is the template's file, "
                                       "which a balloon would punch holes in")
            if "memory" in changed:
                host.check_spec_fits(name, new.memory, self.vms.settings.memory_overcommit)
            self.vms.store.update_spec(new)
            self.vms.event(name, "update", "changed " + ", ".join(
                f"{k}: {_show(getattr(rec.spec, k))} -> {_show(getattr(new, k))}" for k in changed),
                fields=changed)
            return self.vms._get(name)


def _show(v: object) -> str:
    """A spec field's value as the update event shows it."""
    if hasattr(v, "describe"):  # an idle policy
        return str(v.describe())
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in sorted(v.items())) or "(none)"
    return str(v.value if hasattr(v, "value") else v) if v != "" else "''"
