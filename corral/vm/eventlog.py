"""The event log as it is written: each event stored with who did it, and handed to every live reader of the stream.

Reading the stored log (``--since``) is :mod:`corral.vm.events`; this module is the writing side and the live
subscriptions (``corral events --follow``, idle control's watch for activity). A reader that falls behind by more than
:data:`SUBSCRIBER_BACKLOG` events is cut off and told so, rather than silently missing events or holding the daemon's
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from corral.store.db import EventQuery, EventRecord, Store
from corral.vm.actor import ACTOR

#: The VM service's log (the daemon log names it so), whichever of its modules writes the line.
log = logging.getLogger("corral.vm.service")

SUBSCRIBER_BACKLOG = 10_000  # events a slow event-stream reader may fall behind before it is cut off


class Subscription:
    """One reader of the live event stream: the events matching ``query``, in order, as they are recorded."""

    def __init__(self, query: EventQuery) -> None:
        self.query = query
        self.queue: asyncio.Queue[EventRecord | None] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self.overflowed = False

    def offer(self, ev: EventRecord) -> None:
        """Queue ``ev`` if it matches; never blocks the writer (a full queue ends this reader instead)."""
        if self.overflowed or not self.query.matches(ev):
            return
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            self.overflowed = True  # the reader is told and stops, rather than silently missing events

    def close(self) -> None:
        """End the stream: the reader's next :meth:`next` returns None."""
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    async def next(self) -> EventRecord | None:
        """The next event; None when the stream ended (daemon shutting down, or the reader fell behind)."""
        if self.overflowed and self.queue.empty():
            return None
        return await self.queue.get()


class EventLog:
    """Records events into the store and fans them out to the live subscriptions."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._subscribers: set[Subscription] = set()

    def record(self, vm: str | None, type_: str, message: str, *, result: str = "ok", owner: str | None = None,
               **data: Any) -> EventRecord:
        """Record who (the current actor) did what to which VM (and its owner), when, with what result; and hand
        it to every live reader of the event stream."""
        if owner is None:
            rec = self.store.get_vm(vm) if vm else None
            owner = rec.spec.owner if rec else ""
        ev = self.store.add_event(vm, type_, message, data, actor=ACTOR.get(), owner=owner, result=result)
        log.info("%s: %s%s", vm or "host", message, "" if result == "ok" else f" ({result})")
        for sub in list(self._subscribers):
            sub.offer(ev)
        return ev

    def subscribe(self, query: EventQuery) -> Subscription:
        """A :class:`Subscription` to the events recorded from now on; :meth:`unsubscribe` it when done."""
        sub = Subscription(query)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop handing events to ``sub`` (its reader went away)."""
        self._subscribers.discard(sub)

    def end_streams(self) -> None:
        """Daemon exit begins: every live event stream ends (its readers' connections close)."""
        for sub in list(self._subscribers):
            sub.close()
