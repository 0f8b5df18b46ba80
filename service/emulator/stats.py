"""Counters the emulator exposes at `GET /_emulator/stats`, so tests can measure faults by count."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    batches_created: Counter[str] = field(default_factory=Counter)  # per bucket
    media_jobs_created: int = 0
    media_jobs_ended: Counter[str] = field(default_factory=Counter)  # per end state
    callbacks_due: int = 0  # media job ends that called for a callback
    callbacks_delivered: int = 0  # bodies accepted by the receiver (a duplicate counts twice)
    callbacks_attempts: int = 0
    callbacks_failed: int = 0  # bodies given up on after every retry
    callbacks_dropped: int = 0  # deliberately never sent (CIRELAY_EMULATOR_DROP_RATE)
    callbacks_duplicated: int = 0  # sent twice (CIRELAY_EMULATOR_DUPLICATE_RATE)
    callbacks_reordered_batches: int = 0  # batches whose callbacks went out in reverse
    requests: int = 0
    requests_delayed: int = 0
    requests_throttled: int = 0  # CIRELAY_EMULATOR_THROTTLE_RATE
    requests_over_quota: int = 0  # CIRELAY_EMULATOR_QPS
    requests_failed: int = 0  # CIRELAY_EMULATOR_ERROR_RATE
    requests_lost: int = 0  # CIRELAY_EMULATOR_LOST_RESPONSE_RATE

    def to_json(self) -> dict[str, Any]:
        return {
            "batches_created": dict(self.batches_created),
            "media_jobs_created": self.media_jobs_created,
            "media_jobs_ended": dict(self.media_jobs_ended),
            "callbacks": {
                "due": self.callbacks_due,
                "delivered": self.callbacks_delivered,
                "attempts": self.callbacks_attempts,
                "failed": self.callbacks_failed,
                "dropped": self.callbacks_dropped,
                "duplicated": self.callbacks_duplicated,
                "reordered_batches": self.callbacks_reordered_batches,
            },
            "requests": {
                "total": self.requests,
                "delayed": self.requests_delayed,
                "throttled": self.requests_throttled,
                "over_quota": self.requests_over_quota,
                "failed": self.requests_failed,
                "lost": self.requests_lost,
            },
        }
