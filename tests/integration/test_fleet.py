"""Fleet files on real VMs: apply creates and starts, a second apply changes nothing, an edit (a label, a removed VM,
more memory) is planned and applied exactly, and a VM outside the fleet is never touched."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from corral.fleet import FLEET_LABEL
from tests.conftest import CorralEnv

pytestmark = pytest.mark.vm

FLEET = """\
fleet: demo
defaults:
  image: tiny
  memory: 128M
  labels: {env: dev}
vms:
  web:
    count: 3
    labels: {role: web}
"""

# env label changed on all; web-3 gone (count 1); web-2 declared by name, with more memory.
EDITED = """\
fleet: demo
defaults:
  image: tiny
  memory: 128M
  labels: {env: prod}
vms:
  web: {count: 1, labels: {role: web}}
  web-2: {memory: 192M, labels: {role: web}}
"""


def test_apply_diff_edit_prune(corral: CorralEnv, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(FLEET)
    r = corral.cli("launch", "outsider", "--no-wait", "-m", "128M", "-l", "role=web")
    assert r.returncode == 0, r.stderr
    outsider_pid = corral.client.get_vm("outsider").pid

    r = corral.cli("diff", "-f", str(fleet), "--exit-code")
    assert r.returncode == 8, r.stderr
    assert "3 to create, 0 to change, 0 to delete, 0 unchanged" in r.stdout
    r = corral.cli("apply", "-f", str(fleet))  # not a terminal: needs --yes
    assert r.returncode == 2 and "--yes" in r.stderr
    t0 = time.monotonic()
    r = corral.cli("apply", "-f", str(fleet), "--yes")
    print(f"apply of 3 VMs (no wait): {time.monotonic() - t0:.1f}s")
    assert r.returncode == 0, r.stderr
    vms = {v.name: v for v in corral.client.list_vms(labels=[f"{FLEET_LABEL}=demo"])}
    assert sorted(vms) == ["web-1", "web-2", "web-3"]
    assert all(v.state in ("running", "starting") for v in vms.values())
    assert vms["web-1"].spec.labels == {"env": "dev", "role": "web", FLEET_LABEL: "demo"}
    assert vms["web-1"].spec.memory == 128

    # Applying again changes nothing.
    r = corral.cli("diff", "-f", str(fleet), "--exit-code")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 to create, 0 to change, 0 to delete, 3 unchanged" in r.stdout
    r = corral.cli("apply", "-f", str(fleet), "--yes")
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stdout + r.stderr
    events_before = len(corral.client.events())

    # Edit: a label on all, web-3 gone (count 2), web-2 with more memory.
    fleet.write_text(EDITED)
    r = corral.cli("diff", "-f", str(fleet), "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    acts = {(a["action"], a["name"]): a for a in plan["actions"]}
    assert sorted(acts) == [("change", "web-1"), ("change", "web-2")]
    assert [f["field"] for f in acts[("change", "web-1")]["fields"]] == ["labels"]
    assert not acts[("change", "web-1")]["restart"]
    w2 = acts[("change", "web-2")]
    assert [(f["field"], f["old"], f["new"]) for f in w2["fields"]][1] == ("memory", 128, 192)
    assert w2["restart"] and plan["not_declared"] == ["web-3"]
    r = corral.cli("diff", "-f", str(fleet), "--prune")
    assert "- delete web-3" in r.stdout and "memory: 128M -> 192M (restart needed)" in r.stdout, r.stdout
    assert "labels: env=dev,role=web -> env=prod,role=web" in r.stdout
    assert "outsider" not in r.stdout
    pid2 = corral.client.get_vm("web-2").pid
    pid1 = corral.client.get_vm("web-1").pid

    r = corral.cli("apply", "-f", str(fleet), "--prune", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    vms = {v.name: v for v in corral.client.list_vms(labels=[f"{FLEET_LABEL}=demo"])}
    assert sorted(vms) == ["web-1", "web-2"]
    assert vms["web-1"].spec.labels["env"] == "prod" and vms["web-1"].pid == pid1  # not restarted
    assert vms["web-2"].spec.memory == 192 and vms["web-2"].pid != pid2  # restarted
    assert vms["web-2"].state in ("running", "starting")
    types = [e.type for e in corral.client.events(after=0)][events_before:]
    assert types.count("update") == 2 and types.count("delete") == 1, types
    out = corral.client.get_vm("outsider")
    assert out.pid == outsider_pid and out.spec.labels == {"role": "web"}

    r = corral.cli("diff", "-f", str(fleet), "--prune", "--exit-code")
    assert r.returncode == 0 and "0 to create, 0 to change, 0 to delete, 2 unchanged" in r.stdout, r.stdout

    # A bad file names its line; a name taken outside the fleet is a conflict and nothing is done.
    (tmp_path / "bad.yaml").write_text("fleet: demo\nvms:\n  web-1:\n    memory: lots\n")
    r = corral.cli("diff", "-f", str(tmp_path / "bad.yaml"))
    assert r.returncode == 2 and "bad.yaml:4: web-1: memory:" in r.stderr, r.stderr
    (tmp_path / "steal.yaml").write_text("fleet: demo\nvms:\n  outsider: {memory: 128M}\n")
    r = corral.cli("apply", "-f", str(tmp_path / "steal.yaml"), "--prune", "--yes")
    assert r.returncode == 4 and "conflict" in r.stdout, r.stdout + r.stderr
    assert sorted(v.name for v in corral.client.list_vms()) == ["outsider", "web-1", "web-2"]
