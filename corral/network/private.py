"""Private networks (work in progress: filled in by the networking work)."""

from __future__ import annotations

from corral.engine.cmdline import NicAttachment
from corral.engine.guest_agent import GuestAgent
from corral.errors import InvalidInput
from corral.settings import Settings
from corral.store.db import Store, VMRecord


class NetworkService:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    async def attach(self, rec: VMRecord) -> tuple[NicAttachment, ...]:
        if rec.spec.networks:
            raise InvalidInput("private networks are not supported yet")
        return ()

    async def configure_guest(self, rec: VMRecord, agent: GuestAgent) -> None:
        return None
