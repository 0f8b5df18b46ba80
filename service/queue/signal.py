"""A wake-up for workers waiting on the queue, shared by every backend."""

from __future__ import annotations

import asyncio
import contextlib


class Signal:
    """Wake every current waiter; later waiters wait for the next notification."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, max_wait: float) -> None:
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(max_wait, 0.0))
