"""A circuit breaker per destination origin, kept in process memory.

After ``threshold`` failures in a row (no answer, or a retryable status) the origin's circuit
opens: its deliveries wait, without spending attempts, for ``cooldown`` seconds. Then one trial
attempt goes out (half open); success closes the circuit, failure opens it again. Each replica
keeps its own circuits: a receiver that fails for one fails for all soon enough.
"""

from __future__ import annotations

from typing import Literal

CircuitState = Literal["closed", "open", "half_open"]


class Breakers:
    def __init__(self, *, threshold: int, cooldown: float) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    def state(self, origin: str, now: float) -> CircuitState:
        until = self._open_until.get(origin)
        if until is None:
            return "closed"
        return "open" if now < until else "half_open"

    def succeeded(self, origin: str) -> None:
        self._failures.pop(origin, None)
        self._open_until.pop(origin, None)

    def failed(self, origin: str, now: float) -> None:
        failures = self._failures[origin] = self._failures.get(origin, 0) + 1
        if failures >= self._threshold:
            self._open_until[origin] = now + self._cooldown

    def open_origins(self, now: float) -> list[str]:
        return [origin for origin, until in self._open_until.items() if now < until]
