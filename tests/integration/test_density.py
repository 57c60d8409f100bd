"""Density: 50 `tiny` VMs of 128 MiB running at once on this host, each launched from one template, every one
answering `exec`, each costing less than half the host memory (PSS) of the cold-booted VM they were captured from."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corral.client import Client
from corral.vm.spec import VMSpec
from tests.conftest import CorralEnv

pytestmark = [pytest.mark.vm, pytest.mark.slow]

COUNT = 50


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Pss line")


@pytest.mark.timeout(900)
def test_fifty_template_vms_at_once_all_answer_exec(corral_home: CorralEnv) -> None:
    c = corral_home
    c.env["CORRAL_CPU_OVERCOMMIT"] = "32"  # 50 vCPUs on 2 host threads (the default allows 8)
    c.start_daemon()
    c.client.build_image("tiny")
    assert c.cli("launch", "src", "--memory", "128M").returncode == 0
    assert c.cli("template", "create", "t", "--from", "src").returncode == 0
    names = [f"d{i:02d}" for i in range(COUNT)]

    def launch(name: str) -> None:
        with Client(c.settings.socket) as client:
            client.launch_from_template("t", VMSpec(name=name))
            client.wait_ready(name, timeout=600)

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(launch, names))
    launched = time.monotonic() - t0

    vms = {v.name: v for v in c.client.list_vms()}
    assert all(vms[n].state == "running" and vms[n].agent_ready for n in names)
    answered = 0
    for n in names:
        code, out, err = c.client.exec(n, ["hostname"])
        assert (code, out.decode().strip()) == (0, n), err
        answered += 1
    assert answered == COUNT
    assert len(set(c.qemu_pids()) & set(names)) == COUNT, "50 QEMU processes of ours are alive"

    src_pss = pss_mib(vms["src"].pid or 0)
    per_vm = statistics.median(pss_mib(vms[n].pid or 0) for n in names)
    print(f"{COUNT} template VMs ready in {launched:.0f}s; PSS per VM {per_vm:.0f} MiB, cold source {src_pss:.0f} MiB")
    assert per_vm < 0.5 * src_pss, (per_vm, src_pss)
