"""The circuit breaker's states, and the delivery gauges read from storage."""

from __future__ import annotations

from pathlib import Path

from service.metrics import Metrics
from service.storage import open_storage
from service.webhooks.breaker import Breakers
from service.webhooks.dispatcher import refresh_gauges
from service.webhooks.fanout import delivery_id
from tests.events.support import sample
from tests.storage.samples import new_delivery as new


def test_a_circuit_opens_after_failures_in_a_row_then_lets_one_trial_through() -> None:
    breakers = Breakers(threshold=3, cooldown=10)
    origin = "http://hooks.example:80"
    breakers.failed(origin, 100)
    breakers.failed(origin, 101)
    assert breakers.state(origin, 101) == "closed"
    breakers.failed(origin, 102)
    assert breakers.state(origin, 105) == "open"
    assert breakers.open_origins(105) == [origin]
    assert breakers.state(origin, 112) == "half_open"
    assert breakers.open_origins(112) == []
    breakers.failed(origin, 112)  # the trial failed: open again at once
    assert breakers.state(origin, 113) == "open"
    breakers.succeeded(origin)
    assert breakers.state(origin, 113) == "closed"
    assert breakers.state("http://other:80", 113) == "closed"


def test_a_delivery_id_is_stable_and_distinct_per_destination() -> None:
    one = delivery_id("ev1", "subscription", "https://a.example/h")
    assert one == delivery_id("ev1", "subscription", "https://a.example/h")
    assert one.startswith("msg_")
    assert (
        len(
            {
                one,
                delivery_id("ev1", "callback", "https://a.example/h"),
                delivery_id("ev2", "subscription", "https://a.example/h"),
                delivery_id("ev1", "subscription", "https://b.example/h"),
            }
        )
        == 4
    )


async def test_gauges_show_pending_dead_and_the_oldest_pending_age(tmp_path: Path) -> None:
    storage = await open_storage(f"sqlite:///{tmp_path / 'cirelay.db'}")
    metrics = Metrics()
    try:
        await refresh_gauges(storage.deliveries, metrics, now=1000.0)
        assert sample(metrics.registry, "cirelay_webhook_pending") == 0
        assert sample(metrics.registry, "cirelay_webhook_oldest_pending_age_seconds") == 0
        await storage.deliveries.fan_out([new(1), new(2, job="job2")], (0, 2), now=900.0)
        [first] = await storage.deliveries.claim([new(1).id], "r1", now=900.0, lease_seconds=5)
        await storage.deliveries.failed(first.id, "r1", status=410, error="gone", retry_at=None)
        await refresh_gauges(storage.deliveries, metrics, now=1000.0)
        assert sample(metrics.registry, "cirelay_webhook_pending") == 1
        assert sample(metrics.registry, "cirelay_webhook_dead") == 1
        assert sample(metrics.registry, "cirelay_webhook_oldest_pending_age_seconds") == 100
    finally:
        await storage.close()
