"""Full-jitter backoff: uniform below an exponentially growing, capped ceiling."""

from __future__ import annotations

import random

from service.backoff import full_jitter


def test_delays_stay_below_the_exponential_ceiling() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0)]:
        delays = [full_jitter(attempt, base=1.0, cap=300.0, rng=rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in delays)
        # Full jitter spreads over the whole window, not just its top.
        assert min(delays) < ceiling * 0.1
        assert max(delays) > ceiling * 0.9


def test_the_cap_bounds_every_delay_even_for_huge_attempt_numbers() -> None:
    rng = random.Random(1)
    assert all(full_jitter(n, base=1.0, cap=5.0, rng=rng) <= 5.0 for n in (10, 100, 10_000))


def test_attempt_zero_or_less_uses_the_base() -> None:
    assert full_jitter(0, base=2.0, cap=300.0, rng=random.Random(3)) <= 2.0
