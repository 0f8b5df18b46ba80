"""Token bucket per (region, bucket): pacing, throttle slow-down and recovery, concurrency cap.

A fake clock drives the buckets, so these tests never sleep.
"""

from __future__ import annotations

import asyncio

import pytest

from service.ratelimit import RateLimiter

KEY = ("ap-chongqing", "media-1250000000")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reservations_are_spaced_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 4, burst=1.0, clock=clock)
    waits = [limiter.reserve(KEY) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_a_quiet_bucket_refills_only_up_to_its_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 4, burst=2.0, clock=clock)
    limiter.reserve(KEY)
    clock.now += 60  # a long quiet spell
    waits = [limiter.reserve(KEY) for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.0, 0.1, 0.2])


def test_buckets_are_independent() -> None:
    limiter = RateLimiter(1.0, 4, burst=1.0, clock=Clock())
    assert limiter.reserve(KEY) == 0.0
    assert limiter.reserve(("ap-beijing", "other-1250000000")) == 0.0
    assert limiter.reserve(KEY) == pytest.approx(1.0)


def test_throttling_halves_the_rate_once_per_cooldown_and_successes_restore_it() -> None:
    clock = Clock()
    limiter = RateLimiter(20.0, 4, burst=1.0, decrease_cooldown=1.0, clock=clock)
    assert limiter.throttled(KEY)
    assert limiter.rate(KEY) == 10.0
    assert not limiter.throttled(KEY)  # same burst of answers: one decrease
    clock.now += 1.0
    assert limiter.throttled(KEY)
    assert limiter.rate(KEY) == 5.0

    rates = []
    for _ in range(20):
        limiter.succeeded(KEY)
        rates.append(limiter.rate(KEY))
    assert rates == sorted(rates)
    assert rates[0] == 6.0
    assert rates[-1] == 20.0  # never above the setting
    limiter.succeeded(KEY)
    assert limiter.rate(KEY) == 20.0


def test_the_rate_never_drops_below_a_floor() -> None:
    clock = Clock()
    limiter = RateLimiter(64.0, 4, clock=clock)
    for _ in range(20):
        limiter.throttled(KEY)
        clock.now += 2
    assert limiter.rate(KEY) == 1.0


def test_a_slower_rate_spaces_reservations_wider() -> None:
    clock = Clock()
    limiter = RateLimiter(10.0, 4, burst=1.0, clock=clock)
    limiter.reserve(KEY)
    limiter.throttled(KEY)
    assert limiter.reserve(KEY) == pytest.approx(0.2)


async def test_the_concurrency_cap_holds_back_the_next_call() -> None:
    limiter = RateLimiter(10.0, 2)
    inside = 0
    peak = 0
    release = asyncio.Event()

    async def call() -> None:
        nonlocal inside, peak
        async with limiter.slot():
            inside += 1
            peak = max(peak, inside)
            await release.wait()
            inside -= 1

    tasks = [asyncio.create_task(call()) for _ in range(5)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert inside == 2
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 2
