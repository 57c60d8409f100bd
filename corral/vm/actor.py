"""Who the current operation is for: recorded with every event, and on the exit a user's stop or kill caused.

The API sets it per request (the X-Corral-User header); what the daemon does by itself (supervision, restart
policies, readiness, expiry) runs as ``corrald``. A context variable, so that concurrent requests each keep their own
and a task inherits its creator's, except the daemon's own tasks (:func:`system_task`).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any

SYSTEM_ACTOR = "corrald"
ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("corral_actor", default=SYSTEM_ACTOR)


def system_task(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """A task that acts as the daemon itself, whoever's request created it."""
    ctx = contextvars.copy_context()
    ctx.run(ACTOR.set, SYSTEM_ACTOR)
    return asyncio.get_running_loop().create_task(coro, name=name, context=ctx)
