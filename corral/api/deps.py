"""The domain services the routes call, held on the app (set by the daemon at start-up)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from corral.idle.service import IdleService
from corral.images.store import ImageStore
from corral.memory.balloon import BalloonService
from corral.mounts.service import MountService
from corral.operations.recovery import Recovery
from corral.pools.service import PoolService
from corral.portable.service import PortableService
from corral.sandbox.service import SandboxService
from corral.settings import Settings
from corral.storage.disks import DiskService
from corral.storage.service import StorageService
from corral.store.db import Store
from corral.templates.service import TemplateService
from corral.vm.data_copy import DataCopyService
from corral.vm.service import VMService

if TYPE_CHECKING:
    from corral.auth.service import AuthService
    from corral.backup.service import BackupService
    from corral.cluster.service import ClusterService


@dataclass
class Services:
    settings: Settings
    store: Store
    images: ImageStore
    vms: VMService
    storage: StorageService
    portable: PortableService
    disks: DiskService
    mounts: MountService | None = None  # shared folders (the daemon always has them)
    backups: BackupService | None = None
    idle: IdleService | None = None  # idle control (the daemon always has it)
    templates: TemplateService | None = None
    balloon: BalloonService | None = None
    pools: PoolService | None = None  # warm pools (the daemon always has them)
    recovery: Recovery | None = None  # what a dead daemon left mid-operation: finished or rolled back at start
    copies: DataCopyService | None = None  # `corral cp` over a hot-plugged virtio-serial port
    sandbox: SandboxService | None = None  # `corral sandbox run`: samples in throwaway VMs
    auth: AuthService | None = None  # users, tokens, logins (corral.auth): see auth_service()
    cluster: ClusterService | None = None  # many hosts on etcd (corral.cluster); idle on a host in no cluster


def auth_service(svc: Services) -> AuthService:
    """The users, tokens and logins of ``svc``'s store. corrald makes it at start (its tables exist before any
    request: a refused login changes nothing); an app made without it (tests) gets it on first use."""
    if svc.auth is None:
        from corral.auth.service import AuthService

        svc.auth = AuthService(svc.store)
    return svc.auth


def using(svc: Services, name: str) -> contextlib.AbstractContextManager[None]:
    """While a user reaches a guest: it counts as active, and idle control does not suspend it."""
    return svc.idle.using(name) if svc.idle is not None else contextlib.nullcontext()


def touch(svc: Services, name: str) -> None:
    """A user reached the guest: activity now."""
    if svc.idle is not None:
        svc.idle.touch(name)


async def wake(svc: Services, name: str, operation: str) -> None:
    """Before reaching a guest (exec, shell, cp): resume it if idle control suspended it (see corral.idle)."""
    if svc.idle is not None:
        await svc.idle.wake(name, operation)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
