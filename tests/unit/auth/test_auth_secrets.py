"""Password and token hashing, and the rate limiter of failed logins."""

from __future__ import annotations

import inspect

from corral.auth import hashing, service
from corral.auth.ratelimit import RateLimiter


def test_password_hash_is_argon2id_and_verifies() -> None:
    h = hashing.hash_password("correct horse")
    assert h.startswith("$argon2id$") and "correct horse" not in h
    assert hashing.verify_password(h, "correct horse")
    assert not hashing.verify_password(h, "wrong")
    assert not hashing.verify_password(None, "correct horse")  # an unknown user: checked against a dummy, refused
    assert not hashing.verify_password("not a hash", "x")
    assert hashing.hash_password("a") != hashing.hash_password("a")  # salted


def test_tokens_are_random_and_stored_as_sha256() -> None:
    a, b = hashing.new_token(), hashing.new_token()
    assert a != b and a.startswith(hashing.TOKEN_PREFIX) and len(a) > 40
    assert len(hashing.token_hash(a)) == 64 and hashing.token_hash(a) != a
    assert hashing.same_hash(hashing.token_hash(a), hashing.token_hash(a))
    assert not hashing.same_hash(hashing.token_hash(a), hashing.token_hash(b))


def test_token_checks_compare_in_constant_time() -> None:
    assert "compare_digest" in inspect.getsource(hashing.same_hash)
    assert "same_hash" in inspect.getsource(service.AuthService.authenticate)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_five_failures_in_the_window_lock_the_key_out() -> None:
    clock = Clock()
    rl = RateLimiter(limit=5, window=300, lockout=60, clock=clock)
    for _ in range(4):
        rl.failed("user:ann")
        clock.now += 10
    assert rl.retry_after("user:ann") == 0
    rl.failed("user:ann")
    assert 59 < rl.retry_after("user:ann") <= 60
    assert rl.retry_after("user:bob") == 0  # per key
    clock.now += 61
    assert rl.retry_after("user:ann") == 0


def test_failures_outside_the_window_do_not_add_up() -> None:
    clock = Clock()
    rl = RateLimiter(limit=3, window=100, lockout=60, clock=clock)
    for _ in range(10):
        rl.failed("k")
        clock.now += 60  # two per window at most
    assert rl.retry_after("k") == 0


def test_a_success_clears_the_count_and_keys_are_bounded() -> None:
    rl = RateLimiter(limit=3, window=100, lockout=60, clock=Clock(), max_keys=10)
    rl.failed("k")
    rl.failed("k")
    rl.succeeded("k")
    rl.failed("k")
    assert rl.retry_after("k") == 0
    for i in range(100):
        rl.failed(f"addr:{i}")
    assert len(rl._fails) <= 10
