"""The quota computation: every defined VM counts, each limit refuses with how much over, owner and project both."""

from __future__ import annotations

import pytest

from corral.errors import CapacityError
from corral.vm import host
from corral.vm.quota import Quota, check, usage
from corral.vm.spec import VMSpec

G = 1 << 30


def vm(name: str, project: str = "web", owner: str = "ann", vcpus: int = 1, memory: int = 256,
       disk: int = 1 * G) -> tuple[VMSpec, int]:
    return VMSpec(name=name, project=project, owner=owner, vcpus=vcpus, memory=memory), disk


def test_usage_counts_members_only() -> None:
    u = usage("project", "web", [vm("a", vcpus=2), vm("b", project="db", vcpus=4), vm("c", memory=512)])
    assert (u.vms, u.vcpus, u.memory, u.disk, u.names) == (2, 3, 768, 2 * G, ["a", "c"])
    assert usage("owner", "ann", [vm("a"), vm("b", owner="bob")]).vms == 1


def test_within_limits_passes() -> None:
    spec, disk = vm("new", vcpus=2)
    check(spec, disk, [vm("a", vcpus=14)], [Quota("project", "web", vms=2, vcpus=16, memory=512, disk=2 * G)])


def test_no_quota_no_limit() -> None:
    spec, disk = vm("new", vcpus=200)
    check(spec, disk, [vm(f"v{i}") for i in range(50)], [Quota("project", "other", vms=1)])


def test_vcpus_message_says_by_how_much() -> None:
    spec, disk = vm("new", vcpus=4)
    with pytest.raises(CapacityError, match=r"^project 'web' would use 18 vCPUs, 2 over its limit of 16 vCPUs"):
        check(spec, disk, [vm("a", vcpus=14)], [Quota("project", "web", vcpus=16)])


def test_vms_limit() -> None:
    spec, disk = vm("c")
    with pytest.raises(CapacityError, match=r"project 'web' would use 3 VMs, 1 over its limit of 2 VMs"):
        check(spec, disk, [vm("a"), vm("b"), vm("x", project="db")], [Quota("project", "web", vms=2)])


def test_memory_limit() -> None:
    spec, disk = vm("c", memory=1024)
    with pytest.raises(CapacityError, match=r"would use 1.5G of memory, 512M over its limit of 1G of memory"):
        check(spec, disk, [vm("a", memory=512)], [Quota("project", "web", memory=1024)])


def test_disk_limit() -> None:
    spec, disk = vm("c", disk=10 * G)
    with pytest.raises(CapacityError, match=r"would use 15G of disk, 5G over its limit of 10G of disk"):
        check(spec, disk, [vm("a", disk=5 * G)], [Quota("project", "web", disk=10 * G)])


def test_owner_limit_applies_across_projects() -> None:
    spec, disk = vm("c", project="db")
    with pytest.raises(CapacityError, match=r"^owner 'ann' would use 2 VMs, 1 over its limit of 1 VM"):
        check(spec, disk, [vm("a", project="web")], [Quota("owner", "ann", vms=1)])
    check(*vm("c", owner="bob"), [vm("a")], [Quota("owner", "ann", vms=1)])


def test_project_and_owner_both_apply() -> None:
    quotas = [Quota("project", "web", vcpus=4), Quota("owner", "ann", vcpus=3)]
    # the project has room (3 of 4) but the owner does not (3 of 3 + 1)
    with pytest.raises(CapacityError, match=r"^owner 'ann' would use 4 vCPUs, 1 over"):
        check(*vm("c", vcpus=1), [vm("a", vcpus=3)], quotas)
    # both exceeded: the project is named first
    with pytest.raises(CapacityError, match=r"^project 'web' would use 5 vCPUs, 1 over"):
        check(*vm("c", vcpus=2), [vm("a", vcpus=3)], quotas)


def test_stopped_vms_count_too() -> None:
    """check() sees specs, not states: every defined VM holds its quota."""
    with pytest.raises(CapacityError):
        check(*vm("c"), [vm("a")], [Quota("project", "web", vms=1)])


def test_cpu_overcommit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "host_cpus", lambda: 2)
    assert host.cpu_limit(1.5) == 3
    host.check_start_cpus("a", 2, 1, 1.5)
    with pytest.raises(CapacityError, match=r"cannot start 'b': it needs 2 vCPUs but only 1 of the 3"):
        host.check_start_cpus("b", 2, 2, 1.5)
