"""Failed logins, counted per key (a user name, a client address) in a sliding window: after ``limit`` failures
within ``window`` seconds the key is locked out for ``lockout`` seconds. In memory: a daemon restart forgets, which
costs an attacker a restart of the daemon, not a bypass."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RateLimiter:
    def __init__(self, limit: int = 5, window: float = 300.0, lockout: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self.limit, self.window, self.lockout, self.clock, self.max_keys = limit, window, lockout, clock, max_keys
        self._fails: dict[str, deque[float]] = {}
        self._locked: dict[str, float] = {}

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        until = self._locked.get(key)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._locked[key]
            return 0.0
        return left

    def failed(self, key: str) -> None:
        now = self.clock()
        if len(self._fails) >= self.max_keys and key not in self._fails:
            self._prune(now)
        q = self._fails.setdefault(key, deque())
        q.append(now)
        while q and q[0] <= now - self.window:
            q.popleft()
        if len(q) >= self.limit:
            self._locked[key] = now + self.lockout
            q.clear()

    def succeeded(self, key: str) -> None:
        self._fails.pop(key, None)

    def _prune(self, now: float) -> None:
        for k in [k for k, q in self._fails.items() if not q or q[-1] <= now - self.window]:
            del self._fails[k]
        if len(self._fails) >= self.max_keys:  # still full: forget the oldest half rather than grow without bound
            for k in sorted(self._fails, key=lambda k: self._fails[k][-1])[: self.max_keys // 2]:
                del self._fails[k]
