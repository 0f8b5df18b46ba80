"""Pacing of CI calls: a token bucket per (region, bucket) that backs off on throttling, and a cap
on calls in flight.

The rate adapts AIMD-style, as TCP does: a throttling answer halves the bucket's rate (at most once
per ``decrease_cooldown`` seconds, since calls in flight together get throttled together), and every
successful call adds back a twentieth of the configured rate, so a bucket climbs back to its setting
in about twenty successes after the last throttle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

Key = tuple[str, str]  # (region, bucket)

_RECOVERY_STEPS = 20
_FLOOR_DIVISOR = 64


@dataclass
class TokenBucket:
    """Tokens may go negative: each acquirer reserves the next token and waits for its turn, so
    waiters are served in order and the long-run rate is exact."""

    limit: float
    burst: float
    rate: float
    tokens: float
    updated: float
    last_decrease: float = float("-inf")

    def reserve(self, now: float) -> float:
        """Take one token; seconds to wait until it is due (0 when one was in hand)."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def slow_down(self, now: float, cooldown: float) -> bool:
        if now - self.last_decrease < cooldown:
            return False
        self._settle(now)
        self.rate = max(self.limit / _FLOOR_DIVISOR, self.rate / 2.0)
        self.last_decrease = now
        return True

    def recover(self, now: float) -> None:
        if self.rate < self.limit:
            self._settle(now)
            self.rate = min(self.limit, self.rate + self.limit / _RECOVERY_STEPS)

    def _settle(self, now: float) -> None:
        # Credit the time elapsed at the old rate before the rate changes.
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now


class RateLimiter:
    def __init__(
        self,
        rate: float,
        concurrency: int,
        *,
        burst: float | None = None,
        decrease_cooldown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = rate
        # A small burst (a tenth of a second's worth) absorbs scheduling jitter without letting a
        # quiet bucket fire a whole second of calls at once.
        self._burst = burst if burst is not None else max(1.0, rate / 10.0)
        self._cooldown = decrease_cooldown
        self._clock = clock
        self._buckets: dict[Key, TokenBucket] = {}
        self._slots = asyncio.Semaphore(concurrency)

    def reserve(self, key: Key) -> float:
        return self._bucket(key).reserve(self._clock())

    async def acquire(self, key: Key) -> None:
        """Wait until ``key``'s bucket allows one more call."""
        delay = self.reserve(key)
        if delay > 0:
            await asyncio.sleep(delay)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the ``concurrency`` places for a call in flight."""
        async with self._slots:
            yield

    def throttled(self, key: Key) -> bool:
        """CI said slow down: halve the bucket's rate. True when the rate actually changed."""
        return self._bucket(key).slow_down(self._clock(), self._cooldown)

    def succeeded(self, key: Key) -> None:
        self._bucket(key).recover(self._clock())

    def rate(self, key: Key) -> float:
        return self._bucket(key).rate

    def _bucket(self, key: Key) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(
                limit=self._limit,
                burst=self._burst,
                rate=self._limit,
                tokens=1.0,
                updated=self._clock(),
            )
            self._buckets[key] = bucket
        return bucket
