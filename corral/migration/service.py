"""The live-migration service: the receiving side (:mod:`corral.migration.incoming`) and the sending side
(:mod:`corral.migration.outgoing`) over the VM and storage services, and their recovery at the daemon's start.

The cluster layer calls :meth:`MigrationService.migrate` with the :class:`~corral.client.remote.Remote` of the target
host; nothing here knows how hosts are found.
"""

from __future__ import annotations

import socket
import weakref

from corral.migration import incoming, outgoing
from corral.migration.incoming import Arrivals
from corral.migration.models import IncomingAnswer, IncomingRequest, MigrationResult
from corral.migration.outgoing import Departures, Target
from corral.operations.recovery import Outcome, Recovery
from corral.settings import parse_listen
from corral.storage.service import StorageService
from corral.store.db import OperationRecord, VMRecord
from corral.vm.service import VMService

_WILDCARD = frozenset({"", "0.0.0.0", "::"})


class MigrationService:
    def __init__(self, vms: VMService, storage: StorageService, host_name: str | None = None) -> None:
        self.vms = vms
        self.arrivals = Arrivals(vms, storage)
        self.departures = Departures(vms, host_name or socket.gethostname())

    async def migrate(self, name: str, target: Target, timeout: float = 600.0) -> MigrationResult:
        """Move running VM ``name`` to the corrald ``target`` (its URL, an admin's token, its pinned certificate).
        On failure (MigrationFailed, or the error that stopped it) the VM runs on here and nothing is left there."""
        return await self.departures.migrate(name, target, timeout)

    async def prepare(self, req: IncomingRequest, reached_at: str | None) -> IncomingAnswer:
        """The target side's first step; the disks and the state come to this host's listen address (or, listening
        on every address, the one the source reached this host at)."""
        return await self.arrivals.prepare(req, self.address(reached_at))

    async def commit(self, name: str) -> VMRecord:
        return await self.arrivals.commit(name)

    async def abort(self, name: str) -> None:
        await self.arrivals.abort(name)

    def address(self, reached_at: str | None) -> str:
        listen = self.vms.settings.listen
        host = parse_listen(listen)[0] if listen else ""
        if host in _WILDCARD:
            host = reached_at or "127.0.0.1"
        return host

    def register_recovery(self, recovery: Recovery) -> None:
        recovery.kinds.update({incoming.KIND: self.arrivals.recover, outgoing.KIND: self._recover_departure})

    async def _recover_departure(self, op: OperationRecord) -> Outcome:
        return await outgoing.recover(self.vms, op)


_services: weakref.WeakKeyDictionary[VMService, MigrationService] = weakref.WeakKeyDictionary()


def attach(vms: VMService, storage: StorageService, recovery: Recovery | None) -> MigrationService:
    """The daemon's migration service over ``vms`` (made once, its recovery registered)."""
    svc = _services.get(vms)
    if svc is None:
        svc = _services[vms] = MigrationService(vms, storage)
        if recovery is not None:
            svc.register_recovery(recovery)
    return svc
