"""/v1/status, /v1/events (queried and streamed) and /v1/report: the daemon and its fleet as a whole."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from corral import __version__
from corral.api.deps import Services, services
from corral.api.models import MAX_INT64, DaemonStatus, EventInfo, Report
from corral.api.routes.vms import scoped_project, select
from corral.auth.policy import visible
from corral.auth.principal import Principal, principal_of
from corral.errors import CorralError, InvalidInput
from corral.idle.policy import IDLE_REASON
from corral.store.db import EventQuery, EventRecord
from corral.vm import report as rep
from corral.vm.events import parse_since
from corral.vm.states import VMState

HEARTBEAT = 15.0  # an empty line this often on an idle stream, so a gone reader is noticed

router = APIRouter(tags=["daemon"])
Svc = Annotated[Services, Depends(services)]


@lru_cache(maxsize=4)
def qemu_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return out.splitlines()[0] if out else "unknown"


@router.get("/status", response_model=DaemonStatus)
async def status(svc: Svc, request: Request) -> DaemonStatus:
    accel = await svc.vms.accelerator()
    return DaemonStatus(
        version=__version__, pid=os.getpid(), home=str(svc.settings.home), socket=str(svc.settings.socket),
        accel=accel.name if accel else None,
        accel_reason=accel.reason if accel else "not probed yet: probed when the first VM starts",
        qemu=qemu_version(svc.settings.qemu_binary),
        vms=dict(Counter(r.state.value for r in svc.vms.list() if visible(principal_of(request), r.spec.project))),
    )


def event_query(
    vm: Annotated[str | None, Query(description="only this VM's events")] = None,
    owner: Annotated[str | None, Query(description="only events of VMs this user owned")] = None,
    actor: Annotated[str | None, Query(description="only what this user did (\"corrald\": the daemon itself)")]
    = None,
    type: Annotated[str | None, Query(description="only this type: state, create, start, label, ...")] = None,
    result: Annotated[str | None, Query(description="ok or error")] = None,
    since: Annotated[str | None, Query(description="a duration ago (10m, 2h), an ISO time or a Unix time")] = None,
    after: Annotated[int, Query(ge=0, le=MAX_INT64, description="only events after this id")] = 0,
) -> EventQuery:
    try:
        ts = parse_since(since, time.time()) if since else None
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return EventQuery(vm=vm, owner=owner, actor=actor, type=type, result=result, since=ts, after=after)


Filters = Annotated[EventQuery, Depends(event_query)]


def _info(e: EventRecord) -> EventInfo:
    return EventInfo(**e.__dict__)


def _event_filter(svc: Services, p: Principal) -> Callable[[EventRecord], bool]:
    """Which events ``p`` sees: all (a principal of every project), else those of the VMs of its project (as they
    are now: the events of a deleted VM, and the daemon's own, are not shown)."""
    if p.project is None:
        return lambda e: True
    cache: dict[str, bool] = {}

    def seen(e: EventRecord) -> bool:
        if e.vm is None:
            return False
        if e.vm not in cache:
            rec = svc.store.get_vm(e.vm)
            cache[e.vm] = rec is not None and visible(p, rec.spec.project)
        return cache[e.vm]

    return seen


@router.get("/events", response_model=list[EventInfo])
async def events(svc: Svc, query: Filters, request: Request,
                 limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
                 newest: Annotated[bool, Query(description="the last `limit` events rather than the first")] = False,
                 ) -> list[EventInfo]:
    """Who did what, when, with what result: every operation and state change, oldest first."""
    seen = _event_filter(svc, principal_of(request))
    return [_info(e) for e in svc.store.events(query=query, limit=limit, newest=newest) if seen(e)]


@router.get("/events/stream", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}},
                             "description": "one EventInfo per line; empty lines are heartbeats"}})
async def event_stream(svc: Svc, query: Filters, request: Request) -> StreamingResponse:
    """NDJSON: the events matching the filters as they are recorded (pushed by the VM service, no polling); with
    ``since`` or ``after``, the stored ones first. The stream ends when the daemon stops."""
    seen = _event_filter(svc, principal_of(request))
    sub = svc.vms.events.subscribe(query)  # before reading the backlog: nothing falls in between
    try:
        backlog = svc.store.events(query=query, limit=10_000) if query.since is not None or query.after else []
    except BaseException:
        svc.vms.events.unsubscribe(sub)
        raise

    async def stream() -> AsyncIterator[bytes]:
        try:
            last = 0
            for old in backlog:
                last = old.id
                if seen(old):
                    yield _info(old).model_dump_json().encode() + b"\n"
            while True:
                try:
                    e = await asyncio.wait_for(sub.next(), HEARTBEAT)
                except TimeoutError:
                    yield b"\n"
                    continue
                if e is None:
                    if sub.overflowed:
                        yield b'{"error": "the reader fell behind the event stream: reconnect with after=%d"}\n' \
                            % last
                    return
                if e.id > last:
                    last = e.id
                    if seen(e):
                        yield _info(e).model_dump_json().encode() + b"\n"
        finally:
            svc.vms.events.unsubscribe(sub)

    return StreamingResponse(stream(), media_type="application/x-ndjson")


@router.get("/report", response_model=Report)
async def report(
    svc: Svc,
    request: Request,
    by: Annotated[str, Query(description="owner, project or label:KEY")] = "owner",
    label: Annotated[list[str], Query(description="only VMs matching these label selectors")] = [],  # noqa: B006
    owner: str | None = None, project: str | None = None,
) -> Report:
    """VMs grouped, with age, last activity, state, allocation and use (running, uptime, QEMU RSS, disk)."""
    rep.check_by(by)
    now = time.time()
    activity = svc.store.last_activity() | svc.store.last_active()  # measured activity first, else events
    rows = []
    for rec in select(svc.vms.list(), label, owner, scoped_project(request, project)):
        rt = svc.vms.runtime(rec.name)
        disk = rec.spec.disk
        if disk is None:
            try:
                disk = svc.images.get(rec.spec.image_ref).disk_virtual_size
            except CorralError:
                disk = None
        running = rec.state in (VMState.RUNNING, VMState.PAUSED) and rt is not None
        rows.append(rep.ReportRow(
            name=rec.name, owner=rec.spec.owner, project=rec.spec.project, labels=rec.spec.labels,
            state=rec.state.value, created_at=rec.created_at, age=now - rec.created_at,
            last_activity=activity.get(rec.name), vcpus=rec.spec.vcpus, memory_mib=rec.spec.memory,
            idle_suspended=rec.state == VMState.SUSPENDED and rec.state_reason.startswith(IDLE_REASON),
            disk_bytes=disk, disk_used_bytes=rep.allocated_bytes(svc.vms.paths(rec.name).disk), running=running,
            uptime=now - rt.started_at if rt is not None else None,
            rss_bytes=rep.rss_bytes(rt.pid) if rt is not None else None,
        ))
    return rep.build(rows, by, now)
