"""API requests are counted by route template (never the raw path: bounded labels) and status; journaled operations
and failed QMP commands are counted too."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from prometheus_client.parser import text_string_to_metric_families

from corral.api.app import create_app
from corral.engine import monitor as monitor_mod
from corral.engine.monitor import Monitor, MonitorError
from corral.metrics import registry
from corral.metrics.http import MetricsMiddleware
from corral.operations.journal import Journal
from corral.store.db import Store


def requests(method: str, route: str, status: str) -> float:
    v = registry.REGISTRY.get_sample_value("corral_api_requests_total",
                                           {"method": method, "route": route, "status": status})
    return v or 0.0


def app() -> FastAPI:
    a = FastAPI()
    a.add_middleware(MetricsMiddleware)

    @a.get("/v1/vms/{name}")
    async def get_vm(name: str) -> dict[str, str]:
        if name == "missing":
            raise HTTPException(404)
        return {"name": name}

    return a


async def get(a: FastAPI, *paths: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://corral") as c:
        return [await c.get(p) for p in paths]


def test_requests_are_counted_by_route_template_and_status() -> None:
    before_ok = requests("GET", "/v1/vms/{name}", "200")
    before_404 = requests("GET", "/v1/vms/{name}", "404")
    before_unmatched = requests("GET", "unmatched", "404")
    answers = asyncio.run(get(app(), "/v1/vms/web", "/v1/vms/db", "/v1/vms/a-b-c", "/v1/vms/missing",
                              "/no/such/path/xyz"))
    assert [r.status_code for r in answers] == [200, 200, 200, 404, 404]
    assert requests("GET", "/v1/vms/{name}", "200") == before_ok + 3
    assert requests("GET", "/v1/vms/{name}", "404") == before_404 + 1
    assert requests("GET", "unmatched", "404") == before_unmatched + 1
    routes = {s.labels["route"] for m in registry.REGISTRY.collect() if m.name == "corral_api_requests"
              for s in m.samples}
    assert not any(r.startswith("/v1/vms/") and "{" not in r for r in routes), routes  # no raw path
    assert "/no/such/path/xyz" not in routes
    count = registry.REGISTRY.get_sample_value("corral_api_request_duration_seconds_count",
                                               {"method": "GET", "route": "/v1/vms/{name}"})
    assert count is not None and count >= 4


def test_get_metrics_on_the_api_app_counts_itself_and_parses() -> None:
    before = requests("GET", "/metrics", "200")
    _, r = asyncio.run(get(create_app(None), "/metrics", "/metrics"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    seen = [s for s in families["corral_api_requests"].samples
            if s.labels == {"method": "GET", "route": "/metrics", "status": "200"}]
    assert seen and seen[0].value == before + 1  # the first scrape, counted once its response ended
    assert requests("GET", "/metrics", "200") == before + 2


def test_routes_of_included_routers_are_counted_with_their_prefix() -> None:
    before = requests("GET", "/v1/status", "500")

    async def status() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(None)), base_url="http://c") as c:
            with pytest.raises(AttributeError):  # no services behind this app: the route fails
                await c.get("/v1/status")

    asyncio.run(status())
    assert requests("GET", "/v1/status", "500") == before + 1


def test_journaled_operations_are_observed_by_kind_and_result(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        journal = Journal(store)

        def count(result: str) -> float:
            return registry.REGISTRY.get_sample_value("corral_operation_duration_seconds_count",
                                                      {"operation": "snapshot", "result": result}) or 0.0

        ok, err = count("ok"), count("error")
        with journal.run("snapshot", "web"):
            pass
        with pytest.raises(RuntimeError), journal.run("snapshot", "web"):
            raise RuntimeError("boom")
        assert (count("ok"), count("error")) == (ok + 1, err + 1)
    finally:
        store.close()


def test_a_qmp_command_without_answer_counts_as_a_qmp_error(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    class Hung:
        async def execute(self, cmd: str, args: object = None) -> None:
            await asyncio.sleep(60)

    monkeypatch.setattr(monitor_mod, "error_hook", registry.qmp_error)
    m = Monitor("vm", tmp_path / "qmp.sock")
    m._qmp = Hung()  # type: ignore[assignment]
    labels = {"command": "query-status", "error": "NoAnswer"}
    before = registry.REGISTRY.get_sample_value("corral_qmp_errors_total", labels) or 0.0
    with pytest.raises(MonitorError):
        asyncio.run(m.execute("query-status", timeout=0.01))
    assert registry.REGISTRY.get_sample_value("corral_qmp_errors_total", labels) == before + 1
