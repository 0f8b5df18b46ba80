"""API fault injection: a QPS quota, random throttling and 5xx answers, and lost answers."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from service.emulator.responses import CIError
from service.emulator.stats import Stats
from service.settings import Settings


class TokenBucket:
    """``rate`` calls per second with a burst of max(1, rate)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        current = self._clock()
        self._tokens = min(self._capacity, self._tokens + (current - self._last) * self._rate)
        self._last = current
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Faults:
    def __init__(
        self,
        settings: Settings,
        stats: Stats,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._stats = stats
        self._rng = rng
        self._quota = TokenBucket(settings.emulator_qps, clock) if settings.emulator_qps else None

    @property
    def latency_seconds(self) -> float:
        return self._settings.emulator_latency_ms / 1000

    def before(self) -> CIError | None:
        """The fault to answer with instead of handling the call, if any."""
        settings, stats = self._settings, self._stats
        if self._quota is not None and not self._quota.take():
            stats.requests_over_quota += 1
            return CIError(429, "SlowDown", "request rate is over the QPS quota")
        if self._rng.random() < settings.emulator_throttle_rate:
            stats.requests_throttled += 1
            return CIError(self._rng.choice((429, 503)), "SlowDown", "frequency control")
        if self._rng.random() < settings.emulator_error_rate:
            stats.requests_failed += 1
            return CIError(500, "InternalError", "internal error, please retry")
        return None

    def after(self) -> CIError | None:
        """An error to answer with although the call was carried out (the in-doubt case)."""
        if self._rng.random() < self._settings.emulator_lost_response_rate:
            self._stats.requests_lost += 1
            return CIError(500, "InternalError", "internal error, please retry")
        return None
