"""Seedable randomness (CIRELAY_EMULATOR_SEED): one generator per purpose and per job.

Deriving a job's generator from the seed and its JobId makes its fate (failure, dropped or
duplicated callback, JSON shape) independent of scheduling order, so a seeded run repeats exactly
even with several workers.
"""

from __future__ import annotations

import random


class Randomness:
    def __init__(self, seed: int) -> None:
        self._seed = seed

    def rng(self, purpose: str) -> random.Random:
        """A generator for ``purpose`` (e.g. ``ids``, ``run/<job id>``); unseeded when seed < 0."""
        if self._seed < 0:
            return random.Random()
        return random.Random(f"{self._seed}/{purpose}")
