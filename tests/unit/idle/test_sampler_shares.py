"""Idle control's sampler keeps the agent's interfaces answer on the machine, for the metrics sampler to read
(corral.metrics.sampler) instead of asking the guest a second time each interval."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from corral.engine.process import ProcessIdentity
from corral.idle import sampler

INTERFACES = [{"name": "lo", "statistics": {"rx-bytes": 9, "tx-bytes": 9}},
              {"name": "eth0", "statistics": {"rx-bytes": 100, "tx-bytes": 50}}]


class Agent:
    async def execute(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        assert cmd == "guest-network-get-interfaces"
        return INTERFACES


@dataclass
class Machine:
    ident: ProcessIdentity = field(default_factory=lambda: ProcessIdentity(os.getpid(), 0))
    monitor: Any = None
    agent: Agent = field(default_factory=Agent)
    agent_ready: bool = True
    interfaces_seen: tuple[float, list[dict[str, Any]]] | None = None


def test_the_answer_is_kept_with_its_time() -> None:
    m = Machine()
    before = time.monotonic()
    counters = asyncio.run(sampler.sample(m))  # type: ignore[arg-type]
    assert counters.net_bytes == 150
    assert m.interfaces_seen is not None and m.interfaces_seen[1] == INTERFACES and m.interfaces_seen[0] >= before
