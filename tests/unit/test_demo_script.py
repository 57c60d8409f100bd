"""scripts/demo.sh (`make run`) against a stand-in for the corral CLI: a first run, with no VM ``demo`` yet, launches
it without a traceback; a stopped demo is started, a running one reused; any other failure of `corral show` stops the
script with corral's own message."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Stands in for .venv/bin/corral: records its arguments; `show` answers as $SHOW says (absent: exit 3, not found).
FAKE_CORRAL = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
if [ "$1" = show ]; then
  case "$SHOW" in
    absent) echo "error: no VM named 'demo' (there are no VMs: \\`corral launch NAME\\`)" >&2; exit 3 ;;
    broken) echo "error: the daemon does not answer" >&2; exit 7 ;;
    *) printf '{"name": "demo", "state": "%s"}\\n' "$SHOW" ;;
  esac
fi
"""


def run_demo(tmp_path: Path, show: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "demo.sh", tmp_path / "scripts" / "demo.sh")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "corral").write_text(FAKE_CORRAL)
    (bin_dir / "corral").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    calls = tmp_path / "calls"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CALLS": str(calls), "SHOW": show}
    r = subprocess.run(["bash", str(tmp_path / "scripts" / "demo.sh")], env=env, capture_output=True, text=True,
                       timeout=30)
    return r, calls.read_text().splitlines() if calls.exists() else []


def test_first_run_launches_demo_without_a_traceback(tmp_path: Path) -> None:
    r, calls = run_demo(tmp_path, "absent")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "error" not in r.stderr, r.stderr
    assert calls == ["daemon start", "show demo --json", "launch demo", "exec demo -- uname -a", "ls"]


@pytest.mark.parametrize(("state", "then"), [("stopped", ["start demo"]), ("crashed", ["start demo"]),
                                             ("running", [])])
def test_an_existing_demo_is_started_or_reused(tmp_path: Path, state: str, then: list[str]) -> None:
    r, calls = run_demo(tmp_path, state)
    assert r.returncode == 0, r.stderr
    assert calls == ["daemon start", "show demo --json", *then, "exec demo -- uname -a", "ls"]


def test_another_failure_stops_with_corrals_message(tmp_path: Path) -> None:
    r, calls = run_demo(tmp_path, "broken")
    assert r.returncode == 7 and "the daemon does not answer" in r.stderr and "Traceback" not in r.stderr
    assert calls == ["daemon start", "show demo --json"]
