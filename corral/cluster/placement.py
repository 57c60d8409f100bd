"""The scheduler: where a new (or moving) VM goes, as one pure function of the request, the hosts and the placements
(no I/O, no clock), so it is tested alone and fast enough to place 1,000 VMs over 50 hosts in well under a second.

Filters first, each host ruled out with its reason: the ``--host`` pin, the excluded hosts (a migration's source),
state ``ready`` (draining and down hosts take nothing), every ``--host-label``, the image and the template present,
then room: the vCPUs and memory its placements take (every placement on it that is not stopped, crashed or
suspended: ``unknown`` and ``creating`` count, unknown never means absent), plus the VM's, within the host's limits
under its overcommit settings. Then soft anti-affinity (Nova's soft-anti-affinity): the members of a group go to
hosts holding none of the group while there are any, else to those holding the fewest. Then the weigher: ``spread``
takes the host with the most memory left after the VM, ``pack`` the least; ties broken by vCPUs left, VMs placed,
then name, so the answer is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from corral.cluster.models import HostRecord, HostState, PlacementRequest, Strategy, VMPlacement
from corral.errors import CapacityError

#: Placement states that hold no room on their host.
IDLE_STATES = frozenset({"stopped", "crashed", "suspended"})


class NoHostFits(CapacityError):
    """No host can take the VM; the message names each host's reason, in one line."""


@dataclass(slots=True)
class _Use:
    vcpus: int = 0
    memory_mib: int = 0
    vms: int = 0
    group: int = 0  # members of the request's group on the host


def _uses(req: PlacementRequest, placements: Sequence[VMPlacement]) -> dict[str, _Use]:
    """What each host's placements take (one pass), the VM being placed not counted against itself. The hot loop of
    a fleet launch (every placement, once per VM placed): no object made per placement."""
    uses: dict[str, _Use] = {}
    vm, group, idle = req.vm, req.group, IDLE_STATES
    for p in placements:
        if p.name == vm:
            continue
        u = uses.get(p.host)
        if u is None:
            u = uses[p.host] = _Use()
        u.vms += 1
        if group is not None and p.group == group:
            u.group += 1
        if p.state not in idle:
            u.vcpus += p.vcpus
            u.memory_mib += p.memory_mib
    return uses


def allocation(host: str, placements: Sequence[VMPlacement]) -> tuple[int, int]:
    """(vCPUs, MiB) the placements on ``host`` take: those not stopped, crashed or suspended (unknown counts)."""
    taken = [p for p in placements if p.host == host and p.state not in IDLE_STATES]
    return sum(p.vcpus for p in taken), sum(p.memory_mib for p in taken)


def _image_key(image: str) -> str:
    """A host publishes its x86_64 images as bare NAME (corral.cluster.service), a request may say NAME@x86_64."""
    return image.removesuffix("@x86_64")


def _has_image(host: HostRecord, image: str) -> bool:
    key = _image_key(image)
    return any(_image_key(i) == key for i in host.images)


def _why_not(req: PlacementRequest, h: HostRecord, u: _Use) -> str | None:
    """Why ``h`` cannot take the VM; None: it can."""
    if h.name in req.exclude:
        return "excluded"
    if h.state != HostState.READY:
        return f"is {h.state.value}"
    for k, v in req.host_labels.items():
        if h.labels.get(k) != v:
            return f"lacks label {k}={v}"
    if req.image is not None and not _has_image(h, req.image):
        return f"lacks image {req.image}"
    if req.template is not None and req.template not in h.templates:
        return f"lacks template {req.template}"
    cpu_free, mem_free = h.cpu_limit - u.vcpus, h.memory_limit_mib - u.memory_mib
    short = ([f"{max(0, cpu_free)} vCPUs free of {h.cpu_limit}"] if req.vcpus > cpu_free else []) + (
        [f"{max(0, mem_free)} MiB free of {h.memory_limit_mib}"] if req.memory_mib > mem_free else [])
    return f"has {' and '.join(short)}" if short else None


def place(req: PlacementRequest, hosts: Sequence[HostRecord], placements: Sequence[VMPlacement]) -> HostRecord:
    """The host for ``req``; :class:`NoHostFits` when none can take it."""
    what = f"VM '{req.vm}' ({req.vcpus} vCPUs, {req.memory_mib} MiB)"
    candidates = list(hosts)
    if req.host is not None:
        candidates = [h for h in hosts if h.name == req.host]
        if not candidates:
            members = ", ".join(sorted(h.name for h in hosts)) or "none"
            raise NoHostFits(f"no host can take {what}: '{req.host}' is not a member of the cluster (members: "
                             f"{members}): see `corral host ls`")
    uses = _uses(req, placements)
    fits: list[tuple[HostRecord, _Use]] = []
    reasons: list[str] = []
    for h in candidates:
        u = uses.get(h.name, _Use())
        why = _why_not(req, h, u)
        if why is None:
            fits.append((h, u))
        else:
            reasons.append(f"{h.name} {why}")
    if not fits:
        raise NoHostFits(f"no host can take {what}: {'; '.join(reasons) or 'the cluster has no hosts'}: free room, "
                         "build the image on a host, undrain one, or drop --host/--host-label")
    if req.group is not None:
        fewest = min(u.group for _, u in fits)
        fits = [(h, u) for h, u in fits if u.group == fewest]

    def key(item: tuple[HostRecord, _Use]) -> tuple[int, int, int, str]:
        h, u = item
        mem_left = h.memory_limit_mib - u.memory_mib - req.memory_mib
        cpu_left = h.cpu_limit - u.vcpus - req.vcpus
        if req.strategy == Strategy.PACK:
            return mem_left, cpu_left, 0, h.name
        return -mem_left, -cpu_left, u.vms, h.name

    return min(fits, key=key)[0]
