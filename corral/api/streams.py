"""Long operations streamed to the client as NDJSON: progress lines, then one ``done`` or ``error`` line.

The operation runs as its own task, so it goes to its end (or fails and cleans up) even if the client goes away;
bad input is still an HTTP error, raised by the route before the stream starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from corral.errors import CorralError

E = TypeVar("E", bound=BaseModel)  # a wire model with a ``kind`` field: "progress", "done" or "error"

_tasks: set[asyncio.Task[None]] = set()


def stream_operation(name: str, run: Callable[[Callable[[E], None]], Awaitable[E]],
                     error: Callable[[str, str | None], E]) -> StreamingResponse:
    """Start ``run(emit)`` (``emit`` may be called from any thread) and stream what it emits, then its result.

    ``error(message, error_class)`` makes the last line when ``run`` raises.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[E] = asyncio.Queue()

    def emit(ev: E) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, ev)

    async def task() -> None:
        try:
            await queue.put(await run(emit))
        except CorralError as exc:
            await queue.put(error(exc.message, type(exc).__name__))
        except Exception as exc:  # a bug still ends the stream with a readable line
            await queue.put(error(f"{name} failed: {exc}", None))

    t = loop.create_task(task(), name=name)
    _tasks.add(t)
    t.add_done_callback(_tasks.discard)

    async def lines() -> AsyncIterator[bytes]:
        while True:
            ev = await queue.get()
            yield (ev.model_dump_json(exclude_none=True) + "\n").encode()
            if getattr(ev, "kind", None) != "progress":
                return

    return StreamingResponse(lines(), media_type="application/x-ndjson")
