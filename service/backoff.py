"""Retry delays: exponential backoff with full jitter (AWS Architecture Blog, 2015).

Full jitter spreads the retries of many jobs that failed together (a CI outage) uniformly over the
window instead of letting them return in synchronised waves.
"""

from __future__ import annotations

import random


def full_jitter(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry): uniform in
    ``[0, min(cap, base * 2 ** (attempt - 1))]``."""
    exponent = min(max(attempt - 1, 0), 64)  # past 2**64 every realistic cap has been reached
    ceiling = min(cap, base * 2.0**exponent)
    return (rng or random).uniform(0.0, ceiling)
