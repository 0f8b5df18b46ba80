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
        # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a cancellation that
        # arrives as the event is set, and a worker told to stop would wait on forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(max_wait, 0.0)):
                await event.wait()
