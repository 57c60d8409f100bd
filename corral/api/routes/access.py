"""Reaching a guest: how to SSH into it (/ssh) and waiting until it can be reached, or reaches a state (/wait).

Both wait on the VM service's own signals (readiness, state changes), never by polling the guest from here.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from corral.api.deps import Services, services, touch, wake
from corral.api.models import API_PREFIX, SSHInfo, VMInfo, WaitForRequest
from corral.api.routes.files import OPERATION as COPY_OPERATION
from corral.api.routes.vms import to_info
from corral.errors import Conflict, CorralError, GuestAgentTimeout
from corral.guest import ssh
from corral.vm.states import VMState

router = APIRouter(prefix="/vms", tags=["vms"])
Svc = Annotated[Services, Depends(services)]


async def until_ready(svc: Services, name: str, timeout: float) -> None:
    """Wait until ``name`` is running and provisioned for this boot; Conflict at once when it cannot get there
    by itself (stopped, paused...), GuestAgentTimeout when it does not within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    rec = svc.vms.get(name)
    if rec.state == VMState.STARTING:  # the machine is not supervised yet: wait until QEMU runs (or failed)
        rec = await svc.vms.wait_state(name, {s for s in VMState if s != VMState.STARTING}, timeout)
    if rec.state == VMState.PAUSED:
        raise Conflict(f"VM '{name}' is paused: resume it first (`corral resume {name}`)")
    if rec.state != VMState.RUNNING:
        raise Conflict(f"VM '{name}' is {rec.state}: start it first (`corral start {name}`)")
    await svc.vms.readiness.wait_ready(name, max(deadline - loop.time(), 0.0))


@router.get("/{name}/ssh", response_model=SSHInfo)
async def ssh_info(name: str, svc: Svc,
                   timeout: Annotated[float, Query(ge=0, le=3600, description="seconds to wait for readiness")] = 30.0,
                   purpose: Annotated[Literal["shell", "cp"], Query(description="what the SSH connection is for: "
                                      "what waking an idle-suspended VM says")] = "shell",
                   ) -> SSHInfo:
    """Where the VM's SSH server listens on the host, with its pinned host key and Corral's key for it. Waits up
    to ``timeout`` seconds for the guest to be ready and its SSH server to greet; 409 when it is not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await wake(svc, name, COPY_OPERATION if purpose == "cp" else "open a shell in")  # idle-suspended: resumes
    touch(svc, name)  # opening a shell is activity (then its traffic is)
    try:
        await until_ready(svc, name, timeout)
    except GuestAgentTimeout as exc:
        raise Conflict(f"VM '{name}' is not ready yet (its guest agent did not answer within {timeout:.0f}s): "
                       f"wait for it with `corral wait {name}`") from exc
    m = svc.vms.machine(name)
    rt = svc.vms.runtime(name)
    port = (m.ssh_port if m else None) or (rt.ssh_port if rt else None)
    if port is None:
        raise Conflict(f"VM '{name}' has no SSH port forward (started by an older Corral): "
                       f"restart it with `corral stop {name} && corral start {name}`")
    paths = svc.vms.paths(name)
    if not paths.known_hosts.exists() or paths.known_hosts.stat().st_size == 0:
        raise Conflict(f"no SSH host key of VM '{name}' could be read at boot (does its image have an SSH server?): "
                       f"the reason is in its events, GET {API_PREFIX}/vms/{name}/events")
    await ssh.wait_ssh_banner(port, max(deadline - loop.time(), 5.0))
    return SSHInfo(host=ssh.SSH_HOST, port=port, user=ssh.SSH_USER, identity_file=str(paths.ssh_key),
                   known_hosts=str(paths.known_hosts))


@router.post("/{name}/wait", response_model=VMInfo)
async def wait_for(name: str, req: WaitForRequest, svc: Svc) -> VMInfo:
    """Wait until the VM is in ``state`` and/or ready (ready alone when no state is given); the VM as it then is.
    A timeout is an error (502, naming what was still missing), as is asking for readiness of a stopped VM (409)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + req.timeout
    if req.state is not None:
        await svc.vms.wait_state(name, {req.state}, req.timeout)
    if req.ready or req.state is None:
        await until_ready(svc, name, max(deadline - loop.time(), 0.0))
        with contextlib.suppress(CorralError, asyncio.TimeoutError):
            await asyncio.wait_for(svc.vms.readiness.refresh_addresses(name, max_age=2.0), 3.0)
    return to_info(svc, svc.vms.get(name))
