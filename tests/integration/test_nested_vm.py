"""Nested virtualization as a user meets it: `--nested` (and a fleet file's `nested: true`) refused under TCG with
one line and nothing made; and Corral itself running inside a Corral VM (a debian-12 guest, Corral installed from
the host's bundle, launching a `tiny` VM under TCG inside TCG and running a command in it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.nested.bundle import make_bundle
from tests.conftest import CorralEnv, ok, show, until

pytestmark = pytest.mark.vm

#: The inner Corral's socket in the guest (root's default home).
GUEST_SOCKET = "/root/.local/share/corral/corrald.sock"


def _accel(c: CorralEnv) -> str:
    return str(json.loads(ok(c, "daemon", "status", "--json"))["accel"])


def test_nested_is_refused_under_tcg_and_nothing_is_made(corral: CorralEnv, tmp_path: Path) -> None:
    r = corral.cli("launch", "nest", "--nested", "--no-wait")
    if _accel(corral) != "tcg":
        pytest.skip("this host runs VMs under KVM: the refusal is under TCG (the KVM path is unit-tested)")
    assert r.returncode == 5, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: nested virtualization needs KVM, but this host runs VMs under TCG (")
    assert "launch without --nested" in r.stderr and r.stderr.count("\n") == 1
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("fleet: nest\nvms:\n  hv: {image: tiny, nested: true}\n")
    r = corral.cli("apply", "-f", str(fleet), "--yes")
    assert r.returncode == 5 and "nested virtualization needs KVM" in r.stderr, (r.stdout, r.stderr)
    assert json.loads(ok(corral, "ls", "--json")) == []
    assert not corral.settings.vms_dir.exists() or not any(corral.settings.vms_dir.iterdir())

    # A VM that is not nested says so.
    ok(corral, "launch", "plain", "--no-wait")
    assert [ln.split()[1] for ln in ok(corral, "show", "plain").splitlines() if ln.startswith("nested:")] == ["no"]


@pytest.mark.extended
@pytest.mark.timeout(5400)
def test_corral_runs_inside_a_corral_vm(corral: CorralEnv) -> None:
    """The proof that Corral nests: under TCG here, so the inner VM runs under TCG inside TCG (tens of minutes on a
    loaded 2-core host: see docs/explanation/nested.md for its time)."""
    bundle = make_bundle(corral.settings.cache)
    corral.client.build_image("debian-12")
    ok(corral, "launch", "outer", "--image", "debian-12", "--memory", "2G", "--cpus", "2", "--disk", "6G",
       "--mount", f"{bundle}:/mnt/corral", timeout=600)
    assert show(corral, "outer")["spec"]["nested"] is False
    assert "nested:" in ok(corral, "show", "outer")

    out = ok(corral, "exec", "outer", "--timeout", "1500", "--", "sh", "/mnt/corral/install.sh", timeout=1600)
    assert "corral installed" in out
    # corrald (a systemd unit now) answers once Python has imported it: minutes under TCG. No CLI before: a CLI
    # that finds no daemon starts another one, which costs minutes of CPU before it finds the lock taken.
    until(lambda: corral.cli("exec", "outer", "--", "test", "-S", GUEST_SOCKET).returncode == 0, 1500,
          "the guest's corrald")

    r = corral.cli("exec", "outer", "--timeout", "2400", "--", "corral", "launch", "inner", "--timeout", "2300",
                   timeout=2500)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert r.stdout.startswith("inner ready in ") and "(tcg" in r.stdout
    r = corral.cli("exec", "outer", "--timeout", "900", "--", "corral", "exec", "inner", "--", "uname", "-n",
                   timeout=1000)
    assert (r.returncode, r.stdout) == (0, "inner\n"), r.stderr
