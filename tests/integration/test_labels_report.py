"""Ownership, labels, filters, reports and the event log on real VMs (launched with --no-wait: no guest needed)."""

from __future__ import annotations

import csv
import io
import json
import select
import subprocess
import time

import pytest

from corral.client import Client
from tests.conftest import CORRAL, CorralEnv

pytestmark = pytest.mark.vm


def names(c: CorralEnv, *args: str) -> list[str]:
    r = c.cli("ls", "--json", *args)
    assert r.returncode == 0, r.stderr
    return sorted(v["name"] for v in json.loads(r.stdout))


def test_owners_labels_filters_report_events(corral: CorralEnv) -> None:
    env_ann = dict(corral.env, CORRAL_OWNER="ann")
    r = subprocess.run([CORRAL, "launch", "la", "--no-wait", "--project", "web", "-l", "env=dev", "-l", "team=web",
                        "--description", "front end"], env=env_ann, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = corral.cli("launch", "lb", "--no-wait", "--owner", "bob", "--project", "web", "-l", "env=dev",
                   "-l", "team=db")
    assert r.returncode == 0, r.stderr
    # Two stopped VMs, through the API: one owned by whoever sends the request (the client's user).
    corral.client.create_vm({"name": "lc", "owner": "ann", "project": "data", "labels": {"env": "prod"}})
    with Client(corral.settings.socket, user="dave") as dave:
        dave.create_vm({"name": "ld"})

    shown = json.loads(corral.cli("show", "la", "--json").stdout)["spec"]
    assert (shown["owner"], shown["project"], shown["labels"], shown["description"]) == \
        ("ann", "web", {"env": "dev", "team": "web"}, "front end")
    assert corral.client.get_vm("ld").spec.owner == "dave"
    assert corral.client.events(vm="ld", type="create")[0].actor == "dave"
    assert corral.client.get_vm("ld").spec.project == "default"
    text = corral.cli("ls").stdout
    assert "PROJECT" in text and "OWNER" in text and "bob" in text

    # Filters: AND of all of them, same through the CLI and the API.
    assert names(corral) == ["la", "lb", "lc", "ld"]
    assert names(corral, "-l", "env=dev") == ["la", "lb"]
    assert names(corral, "-l", "env=dev", "-l", "team=web") == ["la"]
    assert names(corral, "--owner", "ann") == ["la", "lc"]
    assert names(corral, "--owner", "ann", "--project", "web") == ["la"]
    assert names(corral, "-l", "team") == ["la", "lb"]
    assert names(corral, "-l", "env!=dev") == ["lc", "ld"]
    assert [v.name for v in corral.client.list_vms(labels=["env=dev"], owner="bob")] == ["lb"]
    r = corral.cli("ls", "-l", "bad key=x")
    assert r.returncode == 2 and "label key 'bad key'" in r.stderr
    r = corral.cli("launch", "le", "--no-wait", "-l", "env=a b")
    assert r.returncode == 2 and "the value must be" in r.stderr

    # `corral label` on a running and on a stopped VM.
    r = corral.cli("label", "la", "env=staging", "team-", "corral.dev/tier=front")
    assert r.returncode == 0, r.stderr
    assert corral.client.get_vm("la").spec.labels == {"env": "staging", "corral.dev/tier": "front"}
    assert corral.cli("label", "lc", "owner-team=data").returncode == 0
    assert corral.client.get_vm("lc").spec.labels == {"env": "prod", "owner-team": "data"}
    assert names(corral, "-l", "env=dev") == ["lb"]
    r = corral.cli("label", "la", "Bad Key=1")
    assert r.returncode == 2
    label_events = corral.client.events(vm="la", type="label")
    assert len(label_events) == 1 and label_events[0].actor == corral.client.user

    # Reports: grouped, with totals; JSON and CSV parse.
    rep = json.loads(corral.cli("report", "--format", "json").stdout)
    groups = {g["key"]: [v["name"] for v in g["vms"]] for g in rep["groups"]}
    assert groups == {"ann": ["la", "lc"], "bob": ["lb"], "dave": ["ld"]}
    bob = next(g for g in rep["groups"] if g["key"] == "bob")
    assert bob["totals"]["vms"] == 1 and bob["totals"]["running"] == 1 and bob["totals"]["memory_mib"] == 256
    lb = bob["vms"][0]
    assert lb["running"] and lb["uptime"] > 0 and lb["rss_bytes"] > 0 and lb["last_activity"] >= lb["created_at"]
    assert rep["totals"]["vms"] == 4 and rep["totals"]["running"] == 2
    by_project = json.loads(corral.cli("report", "--by", "project", "--format", "json").stdout)
    assert {g["key"]: g["totals"]["vms"] for g in by_project["groups"]} == {"data": 1, "default": 1, "web": 2}
    rows = list(csv.DictReader(io.StringIO(corral.cli("report", "--by", "label:env", "--format", "csv").stdout)))
    assert {r["name"]: r["group"] for r in rows} == {"la": "staging", "lb": "dev", "lc": "prod", "ld": ""}
    assert {r["name"]: r["running"] for r in rows}["lc"] == "false"
    table = corral.cli("report", "--by", "project")
    assert table.returncode == 0 and "web" in table.stdout and "all" in table.stdout
    assert corral.cli("report", "--by", "colour").returncode == 2

    # events --follow in another process sees a stop made by this one, with who did it.
    follow = subprocess.Popen([CORRAL, "events", "--follow", "--json", "--vm", "lb"], env=corral.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)  # let it subscribe
        r = subprocess.run([CORRAL, "stop", "lb"], env=dict(corral.env, CORRAL_OWNER="carl"), capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        seen: list[dict] = []  # type: ignore[type-arg]
        buf = b""
        deadline = time.monotonic() + 60
        assert follow.stdout is not None
        while not any(e["type"] == "state" and e["data"].get("new") == "stopped" for e in seen):
            assert time.monotonic() < deadline, seen
            if select.select([follow.stdout], [], [], 1.0)[0]:
                chunk = follow.stdout.read1(65536)  # type: ignore[attr-defined]
                assert chunk, follow.stderr.read() if follow.stderr else ""
                buf += chunk
                *lines, buf = buf.split(b"\n")
                seen += [json.loads(ln) for ln in lines if ln.strip()]
        stopping = next(e for e in seen if e["data"].get("new") == "stopping")
        assert stopping["actor"] == "carl" and stopping["owner"] == "bob" and stopping["result"] == "ok"
        assert all(e["vm"] == "lb" for e in seen)
    finally:
        follow.kill()
        follow.communicate()

    # A failed operation is recorded once, with who, what and the error.
    r = subprocess.run([CORRAL, "start", "la"], env=env_ann, capture_output=True, text=True, timeout=60)
    assert r.returncode == 4
    failed = json.loads(corral.cli("events", "--errors", "--vm", "la", "--json").stdout)
    assert len(failed) == 1
    f = failed[0]
    assert (f["type"], f["actor"], f["owner"], f["result"]) == ("start", "ann", "ann", "error")
    assert "while it is running" in f["data"]["error"] and f["data"]["status"] == 409
    r = corral.cli("launch", "la", "--no-wait")  # the name is taken: a failed create
    assert r.returncode == 4
    assert [e.type for e in corral.client.events(vm="la", result="error")] == ["start", "create"]

    # Queries: by owner, type and time.
    assert {e.vm for e in corral.client.events(owner="bob")} == {"lb"}
    assert corral.client.events(since="1h") and not corral.client.events(since=str(time.time() + 60))
    listed = corral.cli("events", "--type", "label", "--since", "10m")
    assert listed.returncode == 0 and "labels:" in listed.stdout
