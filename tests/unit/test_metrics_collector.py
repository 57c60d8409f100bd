"""GET /metrics' per-VM and per-host figures: the collector renders the sampler's cache, and prometheus_client's own
parser reads back every family with the values and labels put in; a visibility filter leaves VMs out."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from corral.metrics.collector import STATES, Visible, VMCollector, VMScrape
from corral.metrics.route import render
from corral.metrics.samples import Cache, DiskSample, HostSample, NicSample, QuotaSample, VMSample

HOST = "h1"


def cache() -> Cache:
    web = VMSample(vm="web", project="shop", owner="ann", state="running", vcpus=2, memory_bytes=512 << 20, pid=42,
                   cpu_seconds=12.5, rss_bytes=300 << 20, balloon_bytes=400 << 20,
                   disks=(DiskSample("root", 1000, 2000, 10, 20), DiskSample("data", 5, 6, 1, 2)),
                   nics=(NicSample("eth0", "guest-agent", 111, 222), NicSample("crtabc", "tap", 333, 444)))
    db = VMSample(vm="db", project="back", owner="bob", state="stopped", vcpus=1, memory_bytes=256 << 20)
    host = HostSample(vcpus=8, vcpus_limit=32, memory_bytes=16 << 30, memory_limit_bytes=16 << 30, disk_bytes=1 << 40,
                      disk_free_bytes=1 << 39, vcpus_running=2, vcpus_defined=3, memory_running_bytes=512 << 20,
                      memory_defined_bytes=768 << 20, disk_running_bytes=4 << 30, disk_defined_bytes=8 << 30,
                      memory_used_bytes=300 << 20, disk_used_bytes=1 << 30)
    quotas = (QuotaSample("project", "shop", "vcpus", 8, 2), QuotaSample("project", "empty", "vms", 3, 0),
              QuotaSample("owner", "ann", "memory_bytes", 1 << 30, 512 << 20))
    return Cache(vms={"web": web, "db": db}, host=host, quotas=quotas, at=1.0)


def scrape(visible: object = None) -> dict[str, list[Sample]]:
    c = cache()
    text = render(VMScrape(VMCollector(lambda: c, HOST, daemon_starts=lambda: 3)), visible)  # type: ignore[arg-type]
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def value(families: dict[str, list[Sample]], family: str, sample: str | None = None, **labels: str) -> float:
    found = [s.value for s in families[family] if s.name == (sample or family)
             and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (family, labels, families.get(family))
    return found[0]


def test_per_vm_figures_are_read_back_with_their_labels() -> None:
    f = scrape()
    web = {"vm": "web", "project": "shop", "owner": "ann", "host": HOST}
    assert value(f, "corral_vm_cpu_seconds", "corral_vm_cpu_seconds_total", **web) == 12.5
    assert value(f, "corral_vm_memory_rss_bytes", **web) == 300 << 20
    assert value(f, "corral_vm_balloon_bytes", **web) == 400 << 20
    assert value(f, "corral_vm_vcpus", **web) == 2
    assert value(f, "corral_vm_memory_bytes", **web) == 512 << 20
    assert value(f, "corral_vm_disk_written_bytes", "corral_vm_disk_written_bytes_total", drive="root", **web) == 2000
    assert value(f, "corral_vm_disk_read_bytes", "corral_vm_disk_read_bytes_total", drive="data", **web) == 5
    assert value(f, "corral_vm_disk_reads", "corral_vm_disk_reads_total", drive="root", **web) == 10
    assert value(f, "corral_vm_disk_writes", "corral_vm_disk_writes_total", drive="data", **web) == 2
    assert value(f, "corral_vm_network_receive_bytes", "corral_vm_network_receive_bytes_total", device="eth0",
                 source="guest-agent", **web) == 111
    assert value(f, "corral_vm_network_transmit_bytes", "corral_vm_network_transmit_bytes_total", device="crtabc",
                 source="tap", **web) == 444


def test_state_is_one_series_per_state_with_one_set() -> None:
    f = scrape()
    for vm, current in (("web", "running"), ("db", "stopped")):
        series = {s.labels["state"]: s.value for s in f["corral_vm_state"] if s.labels["vm"] == vm}
        assert set(series) == set(STATES)
        assert series[current] == 1 and sum(series.values()) == 1


def test_a_stopped_vm_has_no_runtime_figures() -> None:
    f = scrape()
    assert all(s.labels["vm"] != "db" for s in f["corral_vm_cpu_seconds"])
    assert all(s.labels["vm"] != "db" for s in f["corral_vm_memory_rss_bytes"])
    assert value(f, "corral_vm_vcpus", vm="db", project="back") == 1


def test_host_allocation_and_capacity() -> None:
    f = scrape()
    assert value(f, "corral_host_vcpus", host=HOST) == 8
    assert value(f, "corral_host_vcpus_limit", host=HOST) == 32
    assert value(f, "corral_host_vcpus_allocated", host=HOST, scope="running") == 2
    assert value(f, "corral_host_vcpus_allocated", host=HOST, scope="defined") == 3
    assert value(f, "corral_host_memory_allocated_bytes", host=HOST, scope="defined") == 768 << 20
    assert value(f, "corral_host_memory_limit_bytes", host=HOST) == 16 << 30
    assert value(f, "corral_daemon_starts", "corral_daemon_starts_total", host=HOST) == 3


def test_quotas_are_shown_with_their_project() -> None:
    f = scrape()
    assert value(f, "corral_quota_limit", scope="project", name="shop", resource="vcpus") == 8
    assert value(f, "corral_quota_used", scope="project", name="shop", resource="vcpus") == 2
    assert value(f, "corral_quota_used", scope="owner", name="ann", resource="memory_bytes") == 512 << 20
    seen = scrape(lambda project: project in ("shop", "empty"))
    assert {s.labels["name"] for s in seen["corral_quota_limit"]} == {"shop", "empty"}  # owners' only to all-seeing


def test_the_daemon_counters_are_in_the_same_scrape() -> None:
    f = scrape()
    for family in ("corral_api_requests", "corral_qmp_errors", "corral_operation_duration_seconds"):
        assert family in f
    assert value(f, "corral_migrations", "corral_migrations_total", result="ok") == 0


def test_visible_leaves_out_the_vms_of_other_projects() -> None:
    f = scrape(lambda project: project == "back")
    assert {s.labels["vm"] for s in f["corral_vm_state"]} == {"db"}
    assert not f["corral_vm_cpu_seconds"]
    assert value(f, "corral_host_vcpus", host=HOST) == 8  # the host's figures are not a project's


def test_no_cache_yet_renders_the_vm_families_empty() -> None:
    text = render(VMScrape(VMCollector(Cache, HOST))).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["corral_vm_state"].samples == []
    assert "corral_host_vcpus" not in families


def parsed(text: str) -> dict[str, tuple[str, str, list[tuple[str, list[tuple[str, str]], float]]]]:
    return {f.name: (f.type, f.documentation, sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples))
            for f in text_string_to_metric_families(text)}


def test_the_pre_rendered_text_is_what_prometheus_client_renders_for_the_collector() -> None:
    c = cache()
    collector = VMCollector(lambda: c, HOST, daemon_starts=lambda: 3)
    scrape = VMScrape(collector)
    only_shop: Visible = lambda project: project == "shop"  # noqa: E731
    only_empty: Visible = lambda project: project == "empty"  # noqa: E731
    for visible in (None, only_shop, only_empty, lambda project: False):
        direct = generate_latest(collector.filtered(visible)).decode()
        assert parsed(scrape.text(visible)) == parsed(direct)
    assert scrape.refresh() is scrape.refresh()  # rendered once per cache


def test_a_new_cache_is_rendered_again() -> None:
    caches = [cache(), Cache()]
    scrape = VMScrape(VMCollector(lambda: caches[0], HOST))
    assert 'vm="web"' in scrape.text()
    caches[0] = caches[1]
    assert 'vm="web"' not in scrape.text()


def test_the_route_filters_by_the_requesters_projects() -> None:
    """A viewer of project ``back`` over TCP sees only back's VMs; an admin and the unix socket's root see all."""
    from starlette.requests import Request

    from corral.auth.principal import LOCAL_ROOT, SCOPE_PRINCIPAL, Principal
    from corral.metrics.route import visibility

    def vms_seen(principal: Principal | None) -> set[str]:
        scope = {"type": "http", "headers": [], **({SCOPE_PRINCIPAL: principal} if principal else {})}
        f = scrape(visibility(Request(scope)))
        return {s.labels["vm"] for s in f["corral_vm_state"]}

    assert vms_seen(Principal("vic", "viewer", "back")) == {"db"}
    assert vms_seen(Principal("ops", "operator", "nowhere")) == set()
    assert vms_seen(Principal("ada", "admin", None)) == {"web", "db"}
    assert vms_seen(None) == vms_seen(LOCAL_ROOT) == {"web", "db"}
