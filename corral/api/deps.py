"""The domain services the routes call, held on the app (set by the daemon at start-up)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from corral.images.store import ImageStore
from corral.portable.service import PortableService
from corral.settings import Settings
from corral.storage.disks import DiskService
from corral.storage.service import StorageService
from corral.store.db import Store
from corral.vm.service import VMService

if TYPE_CHECKING:
    from corral.backup.service import BackupService


@dataclass
class Services:
    settings: Settings
    store: Store
    images: ImageStore
    vms: VMService
    storage: StorageService
    portable: PortableService
    disks: DiskService
    backups: BackupService | None = None


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
