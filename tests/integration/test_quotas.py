"""Quotas refuse the launch that would exceed them (exit 5, one line, nothing created); `corral capacity` counts
the running VMs; CORRAL_CPU_OVERCOMMIT refuses a start beyond the host's threads x ratio. VMs are made through the
client without starting them, or launched with --no-wait: no guest needs to boot."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from corral.client import APIError, Client
from tests.conftest import CorralEnv, ok

pytestmark = pytest.mark.vm


def vm_names(c: CorralEnv) -> list[str]:
    r = c.cli("ls", "--json")
    assert r.returncode == 0, r.stderr
    return sorted(v["name"] for v in json.loads(r.stdout))


def refused(c: CorralEnv, name: str, message: str, *args: str) -> None:
    before = vm_names(c)
    r = c.cli("launch", name, "--no-wait", *args)
    assert r.returncode == 5, (r.returncode, r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert vm_names(c) == before
    assert not (c.settings.vms_dir / name).exists()


def test_each_quota_blocks_the_launch_that_exceeds_it(corral: CorralEnv) -> None:
    cl = corral.client
    ok(corral, "quota", "set", "--project", "pv", "--vms", "2")
    cl.create_vm({"name": "v1", "project": "pv"})
    cl.create_vm({"name": "v2", "project": "pv"})
    refused(corral, "v3", "project 'pv' would use 3 VMs, 1 over its limit of 2 VMs", "--project", "pv")

    ok(corral, "quota", "set", "--project", "pc", "--vcpus", "3")
    cl.create_vm({"name": "c1", "project": "pc", "vcpus": 2})
    refused(corral, "c2", "project 'pc' would use 4 vCPUs, 1 over its limit of 3 vCPUs", "--project", "pc",
            "--cpus", "2")

    ok(corral, "quota", "set", "--project", "pm", "--memory", "512M")
    cl.create_vm({"name": "m1", "project": "pm", "memory": 256})
    refused(corral, "m2", "project 'pm' would use 640M of memory, 128M over its limit of 512M of memory",
            "--project", "pm", "--memory", "384M")

    ok(corral, "quota", "set", "--project", "pd", "--disk", "3G")
    refused(corral, "d1", "project 'pd' would use 4G of disk, 1G over its limit of 3G of disk", "--project", "pd",
            "--disk", "4G")

    ok(corral, "quota", "set", "--owner", "ann", "--vms", "1")
    cl.create_vm({"name": "o1", "owner": "ann", "project": "x1"})
    refused(corral, "o2", "owner 'ann' would use 2 VMs, 1 over its limit of 1 VM", "--owner", "ann",
            "--project", "x2")

    # Listed with what each uses; every defined VM counts though none runs.
    quotas = {(q["scope"], q["name"]): q for q in json.loads(ok(corral, "quota", "ls", "--json"))}
    assert quotas[("project", "pc")]["vcpus"] == 3 and quotas[("project", "pc")]["used"]["vcpus"] == 2
    assert quotas[("project", "pm")]["memory"] == 512 and quotas[("project", "pm")]["used"]["memory"] == 256
    assert quotas[("project", "pd")]["disk"] == 3 << 30
    assert quotas[("owner", "ann")]["used"]["vms"] == 1
    assert "pv" in ok(corral, "quota", "ls")

    # A quota lowered below what the project holds refuses a start too.
    ok(corral, "quota", "set", "--project", "pv", "--vms", "1")
    r = corral.cli("start", "v1")
    assert r.returncode == 5 and "project 'pv' would use 2 VMs, 1 over its limit of 1 VM" in r.stderr, r.stderr
    assert cl.get_vm("v1").state == "stopped"

    # Removed: the launch goes through.
    ok(corral, "quota", "rm", "--project", "pc")
    r = corral.cli("quota", "rm", "--project", "pc")
    assert r.returncode == 3, r.stderr
    ok(corral, "launch", "c2", "--no-wait", "--project", "pc", "--cpus", "2")
    assert "c2" in vm_names(corral)

    # Capacity counts the running VM (and every defined one).
    cap = json.loads(ok(corral, "capacity", "--json"))
    assert cap["running"] == ["c2"]
    assert cap["allocated_running"]["vcpus"] == 2 and cap["allocated_running"]["memory"] == 256
    assert cap["allocated_defined"]["vcpus"] == 2 + 1 + 1 + 1 + 1 + 2  # v1 v2 c1(2) m1 o1 c2(2)
    assert cap["vms"] == 6
    assert cap["host"]["vcpus"] >= 1 and cap["host"]["memory"] > 0 and cap["host"]["disk"] > 0
    assert cap["available"]["vcpus"] == cap["limit"]["vcpus"] - 2
    assert cap["used_memory"] > 0 and cap["used_disk"] > 0
    text = ok(corral, "capacity")
    assert "vcpus" in text and "1 of 6 VMs running" in text
    ok(corral, "kill", "c2")


def test_concurrent_creates_cannot_pass_a_quota_together(corral: CorralEnv) -> None:
    ok(corral, "quota", "set", "--project", "race", "--vms", "2")

    def create(i: int) -> str:
        with Client(corral.settings.socket) as c:
            try:
                c.create_vm({"name": f"r{i}", "project": "race"})
                return "ok"
            except APIError as exc:
                assert exc.error == "CapacityError", exc.message
                return "refused"

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(create, range(6)))
    assert sorted(results) == ["ok"] * 2 + ["refused"] * 4
    assert len([n for n in vm_names(corral) if n.startswith("r")]) == 2
    assert len(list(corral.settings.vms_dir.iterdir())) == 2


def test_cpu_overcommit_refuses_a_start_beyond_the_limit(corral_home: CorralEnv) -> None:
    threads = os.cpu_count() or 1
    corral_home.env["CORRAL_CPU_OVERCOMMIT"] = str(1 / threads)  # the running VMs may have 1 vCPU together
    corral_home.start_daemon()
    corral_home.client.build_image("tiny")
    cap = json.loads(ok(corral_home, "capacity", "--json"))
    assert cap["limit"]["vcpus"] == 1
    ok(corral_home, "launch", "a", "--no-wait")
    refused(corral_home, "b", "cannot start 'b': it needs 1 vCPUs but only 0 of the 1 this host allows")
    corral_home.client.create_vm({"name": "c"})
    r = corral_home.cli("start", "c")
    assert r.returncode == 5 and "CORRAL_CPU_OVERCOMMIT" in r.stderr, r.stderr
    ok(corral_home, "kill", "a")
    ok(corral_home, "start", "c")
    ok(corral_home, "kill", "c")
