"""The domain services the routes call, held on the app (set by the daemon at start-up)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from corral.images.store import ImageStore
from corral.settings import Settings
from corral.store.db import Store
from corral.templates.service import TemplateService
from corral.vm.service import VMService


@dataclass
class Services:
    settings: Settings
    store: Store
    images: ImageStore
    vms: VMService
    templates: TemplateService | None = None

    def __post_init__(self) -> None:
        if self.templates is None:
            self.templates = TemplateService(self.vms)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
