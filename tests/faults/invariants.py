"""What must hold after any crash of corrald, checked the same way after every fault the suite injects.

After the daemon is started again:
- every VM is listed, in a state that matches its QEMU (running or paused: a QEMU runs; at rest: none does);
- every running VM's guest is usable: it runs a command that writes a file and syncs it (a guest whose file
  systems were left frozen fails here: its writes hang);
- no lock is stale: a new operation on each VM succeeds (a pause and a resume);
- the journal is empty: each interrupted operation was finished or rolled back, with an event saying which;
- the store and the files agree: every layer, snapshot state and extra disk the store names exists; no file in
  ``layers/``, no backup target in a VM's directory and no template work directory is left that nothing names;
  every VM directory belongs to a VM; the default backup repository holds no chunk that no backup names; no VM
  shares a folder (in its QEMU's layout.json) that its spec, and so `corral mount ls`, does not show;
- ``qemu-img check`` is clean on every image the store names (checked with the VMs stopped).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from corral import paths as P
from corral.backup.repo import Repository
from corral.mounts import host as mount_host
from corral.store.db import Store
from tests.conftest import CorralEnv, ok, show, until


@dataclass
class Verdict:
    """What one check after a fault found: the outcomes of the interrupted operations, as their events said."""

    outcomes: list[str]


def wait_dead(c: CorralEnv, timeout: float = 60) -> None:
    until(lambda: c.daemon_pid() is None, timeout, "corrald to die at the fault point")
    for cl in c._clients:  # noqa: SLF001 - their connections went with the daemon
        cl.close()
    c._clients.clear()  # noqa: SLF001


def store_files(c: CorralEnv) -> tuple[set[str], list[str]]:
    """(every file the store names, the image files among them qemu-img should check)."""
    s = Store(c.settings.database)
    try:
        layers = [layer.path for layer in s.list_layers()]
        states = [x.state_file for x in s.list_snapshots() if x.state_file]
        disks = [d.file for d in s.list_disks()]
        assert not s.list_operations(), f"operations left in the journal: {s.list_operations()}"
    finally:
        s.close()
    return set(layers) | set(states) | set(disks), layers + disks


def check_after_restart(c: CorralEnv, interrupted: str | None = None) -> Verdict:
    """Start the daemon again and check everything in the module docstring. ``interrupted``: the event type of the
    operation that was killed (its recovery event must say finished or rolled back)."""
    c.start_daemon()
    vms = json.loads(ok(c, "ls", "--all", "--json"))
    qemus = c.qemu_pids()
    for v in vms:
        state = v["state"]
        assert state != "unknown", v
        if state in ("running", "paused", "starting"):
            assert v["name"] in qemus, f"{v['name']} is {state} but no QEMU runs"
        elif state in ("stopped", "crashed", "suspended"):
            assert v["name"] not in qemus, f"{v['name']} is {state} but its QEMU runs"
    for v in vms:
        if v["state"] in ("running", "starting"):
            until(lambda n=v["name"]: show(c, n)["state"] == "running", 60, f"{v['name']} running")
            r = c.cli("exec", v["name"], "--timeout", "60", "--", "sh", "-c",
                      "echo after-crash > /root/probe && sync && cat /root/probe", timeout=120)
            assert r.returncode == 0 and "after-crash" in r.stdout, (v["name"], r.stdout, r.stderr)
        if v["state"] == "paused":
            ok(c, "resume", v["name"])
            until(lambda n=v["name"]: show(c, n)["agent_ready"], 60, f"{v['name']}'s guest agent after resume")
            r = c.cli("exec", v["name"], "--timeout", "60", "--", "sh", "-c", "sync; echo resumed", timeout=120)
            assert r.returncode == 0 and "resumed" in r.stdout, (v["name"], r.stdout, r.stderr)
        if show(c, v["name"])["state"] == "running":  # no stale lock: an operation goes through
            ok(c, "pause", v["name"])
            ok(c, "resume", v["name"])
    outcomes: list[str] = []
    if interrupted is not None:
        evs = [e for e in c.client.events() if e.type == interrupted and "outcome" in e.data]
        assert evs, f"no recovery event of type {interrupted}: {[e.message for e in c.client.events()][-15:]}"
        outcomes = [str(e.data["outcome"]) for e in evs]
        assert set(outcomes) <= {"finished", "rolled back"}, outcomes
    named, images = store_files(c)
    for f in named:
        assert Path(f).exists(), f"the store names {f}, which is missing"
    layers_dir = c.home / P.LAYERS_DIR
    if layers_dir.is_dir():
        orphans = [str(f) for f in layers_dir.iterdir() if str(f) not in named]
        assert not orphans, f"files in layers/ that nothing names: {orphans}"
    specs = {v["name"]: v["spec"] for v in vms}  # from the listing above: no CLI call per VM
    vms_dir = c.settings.vms_dir
    if vms_dir.is_dir():
        for d in vms_dir.iterdir():
            assert d.name in specs, f"{d} belongs to no VM"
            assert not list(d.glob("backup-*.qcow2")), f"backup targets left in {d}"
            shared = {m["guest"] for m in specs[d.name].get("mounts", [])}
            for slot, m in mount_host.read_layout(P.VMPaths(d)).items():  # no folder shared that `mount ls` hides
                assert m.guest in shared, f"{d.name} shares {m.host} (slot {slot}) but its spec has no such mount"
    repo = c.home / P.BACKUPS_DIR
    if (repo / "lock").exists():
        garbage = Repository.open(repo).unreferenced()
        assert not garbage, f"{len(garbage)} chunk(s) in the backup repository that no backup names"
    templates = c.home / P.TEMPLATES_DIR
    if templates.is_dir():
        assert not list(templates.glob(".*.partial")), "a template's work directory was left"
    for v in vms:  # images are checked at rest: a running QEMU's metadata may be half written in its cache
        if show(c, v["name"])["state"] in ("running", "paused"):
            ok(c, "stop", v["name"], "--timeout", "20")
    for img in images:
        r = subprocess.run(["qemu-img", "check", "-f", "qcow2", img], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"qemu-img check {img}: {r.stdout}{r.stderr}"
    return Verdict(outcomes)


def run_killed(c: CorralEnv, *args: str, timeout: float = 300) -> None:
    """Run a CLI command during which corrald dies; wait until it is dead."""
    t0 = time.monotonic()
    r = c.cli(*args, timeout=timeout)
    assert r.returncode != 0, f"{args} succeeded: the fault point was not reached ({r.stdout})"
    wait_dead(c, max(10.0, timeout - (time.monotonic() - t0)))
