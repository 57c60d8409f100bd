"""The idle policy: thresholds parsed from what users write, validated, and the project default's precedence."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from corral.idle.policy import IdlePolicy, effective, parse_after, parse_percent, parse_rate
from corral.vm.spec import VMSpec


def test_parsing_what_users_write() -> None:
    p = IdlePolicy.model_validate({"suspend_after": "30m", "cpu": "2.5%", "disk": "1M/s", "net": "16K"})
    assert (p.suspend_after, p.cpu, p.disk, p.net) == (1800, 2.5, 1 << 20, 16 << 10)
    assert p.describe() == "suspend after 30m idle (cpu < 2.5%, disk < 1M/s, net < 16K/s)"
    d = IdlePolicy(suspend_after=60)
    assert (d.cpu, d.disk, d.net) == (5.0, 64 << 10, 16 << 10) and d.enabled
    off = IdlePolicy.model_validate({"suspend_after": "off"})
    assert off.suspend_after is None and not off.enabled and off.describe() == "off"
    assert parse_rate(0) == 0 and parse_rate("2 k / s") == 2048 and parse_percent(7) == 7.0
    assert parse_after("1h30m") == 5400 and parse_after(None) is None


@pytest.mark.parametrize(("field", "value", "message"), [
    ("suspend_after", "3x", "'3x' is not a duration"),
    ("suspend_after", "0.5s", "at least 1 s"),
    ("cpu", "150%", "at most 100%"),
    ("cpu", "0%", "more than 0%"),
    ("cpu", "lots", "'lots' is not a CPU share"),
    ("disk", "fast", "'fast' is not a rate"),
    ("net", -1, "out of range"),
])
def test_bad_values_say_what_is_wrong(field: str, value: object, message: str) -> None:
    fields: dict[str, object] = {"suspend_after": "5m"} | {field: value}
    with pytest.raises(ValidationError, match=message):
        IdlePolicy.model_validate(fields)


def test_spec_round_trip_and_unknown_fields() -> None:
    s = VMSpec(name="a", idle={"suspend_after": "5s", "cpu": "5%"})  # type: ignore[arg-type]
    assert VMSpec.model_validate_json(s.model_dump_json()) == s
    with pytest.raises(ValidationError, match="Extra inputs"):
        VMSpec(name="a", idle={"suspend_after": "5s", "gpu": "1%"})  # type: ignore[arg-type]


def test_own_policy_beats_the_projects_even_when_off() -> None:
    own, project = IdlePolicy(suspend_after=None), IdlePolicy(suspend_after=3600)
    assert effective(own, project) == (own, "vm")
    assert effective(None, project) == (project, "project")
    assert effective(None, None) == (None, "")
