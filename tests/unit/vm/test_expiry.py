"""Expiry: TTL and time parsing, the warning window, and the pure decision (now, expires_at, state -> what)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from corral.vm.expiry import (
    Decision,
    ExpiryAction,
    ExpiryCheck,
    decide,
    format_duration,
    parse_duration,
    parse_time,
    warning_window,
)
from corral.vm.spec import VMSpec
from corral.vm.states import VMState

S = VMState
A = ExpiryAction
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("text,seconds", [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1w", 604800), ("1h30m", 5400),
    ("1.5h", 5400), ("45", 45), (" 2H ", 7200), ("1d12h", 129600),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "2x", "2h foo", "-1h", "0", "0s", "1h-", "99999d", "m30"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_time() -> None:
    assert parse_time("2026-12-01T18:00:00Z") == datetime(2026, 12, 1, 18, tzinfo=UTC)
    assert parse_time("2026-12-01T18:00:00") == datetime(2026, 12, 1, 18, tzinfo=UTC)  # naive: UTC
    assert parse_time("2026-12-01T19:00:00+01:00") == datetime(2026, 12, 1, 18, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_time("tomorrow")


def test_format_duration() -> None:
    assert format_duration(7) == "7s"
    assert format_duration(250) == "4m10s"
    assert format_duration(3700) == "1h1m"
    assert format_duration(90000) == "1d1h"
    assert format_duration(-5) == "0s"


def test_warning_window_is_ten_percent_or_the_cap() -> None:
    assert warning_window(7200, 0.1, 3600) == 720
    assert warning_window(7 * 86400, 0.1, 3600) == 3600
    assert warning_window(5, 0.1, 3600) == 0.5


def test_spec_accepts_ttl_strings_and_makes_times_utc() -> None:
    s = VMSpec(name="a", ttl="2h", expires_at="2026-12-01T19:00:00+01:00", on_expiry="suspend")
    assert s.ttl == 7200 and s.on_expiry == A.SUSPEND
    assert s.expires_at == datetime(2026, 12, 1, 18, tzinfo=UTC)
    assert VMSpec.model_validate_json(s.model_dump_json()) == s
    with pytest.raises(ValueError):
        VMSpec(name="a", ttl="soon")
    with pytest.raises(ValueError):
        VMSpec(name="a", on_expiry="explode")


def check(left: float | None, state: VMState = S.RUNNING, action: ExpiryAction = A.STOP, window: float = 60,
          warned: bool = False, expired: bool = False) -> Decision:
    at = None if left is None else NOW + timedelta(seconds=left)
    return decide(ExpiryCheck(now=NOW, expires_at=at, state=state, action=action, window=window, warned=warned,
                              expired=expired))


def test_no_expiry_no_action() -> None:
    assert check(None) == Decision.NONE


def test_before_the_window_nothing_then_one_warning() -> None:
    assert check(61) == Decision.NONE
    assert check(60) == Decision.WARN
    assert check(1) == Decision.WARN
    assert check(1, warned=True) == Decision.NONE


@pytest.mark.parametrize("action,state,want", [
    (A.STOP, S.RUNNING, Decision.ACT), (A.STOP, S.PAUSED, Decision.ACT), (A.STOP, S.STARTING, Decision.ACT),
    (A.STOP, S.STOPPED, Decision.DONE), (A.STOP, S.CRASHED, Decision.DONE), (A.STOP, S.SUSPENDED, Decision.DONE),
    (A.SUSPEND, S.RUNNING, Decision.ACT), (A.SUSPEND, S.PAUSED, Decision.ACT),
    (A.SUSPEND, S.STARTING, Decision.WAIT), (A.SUSPEND, S.SUSPENDED, Decision.DONE),
    (A.SUSPEND, S.STOPPED, Decision.DONE),
    (A.DELETE, S.RUNNING, Decision.ACT), (A.DELETE, S.STOPPED, Decision.ACT), (A.DELETE, S.SUSPENDED, Decision.ACT),
    (A.DELETE, S.STARTING, Decision.WAIT),
    # never on a VM whose state is unknown, nor one between states
    (A.STOP, S.UNKNOWN, Decision.WAIT), (A.SUSPEND, S.UNKNOWN, Decision.WAIT), (A.DELETE, S.UNKNOWN, Decision.WAIT),
    (A.STOP, S.STOPPING, Decision.WAIT), (A.SUSPEND, S.SUSPENDING, Decision.WAIT),
    (A.DELETE, S.STOPPING, Decision.WAIT), (A.DELETE, S.SUSPENDING, Decision.WAIT),
])
def test_at_expiry(action: ExpiryAction, state: VMState, want: Decision) -> None:
    assert check(0, state, action) == want
    assert check(-3600, state, action) == want


def test_once_expired_a_resting_vm_is_left_alone() -> None:
    assert check(-10, S.STOPPED, expired=True) == Decision.NONE
    assert check(-10, S.UNKNOWN, expired=True) == Decision.NONE
    assert check(-10, S.RUNNING, expired=True) == Decision.ACT  # running again after expiry: expiry holds
