"""``GET /metrics`` (beside /v1, not under it): Prometheus' text format, rendered by prometheus_client.

It renders the daemon's counters (corral.metrics.registry) and the sampler's cached per-VM and per-host figures
(corral.metrics.collector): no QMP round trip, so a scrape costs the same whatever the VMs do.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.core import Metric

from corral.metrics.collector import Visible, VMCollector
from corral.metrics.registry import REGISTRY

router = APIRouter(tags=["metrics"])


def visibility(request: Request) -> Visible | None:
    """Which projects' VMs the requester may see in the metrics; None: all of them (the unix socket's root).

    Issue 13's contract: the samples of VMs not visible to the principal are left out. Auth (corral.auth) is merged
    after this; at merge this becomes ``lambda project: policy.visible(principal_of(request.scope), project)``.
    """
    return None


class _Scrape:
    """What one scrape renders: the daemon's registry, then the VM collector seen through ``visible``."""

    def __init__(self, vms: VMCollector | None, visible: Visible | None) -> None:
        self.vms = vms.filtered(visible) if vms is not None else None

    def collect(self) -> Iterable[Metric]:
        yield from REGISTRY.collect()
        if self.vms is not None:
            yield from self.vms.collect()


def render(vms: VMCollector | None, visible: Visible | None = None) -> bytes:
    """The text of one scrape."""
    return generate_latest(_Scrape(vms, visible))


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    vms: VMCollector | None = getattr(request.app.state, "metrics", None)
    return Response(render(vms, visibility(request)), media_type=CONTENT_TYPE_PLAIN_0_0_4)
