"""The scheduler (corral.cluster.placement.place) as a pure function: filters, room, anti-affinity, weighers, and
the one-line message that says why no host fits."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from corral.cluster.models import HostRecord, HostState, PlacementRequest, Strategy, VMPlacement
from corral.cluster.placement import NoHostFits, allocation, place
from corral.errors import CapacityError


def host(name: str, cpus: int = 8, memory_mib: int = 8192, **kw: Any) -> HostRecord:
    return HostRecord(name=name, address=f"https://{name}:8443", cpus=cpus, memory_mib=memory_mib, **kw)


def req(vm: str = "web", vcpus: int = 1, memory_mib: int = 1024, **kw: Any) -> PlacementRequest:
    return PlacementRequest(vm=vm, vcpus=vcpus, memory_mib=memory_mib, **kw)


def vm(name: str, on: str, vcpus: int = 1, memory_mib: int = 1024, **kw: Any) -> VMPlacement:
    return VMPlacement(name=name, host=on, vcpus=vcpus, memory_mib=memory_mib, **kw)


def place_all(reqs: list[PlacementRequest], hosts: list[HostRecord],
              placements: list[VMPlacement] | None = None) -> list[VMPlacement]:
    """Place each request in turn, each placement seen by the next (as etcd's transactions make it)."""
    placements = list(placements or [])
    for r in reqs:
        h = place(r, hosts, placements)
        placements.append(vm(r.vm, h.name, r.vcpus, r.memory_mib, group=r.group))
    return placements


def test_spread_six_over_three_equal_hosts_gives_two_each() -> None:
    hosts = [host("h1"), host("h2"), host("h3")]
    placed = place_all([req(f"v{i}") for i in range(6)], hosts)
    assert Counter(p.host for p in placed) == {"h1": 2, "h2": 2, "h3": 2}


def test_spread_takes_the_host_with_most_memory_left() -> None:
    hosts = [host("a", memory_mib=4096), host("b", memory_mib=16384), host("c", memory_mib=8192)]
    assert place(req(), hosts, []).name == "b"


def test_pack_fills_one_host_first() -> None:
    hosts = [host("h1", memory_mib=4096), host("h2", memory_mib=4096), host("h3", memory_mib=4096)]
    placed = place_all([req(f"v{i}", strategy=Strategy.PACK) for i in range(5)], hosts)
    assert [p.host for p in placed] == ["h1", "h1", "h1", "h1", "h2"]


def test_pack_prefers_the_fullest_host_that_still_fits() -> None:
    hosts = [host("big", memory_mib=16384), host("small", memory_mib=2048), host("tiny", memory_mib=512)]
    assert place(req(strategy=Strategy.PACK), hosts, []).name == "small"


def test_capacity_respected_and_no_host_fits_once_full() -> None:
    hosts = [host("h1", cpus=2, memory_mib=2048), host("h2", cpus=2, memory_mib=2048)]
    placed = place_all([req(f"v{i}") for i in range(4)], hosts)
    assert Counter(p.host for p in placed) == {"h1": 2, "h2": 2}
    with pytest.raises(NoHostFits) as err:
        place(req("v4"), hosts, placed)
    assert "h1 has 0 vCPUs free of 2 and 0 MiB free of 2048" in err.value.message


def test_capacity_under_overcommit() -> None:
    # 2 threads x 4 = 8 vCPUs, 1024 MiB x 1.5 = 1536 MiB
    h = host("h1", cpus=2, memory_mib=1024, cpu_overcommit=4.0, memory_overcommit=1.5)
    placed = place_all([req(f"v{i}", vcpus=1, memory_mib=128) for i in range(8)], [h])
    assert allocation("h1", placed) == (8, 1024)
    with pytest.raises(NoHostFits, match="0 vCPUs free of 8"):
        place(req("v8", vcpus=1, memory_mib=128), [h], placed)
    assert place(req("m", vcpus=1, memory_mib=1536), [h], []).name == "h1"
    with pytest.raises(NoHostFits, match="1536 MiB free of 1536"):
        place(req("m", vcpus=1, memory_mib=1537), [h], [])


def test_allocation_ignores_stopped_crashed_suspended_but_counts_unknown() -> None:
    placements = [vm(f"s-{s}", "h1", 2, 1000, state=s) for s in ("stopped", "crashed", "suspended")]
    placements += [vm(f"c-{s}", "h1", 1, 100, state=s) for s in ("creating", "running", "paused", "unknown", "odd")]
    placements.append(vm("other", "h2", 4, 4000))
    assert allocation("h1", placements) == (5, 500)
    assert allocation("h2", placements) == (4, 4000)
    assert allocation("h3", placements) == (0, 0)


def test_stopped_placement_frees_room_unknown_one_does_not() -> None:
    hosts = [host("h1", cpus=2, memory_mib=2048)]
    assert place(req(memory_mib=2048), hosts, [vm("old", "h1", 2, 2048, state="stopped")]).name == "h1"
    with pytest.raises(NoHostFits, match="h1 has 0 vCPUs free of 2 and 0 MiB free of 2048"):
        place(req(memory_mib=2048), hosts, [vm("old", "h1", 2, 2048, state="unknown")])


def test_allocation_comes_from_placements_not_the_host_record() -> None:
    # the record's own counters are stale; the placements are the truth
    h = host("h1", cpus=2, memory_mib=2048, vcpus_allocated=2, memory_allocated_mib=2048)
    assert place(req(memory_mib=2048, vcpus=2), [h], []).name == "h1"


def test_draining_and_down_hosts_never_chosen() -> None:
    hosts = [host("big", memory_mib=65536, state=HostState.DRAINING),
             host("bigger", memory_mib=131072, state=HostState.DOWN), host("small", memory_mib=2048)]
    placed = place_all([req(f"v{i}", memory_mib=512) for i in range(4)], hosts)
    assert {p.host for p in placed} == {"small"}
    with pytest.raises(NoHostFits) as err:
        place(req("v4", memory_mib=512), hosts, placed)
    assert "big is draining" in err.value.message and "bigger is down" in err.value.message


def test_host_pin() -> None:
    hosts = [host("h1", memory_mib=16384), host("h2", memory_mib=2048)]
    assert place(req(host="h2"), hosts, []).name == "h2"


def test_pin_to_a_full_host_says_why() -> None:
    hosts = [host("h1", memory_mib=16384), host("h2", memory_mib=2048)]
    with pytest.raises(NoHostFits) as err:
        place(req(host="h2"), hosts, [vm("x", "h2", 1, 1536)])
    msg = err.value.message
    assert "h2 has 512 MiB free of 2048" in msg
    assert "h1" not in msg  # only the pinned host was considered


def test_pin_to_unknown_host_lists_members() -> None:
    hosts = [host("h2"), host("h1")]
    with pytest.raises(NoHostFits) as err:
        place(req(host="nope"), hosts, [])
    assert "'nope' is not a member" in err.value.message
    assert "members: h1, h2" in err.value.message


def test_labels_all_must_match() -> None:
    hosts = [host("a", memory_mib=65536, labels={"zone": "a"}),
             host("b", labels={"zone": "b", "ssd": "yes"}), host("c", labels={"zone": "b"})]
    assert place(req(host_labels={"zone": "b", "ssd": "yes"}), hosts, []).name == "b"
    with pytest.raises(NoHostFits) as err:
        place(req(host_labels={"zone": "c"}), hosts, [])
    assert "a lacks label zone=c" in err.value.message and "drop --host/--host-label" in err.value.message


def test_image_filter() -> None:
    hosts = [host("a", memory_mib=65536, images=["debian"]), host("b", images=["tiny", "alpine@aarch64"])]
    assert place(req(image="tiny"), hosts, []).name == "b"
    assert place(req(image="alpine@aarch64"), hosts, []).name == "b"
    assert place(req(image="tiny@x86_64"), hosts, []).name == "b"  # x86_64 images are published as bare NAME
    with pytest.raises(NoHostFits, match="b lacks image alpine: "):
        place(req(image="alpine"), hosts, [])  # the aarch64 build is not the x86_64 one


def test_template_filter() -> None:
    hosts = [host("a", memory_mib=65536), host("b", templates=["web"])]
    assert place(req(template="web"), hosts, []).name == "b"
    with pytest.raises(NoHostFits, match="a lacks template db; b lacks template db"):
        place(req(template="db"), hosts, [])


def test_exclude() -> None:
    hosts = [host("h1", memory_mib=65536), host("h2")]
    assert place(req(exclude=["h1"]), hosts, []).name == "h2"
    with pytest.raises(NoHostFits, match="h1 excluded; h2 excluded"):
        place(req(exclude=["h1", "h2"]), hosts, [])


def test_anti_affinity_spreads_a_group_even_over_a_much_bigger_host() -> None:
    hosts = [host("huge", cpus=64, memory_mib=262144), host("h2"), host("h3")]
    assert place(req("solo"), hosts, []).name == "huge"  # the weigher alone would pick it every time
    placed = place_all([req(f"m{i}", group="fleet") for i in range(3)], hosts)
    assert sorted(p.host for p in placed) == ["h2", "h3", "huge"]


def test_anti_affinity_is_soft_when_members_outnumber_hosts() -> None:
    hosts = [host("h1", memory_mib=65536), host("h2")]
    placed = place_all([req(f"m{i}", group="g") for i in range(5)], hosts)
    assert Counter(p.host for p in placed) == {"h1": 3, "h2": 2}  # fewest members first, then the weigher


def test_anti_affinity_ignores_other_groups() -> None:
    hosts = [host("h1", memory_mib=65536), host("h2")]
    placements = [vm("x", "h1", group="other")]
    assert place(req(group="g"), hosts, placements).name == "h1"
    assert place(req(group="other"), hosts, placements).name == "h2"


def test_anti_affinity_only_among_fitting_hosts() -> None:
    hosts = [host("h1", memory_mib=2048), host("h2", memory_mib=2048)]
    placements = [vm("m0", "h1", group="g"), vm("fat", "h2", memory_mib=2048)]
    assert place(req("m1", group="g"), hosts, placements).name == "h1"


def test_the_vm_being_placed_is_not_counted_against_itself() -> None:
    hosts = [host("h1", cpus=2, memory_mib=2048)]
    placements = [vm("web", "h1", 2, 2048, state="running")]
    assert place(req("web", vcpus=2, memory_mib=2048), hosts, placements).name == "h1"
    with pytest.raises(NoHostFits):
        place(req("api", vcpus=2, memory_mib=2048), hosts, placements)


def test_migration_excluding_the_source_lands_elsewhere() -> None:
    hosts = [host("src", memory_mib=65536), host("dst")]
    placements = [vm("web", "src", group="g")]
    assert place(req("web", group="g", exclude=["src"]), hosts, placements).name == "dst"


def test_spread_ties_broken_by_vcpus_then_vms_then_name() -> None:
    hosts = [host("b", cpus=4), host("a", cpus=4), host("c", cpus=8)]
    assert place(req(), hosts, []).name == "c"  # most vCPUs left
    hosts = [host("b"), host("a")]
    assert place(req(), hosts, []).name == "a"  # then name
    placements = [vm("idle", "a", state="stopped")]
    assert place(req(), hosts, placements).name == "b"  # fewest VMs placed before name


def test_no_host_fits_message_is_one_line_and_names_every_host() -> None:
    hosts = [host("h1", state=HostState.DRAINING), host("h2", cpus=4, memory_mib=4096), host("h3", images=[])]
    placements = [vm("x", "h2", 1, 3584)]
    h2 = hosts[1].model_copy(update={"images": ["tiny"]})
    with pytest.raises(NoHostFits) as err:
        place(req("web", vcpus=2, memory_mib=1024, image="tiny"), [hosts[0], h2, hosts[2]], placements)
    msg = err.value.message
    assert isinstance(err.value, CapacityError)
    assert "\n" not in msg and str(err.value) == msg
    assert msg.startswith("no host can take VM 'web' (2 vCPUs, 1024 MiB): ")
    assert "h1 is draining; h2 has 512 MiB free of 4096; h3 lacks image tiny" in msg


def test_no_hosts_at_all() -> None:
    with pytest.raises(NoHostFits, match="the cluster has no hosts"):
        place(req(), [], [])


def test_pure_inputs_untouched_and_deterministic() -> None:
    hosts = [host(f"h{i}", memory_mib=4096 * (i % 3 + 1)) for i in range(6)]
    placements = [vm(f"v{i}", f"h{i % 6}", memory_mib=512) for i in range(9)]
    before = ([h.model_dump() for h in hosts], [p.model_dump() for p in placements])
    first = place(req(), hosts, placements)
    assert all(place(req(), list(reversed(hosts)), placements).name == first.name for _ in range(3))
    assert ([h.model_dump() for h in hosts], [p.model_dump() for p in placements]) == before
