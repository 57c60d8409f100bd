"""Each bad input gets a one-line error naming the problem, a non-zero exit, and changes nothing."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import CorralEnv

pytestmark = pytest.mark.vm


def snapshot(c: CorralEnv) -> tuple[str, list[str]]:
    vms = json.loads(c.cli("ls", "--json").stdout)
    return json.dumps([(v["name"], v["state"], v["spec"]) for v in vms]), sorted(os.listdir(c.settings.vms_dir))


@pytest.mark.parametrize("args,code,words", [
    (["launch", "Bad_Name"], 2, "not a valid VM name"),
    (["launch", "x", "--image", "nope"], 3, "no image builder 'nope'"),
    (["launch", "x", "--memory", "900G"], 5, "this host allows at most"),
    (["launch", "x", "--memory", "12 apples"], 2, "not a size"),
    (["launch", "x", "--memory", "16M"], 2, "memory"),
    (["launch", "x", "--cpus", "0"], 2, "vcpus"),
    (["launch", "x", "--disk", "100M"], 2, "smaller than image"),
    (["launch", "x", "--restart", "sometimes"], 2, "restart"),
    (["launch", "keep"], 4, "already exists"),
    (["start", "keep"], 4, "cannot start VM 'keep' while it is running"),
    (["resume", "keep"], 4, "cannot resume"),
    (["rm", "keep"], 4, "while it is running"),
    (["exec", "ghost", "--", "true"], 3, "no VM named 'ghost'"),
    (["exec", "keep", "--env", "NOEQUALS", "--", "true"], 2, "KEY=VALUE"),
    (["stop", "ghost"], 3, "no VM named 'ghost'"),
    (["images", "rm", "tiny"], 4, "keep"),
    (["images", "build", "windows"], 3, "no image builder 'windows': known images are debian-12, tiny"),
])
def test_bad_input_changes_nothing(corral: CorralEnv, args: list[str], code: int, words: str) -> None:
    if not hasattr(corral, "_keep"):
        assert corral.cli("launch", "keep", "--no-wait").returncode == 0
    before = snapshot(corral)
    r = corral.cli(*args)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert words in err, err
    assert "Traceback" not in r.stderr
    assert snapshot(corral) == before
    assert corral.cli("images", "ls", "--json").returncode == 0


def test_launch_refused_at_start_leaves_nothing(corral_home: CorralEnv) -> None:
    """Memory that fits the host but not beside the running VMs: launch fails at start, and is undone."""
    import json as _json

    corral_home.env["CORRAL_MEMORY_OVERCOMMIT"] = "0.5"
    corral_home.start_daemon()
    corral_home.client.build_image("tiny")
    from corral.vm.host import host_memory_mib

    half = host_memory_mib() // 2
    big = f"{half * 3 // 5}M"  # one fits under the 50% limit, two do not
    assert corral_home.cli("launch", "first", "--memory", big, "--no-wait").returncode == 0
    r = corral_home.cli("launch", "second", "--memory", big, "--no-wait")
    assert r.returncode == 5, r.stderr
    assert "cannot start 'second'" in r.stderr and "MiB" in r.stderr
    names = [v["name"] for v in _json.loads(corral_home.cli("ls", "--json").stdout)]
    assert names == ["first"]
    assert sorted(os.listdir(corral_home.settings.vms_dir)) == ["first"]
