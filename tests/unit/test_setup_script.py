"""scripts/setup.sh, run by a non-root user on a machine without QEMU, stops with the exact command to run."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root and setpriv")
def test_non_root_without_qemu_gets_the_install_command() -> None:
    # Not under pytest's tmp_path: that lives in a 0700 directory the unprivileged user cannot enter.
    tmp_path = Path(tempfile.mkdtemp(prefix="corral-setup-"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "id", "sort", "tr", "python3"):  # nothing of QEMU's
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    tmp_path.chmod(0o755)
    r = subprocess.run(
        [shutil.which("setpriv") or "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         str(bin_dir / "bash"), str(ROOT / "scripts" / "setup.sh")],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: missing system packages:") and "qemu-system-x86" in lines[0]
    assert lines[1].startswith("run:   sudo apt-get update && sudo apt-get install -y")
    assert "qemu-utils" in lines[1] and "Traceback" not in r.stderr
    shutil.rmtree(tmp_path)
