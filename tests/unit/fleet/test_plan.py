"""Planning: desired specs + current VMs -> create, change (restart or not), delete (prune), unchanged, conflict."""

from __future__ import annotations

from corral.fleet import FLEET_LABEL
from corral.fleet.plan import Current, plan
from corral.vm.spec import VMSpec


def spec(name: str, fleet: str | None = "demo", **kw: object) -> VMSpec:
    labels = dict(kw.pop("labels", {}))  # type: ignore[call-overload]
    if fleet:
        labels[FLEET_LABEL] = fleet
    return VMSpec.model_validate({"name": name, "labels": labels} | kw)


def cur(s: VMSpec, state: str = "running") -> Current:
    return Current(s, state)


def test_empty_host_creates_everything() -> None:
    p = plan("demo", [spec("a"), spec("b")], [])
    assert [(a.kind, a.name) for a in p.actions] == [("create", "a"), ("create", "b")]
    assert p.has_changes


def test_same_specs_are_unchanged_and_owner_filled_by_the_daemon_is_no_change() -> None:
    current = [cur(spec("a").model_copy(update={"owner": "alice"}))]
    p = plan("demo", [spec("a")], current)
    assert [(a.kind, a.name) for a in p.actions] == [("unchanged", "a")]
    assert not p.has_changes


def test_live_changes_need_no_restart() -> None:
    p = plan("demo", [spec("a", labels={"x": "2"}, description="d", restart="always")],
             [cur(spec("a", labels={"x": "1"}))])
    (a,) = p.actions
    assert a.kind == "change" and not a.restart
    assert [c.field for c in a.changes] == ["labels", "description", "restart"]
    assert a.update() == {"labels": {"x": "2", FLEET_LABEL: "demo"}, "description": "d", "restart": "always"}
    assert a.changes[0].old == {"x": "1", FLEET_LABEL: "demo"}


def test_memory_and_vcpus_restart_only_a_running_vm() -> None:
    desired = [spec("a", memory=512), spec("b", vcpus=2)]
    p = plan("demo", desired, [cur(spec("a")), cur(spec("b"), "stopped")])
    a, b = p.actions
    assert (a.kind, a.restart, a.changes[0].field, a.changes[0].old, a.changes[0].new) == (
        "change", True, "memory", 256, 512)
    assert a.changes[0].needs_restart
    assert (b.kind, b.restart, b.update()) == ("change", False, {"vcpus": 2})


def test_prune_deletes_only_undeclared_vms_of_this_fleet() -> None:
    current = [cur(spec("a")), cur(spec("gone")), cur(spec("other", fleet="prod")), cur(spec("loose", fleet=None))]
    assert [(a.kind, a.name) for a in plan("demo", [spec("a")], current).actions] == [("unchanged", "a")]
    p = plan("demo", [spec("a")], current, prune=True)
    assert [(a.kind, a.name) for a in p.actions] == [("delete", "gone"), ("unchanged", "a")]


def test_a_name_taken_by_a_vm_outside_the_fleet_is_a_conflict_never_touched() -> None:
    p = plan("demo", [spec("a", memory=512)], [cur(spec("a", fleet=None)), cur(spec("b", fleet="prod"))],
             prune=True)
    (a,) = p.actions
    assert a.kind == "conflict" and "belongs to no fleet" in a.reason
    assert not p.has_changes and p.conflicts == [a]


def test_fields_that_cannot_change_in_place_are_conflicts() -> None:
    p = plan("demo", [spec("a", image="debian12", memory=512)], [cur(spec("a"))])
    (a,) = p.actions
    assert a.kind == "conflict" and "image cannot change in place" in a.reason
    assert [(c.field, c.old, c.new) for c in a.changes] == [("image", "tiny", "debian12")]


def test_a_screen_cannot_be_added_in_place() -> None:
    (a,) = plan("demo", [spec("a", display="vnc")], [cur(spec("a"))]).actions
    assert a.kind == "conflict" and "display cannot change in place" in a.reason


def test_order_deletes_then_changes_then_creates() -> None:
    p = plan("demo", [spec("new"), spec("a", memory=512), spec("same")],
             [cur(spec("a")), cur(spec("same")), cur(spec("old"))], prune=True)
    assert [(a.kind, a.name) for a in p.actions] == [
        ("delete", "old"), ("change", "a"), ("create", "new"), ("unchanged", "same")]


def test_idle_policy_changes_in_place() -> None:
    p = plan("demo", [spec("a", idle={"suspend_after": "1h"})], [cur(spec("a"))])
    (a,) = p.actions
    assert a.kind == "change" and not a.restart and [c.field for c in a.changes] == ["idle"]
    assert a.update()["idle"]["suspend_after"] == 3600
    assert plan("demo", [spec("a", idle={"suspend_after": "1h"})],
                [cur(spec("a", idle={"suspend_after": 3600}))]).actions[0].kind == "unchanged"


def test_balloon_changes_from_the_next_start() -> None:
    p = plan("demo", [spec("a", balloon=True)], [cur(spec("a"))])
    (a,) = p.actions
    assert (a.kind, a.restart, a.update()) == ("change", True, {"balloon": True})


def test_a_vm_an_interrupted_apply_created_but_never_started_is_started() -> None:
    """Created, then corrald died before the start: the next apply starts it; a VM that ran and was stopped by
    its user stays stopped; a never-started VM with a change is changed, then started."""
    current = [Current(spec("a"), "stopped", never_started=True), Current(spec("b"), "stopped"),
               Current(spec("c"), "running", never_started=True), Current(spec("d"), "stopped", never_started=True)]
    p = plan("demo", [spec("a"), spec("b"), spec("c"), spec("d", memory=512)], current)
    assert [(a.kind, a.name, a.start) for a in p.actions] == [
        ("change", "d", True), ("start", "a", True), ("unchanged", "b", False), ("unchanged", "c", False)]
    assert p.has_changes
    assert not plan("demo", [spec("b")], [Current(spec("b"), "stopped")]).has_changes
