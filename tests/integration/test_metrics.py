"""GET /metrics on a real daemon with one real VM: prometheus_client's parser reads the scrape, and the VM's CPU
seconds, RSS and disk writes (after the guest wrote to its disk) are there with its labels, its state is running,
and the API request counter counted the calls made."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import CorralEnv, guest, ok, start_daemon_with

pytestmark = pytest.mark.vm

VM = "met"


def scrape(c: CorralEnv) -> dict[str, list[Sample]]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(c.settings.socket)), base_url="http://corral",
                      timeout=10) as http:
        r = http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def one(families: dict[str, list[Sample]], sample: str, **labels: str) -> float | None:
    family = sample.removesuffix("_total")
    found = [s.value for s in families.get(family, []) if s.name == sample
             and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, (sample, labels, found)
    return found[0] if found else None


def test_metrics_of_a_running_vm(corral_home: CorralEnv) -> None:
    c = start_daemon_with(corral_home, {"CORRAL_METRICS_INTERVAL": "0.3"})
    ok(c, "launch", VM, "--memory", "256M", "--project", "mproj")
    guest(c, VM, "dd if=/dev/urandom of=/root/fill bs=64k count=32 2>/dev/null && sync")
    vm = {"vm": VM, "project": "mproj", "host": socket.gethostname()}

    deadline = time.monotonic() + 30
    scrapes = 0
    while True:  # the sampler's next pass (0.3 s) sees the write
        f = scrape(c)
        scrapes += 1
        written = one(f, "corral_vm_disk_written_bytes_total", drive="root", **vm)
        if written is not None and written >= 32 * 64 * 1024 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(f"\n[metrics] after {scrapes} scrapes: root disk written {written} bytes")
    assert written is not None and written >= 32 * 64 * 1024, f["corral_vm_disk_written_bytes"]
    assert (one(f, "corral_vm_cpu_seconds_total", **vm) or 0) > 0
    assert (one(f, "corral_vm_memory_rss_bytes", **vm) or 0) > 0
    assert one(f, "corral_vm_state", state="running", **vm) == 1
    assert one(f, "corral_vm_state", state="stopped", **vm) == 0
    assert one(f, "corral_vm_vcpus", **vm) == 1
    owner = next(s.labels["owner"] for s in f["corral_vm_state"] if s.labels["vm"] == VM)
    assert owner  # the VM's owner: the user who launched it
    assert (one(f, "corral_host_vcpus", host=vm["host"]) or 0) >= 1
    assert one(f, "corral_host_vcpus_allocated", host=vm["host"], scope="running") == 1
    assert one(f, "corral_daemon_starts_total", host=vm["host"]) == 1

    # The API's own counters: the CLI's calls, by route template, and this test's earlier scrapes.
    assert (one(f, "corral_api_requests_total", method="POST", route="/v1/vms", status="201") or 0) == 1
    assert (one(f, "corral_api_requests_total", method="POST", route="/v1/vms/{name}/exec", status="200") or 0) >= 1
    assert (one(f, "corral_api_requests_total", method="GET", route="/metrics", status="200") or 0) == scrapes - 1
    again = scrape(c)  # each scrape is counted once its response has ended
    assert one(again, "corral_api_requests_total", method="GET", route="/metrics", status="200") == scrapes
    assert not any(VM in s.labels.get("route", "") for s in f["corral_api_requests"])  # templates, not paths
