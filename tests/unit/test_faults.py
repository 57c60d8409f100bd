"""Fault points: declared names only, a no-op when nothing is armed, a SIGKILL of the process when armed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from corral import faults

ROOT = Path(__file__).resolve().parents[2]


def test_unarmed_point_does_nothing() -> None:
    assert faults.armed() == frozenset()
    faults.point("snapshot.after-overlay")  # returns: nothing is armed in the test process


def test_every_point_in_the_code_is_declared() -> None:
    used = set()
    for f in (ROOT / "corral").rglob("*.py"):
        used |= set(re.findall(r"faults\.point\(\"([^\"]+)\"\)", f.read_text()))
    assert used <= set(faults.POINTS), used - set(faults.POINTS)


def _run(env_value: str, name: str) -> subprocess.CompletedProcess[str]:
    code = f"from corral import faults; faults.point({name!r}); print('survived')"
    return subprocess.run([sys.executable, "-c", code], env={"CORRAL_FAULT": env_value, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_armed_point_kills_the_process() -> None:
    r = _run("snapshot.after-overlay", "snapshot.after-overlay")
    assert r.returncode == -9 and "survived" not in r.stdout


def test_other_points_pass_when_one_is_armed() -> None:
    r = _run("snapshot.after-overlay", "backup.during-copy")
    assert r.returncode == 0 and "survived" in r.stdout


@pytest.mark.parametrize("value", ["snapshot.after-overlai", "nope"])
def test_a_misspelt_fault_fails_at_import(value: str) -> None:
    r = _run(value, "snapshot.after-overlay")
    assert r.returncode == 1 and "unknown fault point" in r.stderr
