"""Delivering one media job's TaskFinish: by URL POST or to a TDMQ (Pulsar) topic, with retries,
and with the callback faults (drop, duplicate) applied.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp
import structlog

from service.emulator.details import media_detail
from service.emulator.documents import task_finish
from service.emulator.randomness import Randomness
from service.emulator.records import Batch, MediaJob
from service.emulator.stats import Stats
from service.settings import Settings

log = structlog.get_logger(__name__)

TDMQ_TOPIC = "persistent://public/default/{name}"
_CALLBACK_TIMEOUT = aiohttp.ClientTimeout(total=10)


class TdmqPublisher:
    """Publishes to Pulsar. pulsar-client is imported and connected only on first use."""

    def __init__(self, url: str, token: str) -> None:
        self._url = url
        self._token = token
        self._lock = threading.Lock()
        self._client: Any = None
        self._producers: dict[str, Any] = {}

    async def publish(self, mq_name: str, body: bytes) -> None:
        if not self._url:
            raise RuntimeError("CIRELAY_EMULATOR_PULSAR_URL is not set")
        topic = TDMQ_TOPIC.format(name=mq_name)
        producer = await asyncio.to_thread(self._producer, topic)
        await asyncio.to_thread(producer.send, body)

    def _producer(self, topic: str) -> Any:
        with self._lock:
            if self._client is None:
                import pulsar  # imported here: heavy, and most emulator runs never publish

                auth = pulsar.AuthenticationToken(self._token) if self._token else None
                self._client = pulsar.Client(self._url, authentication=auth)
            if topic not in self._producers:
                self._producers[topic] = self._client.create_producer(topic)
            return self._producers[topic]

    async def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            self._producers.clear()
        if client is not None:
            await asyncio.to_thread(client.close)


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        publisher: TdmqPublisher,
        stats: Stats,
        randomness: Randomness,
    ) -> None:
        self._settings = settings
        self._session = session
        self._publisher = publisher
        self._stats = stats
        self._randomness = randomness

    async def dispatch(self, batch: Batch, job: MediaJob) -> None:
        """Deliver (or deliberately drop, or duplicate) the job's TaskFinish; never raises."""
        spec = batch.spec
        stats = self._stats
        rng = self._randomness.rng(f"callback/{job.job_id}")
        stats.callbacks_due += 1
        if rng.random() < self._settings.emulator_drop_rate:
            stats.callbacks_dropped += 1
            log.info("callback_dropped", job_id=job.job_id)
            return
        copies = 1
        if rng.random() < self._settings.emulator_duplicate_rate:
            copies = 2
            stats.callbacks_duplicated += 1
        body, content_type = task_finish(media_detail(job, batch), spec.callback_format, rng)
        for _ in range(copies):
            await self._send(batch, job, body, content_type)

    async def _send(self, batch: Batch, job: MediaJob, body: bytes, content_type: str) -> None:
        settings = self._settings
        for attempt in range(settings.emulator_callback_retries + 1):
            if attempt:
                await asyncio.sleep(settings.emulator_callback_retry_seconds * 2 ** (attempt - 1))
            self._stats.callbacks_attempts += 1
            problem = await self._attempt(batch, body, content_type)
            if problem is None:
                self._stats.callbacks_delivered += 1
                log.info("callback_delivered", job_id=job.job_id, attempt=attempt + 1)
                return
            log.warning("callback_attempt_failed", job_id=job.job_id, problem=problem)
        self._stats.callbacks_failed += 1
        log.warning("callback_abandoned", job_id=job.job_id)

    async def _attempt(self, batch: Batch, body: bytes, content_type: str) -> str | None:
        """None when delivered, else what went wrong."""
        spec = batch.spec
        try:
            if spec.callback_type == "TDMQ":
                await self._publisher.publish(spec.mq_name, body)
                return None
            async with self._session.post(
                spec.callback,
                data=body,
                headers={"Content-Type": content_type},
                timeout=_CALLBACK_TIMEOUT,
            ) as response:
                await response.read()
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except Exception as exc:  # any failure of one attempt is retried, never fatal
            return f"{type(exc).__name__}: {exc}"
