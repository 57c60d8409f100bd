"""/v1/sandbox: run a sample in a throwaway VM and get its report (docs/explanation/sandbox.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from corral.api.deps import Services, services
from corral.sandbox.models import SandboxReport, SandboxRun

router = APIRouter(prefix="/sandbox", tags=["sandbox"])
Svc = Annotated[Services, Depends(services)]


@router.post("/runs", response_model=SandboxReport)
async def run_sample(req: SandboxRun, svc: Svc) -> SandboxReport:
    """Boot a VM without the NAT NIC (and with the network ``net`` asks for), copy the sample in, run the command
    for at most ``timeout`` seconds, stop the VM and report; the VM is deleted unless ``keep``. The request lasts
    the whole run."""
    assert svc.sandbox is not None
    return await svc.sandbox.run(req)
