"""The journal of operations under way: what each has done so far, written before it is done.

An operation runs inside :meth:`Journal.run`; whatever it creates or changes that a crash would leave behind is
noted first (:meth:`Operation.note`, :meth:`Operation.add`), under the keys below, then done. The row is deleted
when the operation ends, whether it succeeded or failed in an orderly way (its own ``except``/``finally`` blocks
undo what they must). Only a daemon that dies in the middle leaves the row behind, for corral.operations.recovery.

The keys every operation shares, and what recovery does with each:

``files``     files created and not yet named by the store (a layer, a state file, a backup target): removed, unless
              by then a row of the store names them
``dirs``      directories created for the result (a clone's VM directory, a template's work directory): removed,
              unless the kind's recovery finished the operation
``nodes``     block nodes added to the VM's QEMU: deleted (one QEMU still uses is kept)
``jobs``      QEMU jobs started: cancelled and dismissed
``migrating`` a machine state is being saved: the migration is cancelled
``paused``    the operation stopped the vCPUs of a running VM: they are started again
``frozen``    the guest's file systems may be frozen: thawed (also done for every re-attached guest found frozen)
``pids``      helper processes started, as ``[pid, start_ticks]``: killed if they still run
``overlay``   a disk being frozen onto a new overlay (corral.storage): the overlay is adopted into the VM's chain or
              discarded, whichever matches what QEMU uses
"""

from __future__ import annotations

import contextlib
import contextvars
import secrets
import time
from collections.abc import Iterator
from typing import Any

from corral.metrics.registry import operation_ended
from corral.store.db import OperationRecord, Store

_current: contextvars.ContextVar[Operation | None] = contextvars.ContextVar("corral_operation", default=None)


class Operation:
    """One operation under way; every change is written to the store at once (a SIGKILL may follow any line)."""

    def __init__(self, store: Store, rec: OperationRecord) -> None:
        self._store = store
        self.rec = rec
        self.ended = False  # a task the operation spawned may outlive it: its notes must not bring the row back

    @property
    def id(self) -> str:
        return self.rec.id

    def note(self, **data: Any) -> None:
        """Record (or, with None, forget) facts about the operation."""
        if self.ended:
            return
        for k, v in data.items():
            if v is None:
                self.rec.data.pop(k, None)
            else:
                self.rec.data[k] = v
        self._store.put_operation(self.rec)

    def add(self, key: str, item: Any) -> None:
        """Add ``item`` to the list under ``key`` (files, dirs, nodes, jobs, pids)."""
        items = list(self.rec.data.get(key, []))
        if item not in items:
            items.append(item)
        self.note(**{key: items})

    def discard(self, key: str, item: Any) -> None:
        """``item`` is no longer the operation's to clean up (committed to the store, or removed)."""
        items = [i for i in self.rec.data.get(key, []) if i != item]
        self.note(**{key: items or None})


class _NoOperation(Operation):
    """What :func:`current` gives outside any operation: notes go nowhere."""

    def __init__(self) -> None:
        self.rec = OperationRecord("", None, "", 0.0, {})
        self.ended = True

    def note(self, **data: Any) -> None:
        pass


def current() -> Operation:
    """The operation this code runs for (a helper such as freezing a disk notes into its caller's operation)."""
    return _current.get() or _NoOperation()


class Journal:
    def __init__(self, store: Store) -> None:
        self.store = store

    @contextlib.contextmanager
    def run(self, kind: str, vm: str | None, **data: Any) -> Iterator[Operation]:
        """Journal an operation of ``kind`` on ``vm`` for as long as the block runs. Nested inside another operation,
        it is that one (one row: what the inner steps do belongs to the outer operation's recovery)."""
        outer = _current.get()
        if outer is not None:
            outer.note(**data)
            yield outer
            return
        op = Operation(self.store, OperationRecord(secrets.token_hex(6), vm, kind, time.time(),
                                               {k: v for k, v in data.items() if v is not None}))
        self.store.put_operation(op.rec)
        token = _current.set(op)
        ok = False
        try:
            yield op
            ok = True
        finally:
            _current.reset(token)
            op.ended = True
            self.store.delete_operation(op.id)
            operation_ended(kind, time.time() - op.rec.started_at, ok)

    def begin(self, kind: str, vm: str | None, **data: Any) -> Operation:
        """Journal an operation that is not one block of one task (a streamed copy, entered by a request's handler
        and ended by its response body): not :func:`current` for the code it runs, ended by :meth:`end`."""
        op = Operation(self.store, OperationRecord(secrets.token_hex(6), vm, kind, time.time(),
                                               {k: v for k, v in data.items() if v is not None}))
        self.store.put_operation(op.rec)
        return op

    def end(self, op: Operation, ok: bool = True) -> None:
        """The operation begun by :meth:`begin` is over (succeeded, or undone what it must: ``ok`` False)."""
        if not op.ended:
            operation_ended(op.rec.kind, time.time() - op.rec.started_at, ok)
        op.ended = True
        self.store.delete_operation(op.id)

    def pending(self) -> list[OperationRecord]:
        """Operations a previous daemon began and did not end."""
        return self.store.list_operations()
