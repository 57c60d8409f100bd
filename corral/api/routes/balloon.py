"""The balloon of a ``--balloon`` VM: its live memory target and what it reports (corral.memory.balloon)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from corral.api.deps import Services, services
from corral.api.models import BalloonRequest, BalloonStatus
from corral.errors import EngineError
from corral.memory.balloon import BalloonService

router = APIRouter(tags=["balloon"])
Svc = Annotated[Services, Depends(services)]


def _balloon(svc: Services) -> BalloonService:
    if svc.balloon is None:
        raise EngineError("the balloon service is not running in this daemon")
    return svc.balloon


@router.get("/vms/{name}/balloon", response_model=BalloonStatus)
async def get_balloon(name: str, svc: Svc) -> BalloonStatus:
    """The balloon's size and the guest's memory statistics (a running VM launched with ``balloon``)."""
    return await _balloon(svc).require_status(name)


@router.post("/vms/{name}/balloon", response_model=BalloonStatus)
async def set_balloon(name: str, req: BalloonRequest, svc: Svc) -> BalloonStatus:
    """Set the memory the guest should have (live only: a stop/start begins with all of the VM's memory)."""
    return await _balloon(svc).set_target(name, req.target)
