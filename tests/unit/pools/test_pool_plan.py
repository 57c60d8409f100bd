"""Warm pools' pure decisions: member names, size limits, what to do next."""

from __future__ import annotations

import pytest

from corral.pools import plan
from corral.pools.plan import Condition, Member, Step, decide
from corral.vm.spec import NAME_RE


def test_member_names_are_dns_labels_even_for_long_templates() -> None:
    assert plan.member_name("base", "abc123") == "pool-base-abc123"
    long = "t" * 62 + "x"
    name = plan.member_name(long)
    assert len(name) <= 63 and NAME_RE.match(name) and name.startswith("pool-ttt")
    # A cut that ends on '-' does not leave "--".
    name = plan.member_name("a" * 50 + "-" + "b" * 12, "abc123")
    assert "--" not in name and NAME_RE.match(name) and len(name) <= 63
    assert plan.member_name("base") != plan.member_name("base")


@pytest.mark.parametrize("size", [0, -1, plan.MAX_SIZE + 1])
def test_sizes_out_of_range_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match=f"pool size {size}|over the limit"):
        plan.check_size(size)


@pytest.mark.parametrize("size", [1, plan.MAX_SIZE])
def test_sizes_in_range(size: int) -> None:
    plan.check_size(size)


def m(name: str, c: Condition) -> Member:
    return Member(name, c)


def test_an_empty_pool_fills_one_at_a_time() -> None:
    assert decide(2, []) == Step(fill=True)
    assert decide(2, [m("a", Condition.READY)]) == Step(fill=True)
    assert decide(2, [m("a", Condition.FILLING)]) == Step(fill=False)
    assert decide(2, [], filling_elsewhere=True) == Step(fill=False)
    assert decide(2, [m("a", Condition.READY), m("b", Condition.READY)]) == Step()


def test_gone_members_are_forgotten_and_broken_ones_replaced() -> None:
    step = decide(2, [m("a", Condition.GONE), m("b", Condition.BROKEN), m("c", Condition.READY)])
    assert step == Step(forget=("a",), delete=("b",), fill=True)


def test_unknown_members_are_never_deleted_but_hold_their_place() -> None:
    assert decide(1, [m("u", Condition.UNKNOWN)]) == Step()
    # Shrinking sheds ready members (the newest first), never the unknown one.
    step = decide(1, [m("u", Condition.UNKNOWN), m("a", Condition.READY), m("b", Condition.READY)])
    assert step == Step(delete=("b", "a"))


def test_shrinking_sheds_the_newest_ready_members() -> None:
    members = [m("a", Condition.READY), m("b", Condition.READY), m("c", Condition.READY)]
    assert decide(1, members) == Step(delete=("c", "b"))
    # A member being filled finishes first (it may fail); then the newest goes.
    assert decide(1, [m("a", Condition.READY), m("f", Condition.FILLING)]) == Step()
