"""``GET /metrics`` (beside /v1, not under it): Prometheus' text format, rendered by prometheus_client.

It renders the daemon's counters (corral.metrics.registry) and the sampler's cached per-VM and per-host figures
(corral.metrics.collector, rendered once per sampler pass): no QMP round trip, so a scrape costs the same whatever
the VMs do.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from corral.auth import policy
from corral.auth.principal import principal_of
from corral.metrics.collector import Visible, VMScrape
from corral.metrics.registry import REGISTRY

router = APIRouter(tags=["metrics"])


def visibility(request: Request) -> Visible | None:
    """Which projects' VMs the requester may see in the metrics; None: all of them (admins, the unix socket's root).

    Issue 13: the samples of VMs not visible to the principal (corral.auth.policy.visible) are left out."""
    principal = principal_of(request.scope)
    if principal.project is None:
        return None
    return lambda project: policy.visible(principal, project)


def render(vms: VMScrape | None, visible: Visible | None = None) -> bytes:
    """The text of one scrape: the daemon's registry, rendered now (it is small), then the VMs' pre-rendered text
    for the projects ``visible`` accepts."""
    daemon = generate_latest(REGISTRY)
    return daemon if vms is None else daemon + vms.text(visible).encode()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    vms: VMScrape | None = getattr(request.app.state, "metrics", None)
    return Response(render(vms, visibility(request)), media_type=CONTENT_TYPE_PLAIN_0_0_4)
