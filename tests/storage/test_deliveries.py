"""Webhook deliveries on every backend: fan-out position and idempotent inserts, chains sent in
order, claims that never hand one delivery to two replicas, attempts recorded, redelivery."""

from __future__ import annotations

import asyncio

from service.metrics import Metrics
from service.retention import Retainer
from service.storage import Storage
from tests.events.support import sample
from tests.storage.conftest import OpenBackend
from tests.storage.samples import new_delivery as new


async def test_fan_out_is_idempotent_and_its_position_never_moves_back(storage: Storage) -> None:
    deliveries = storage.deliveries
    position, since = await deliveries.fanout_position(now=100.0)
    assert (position, since) == ((0, 0), 100.0)
    await deliveries.fan_out([new(1), new(2)], (0, 2), now=101.0)
    await deliveries.fan_out([new(2), new(3)], (0, 3), now=102.0)  # 2 again: skipped
    await deliveries.fan_out([new(1)], (0, 1), now=103.0)  # a stale fan-out: no step back
    assert await deliveries.fanout_position(now=200.0) == ((0, 3), 100.0)
    listed = await deliveries.for_job("job1")
    assert [d.event_id for d in listed] == ["ev1", "ev2", "ev3"]
    assert [d.body for d in listed] == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    assert all(d.state == "pending" and d.attempts == 0 for d in listed)
    assert await deliveries.counts() == {"pending": 3, "delivered": 0, "dead": 0}


async def test_kept_bodies_are_exact_and_kept_once(storage: Storage) -> None:
    deliveries = storage.deliveries
    body = b"<Response>\r\n <EventName>TaskFinish</EventName>\x00</Response>"
    await asyncio.gather(
        deliveries.keep_body("ev1", "application/xml", body, now=1.0),
        deliveries.keep_body("ev2", "application/json", b"{}", now=1.0),
    )
    await deliveries.keep_body("ev1", "text/plain", b"other", now=2.0)  # a repeat changes nothing
    assert await deliveries.bodies(["ev1", "ev2", "ev3"]) == {
        "ev1": ("application/xml", body),
        "ev2": ("application/json", b"{}"),
    }
    assert await deliveries.bodies([]) == {}


async def test_a_chain_is_sent_in_order_and_other_chains_do_not_wait(storage: Storage) -> None:
    deliveries = storage.deliveries
    other = "http://other.example:80/b"
    await deliveries.fan_out(
        [new(1), new(2), new(3, job="job2"), new(4, url=other)], (0, 4), now=10.0
    )
    due = await deliveries.due(now=10.0, limit=10)
    assert [d for d, _ in due] == [new(1).id, new(3, job="job2").id, new(4, url=other).id]
    assert await deliveries.due(now=10.0, limit=10, skip_origins=["http://other.example:80"]) == [
        (new(1).id, "http://hooks.example:80"),
        (new(3, job="job2").id, "http://hooks.example:80"),
    ]
    [first] = await deliveries.claim([new(1).id], "r1", now=10.0, lease_seconds=30)
    # Failed and waiting for its retry, the first still holds the second back.
    assert await deliveries.failed(first.id, "r1", status=503, error="HTTP 503", retry_at=50.0)
    assert new(2).id not in [d for d, _ in await deliveries.due(now=20.0, limit=10)]
    assert await deliveries.next_due() == 10.0  # job2's and other's are due already
    [again] = await deliveries.claim([new(1).id], "r1", now=50.0, lease_seconds=30)
    assert again.attempts == 1
    assert again.last_status == 503
    assert await deliveries.delivered(first.id, "r1", status=200, now=51.0)
    assert new(2).id in [d for d, _ in await deliveries.due(now=51.0, limit=10)]


async def test_two_replicas_claiming_at_once_never_share_a_delivery(
    storage: Storage, open_backend: OpenBackend
) -> None:
    other = await open_backend()
    rows = [new(n, job=f"job{n}") for n in range(60)]
    await storage.deliveries.fan_out(rows, (0, 60), now=1.0)
    ids = [d.id for d in rows]
    mine, theirs = await asyncio.gather(
        storage.deliveries.claim(ids, "r1", now=2.0, lease_seconds=30),
        other.deliveries.claim(ids, "r2", now=2.0, lease_seconds=30),
    )
    assert {d.id for d in mine}.isdisjoint({d.id for d in theirs})
    assert len(mine) + len(theirs) == 60
    # Leased: nobody gets them again until the leases run out.
    assert await storage.deliveries.due(now=31.9, limit=100) == []
    assert await other.deliveries.claim(ids, "r2", now=31.9, lease_seconds=30) == []
    assert len(await other.deliveries.claim(ids, "r3", now=32.0, lease_seconds=30)) == 60


async def test_only_the_lease_holder_records_an_attempt(storage: Storage) -> None:
    deliveries = storage.deliveries
    await deliveries.fan_out([new(1)], (0, 1), now=1.0)
    [claimed] = await deliveries.claim([new(1).id], "r1", now=1.0, lease_seconds=5)
    [taken] = await deliveries.claim([new(1).id], "r2", now=7.0, lease_seconds=5)  # r1's expired
    assert not await deliveries.delivered(claimed.id, "r1", status=200, now=8.0)
    assert await deliveries.failed(taken.id, "r2", status=None, error="timeout", retry_at=None)
    dead = await deliveries.get(taken.id)
    assert dead is not None
    assert (dead.state, dead.attempts, dead.last_status, dead.last_error) == (
        "dead",
        1,
        None,
        "timeout",
    )
    assert await deliveries.counts() == {"pending": 0, "delivered": 0, "dead": 1}
    assert await deliveries.job_counts("job1") == {"pending": 0, "delivered": 0, "dead": 1}
    assert await deliveries.job_counts("nobody") == {"pending": 0, "delivered": 0, "dead": 0}


async def test_redeliver_brings_dead_and_delivered_back_but_not_pending(storage: Storage) -> None:
    deliveries = storage.deliveries
    await deliveries.fan_out([new(1), new(2, job="job2"), new(3, job="job3")], (0, 3), now=1.0)
    [one, two] = await deliveries.claim(
        [new(1).id, new(2, job="job2").id], "r1", now=1.0, lease_seconds=5
    )
    assert await deliveries.failed(one.id, "r1", status=400, error="HTTP 400", retry_at=None)
    assert await deliveries.delivered(two.id, "r1", status=204, now=2.0)
    assert await deliveries.oldest_pending_created_at() == 1.0
    for delivery_id in (one.id, two.id):
        again = await deliveries.redeliver(delivery_id, now=9.0)
        assert again is not None
        assert (again.state, again.attempts, again.next_attempt_at) == ("pending", 0, 9.0)
        assert again.delivered_at is None
    assert await deliveries.redeliver(new(3, job="job3").id, now=9.0) is None  # pending
    assert await deliveries.redeliver("msg_unknown", now=9.0) is None
    assert await deliveries.get("msg_unknown") is None
    assert await deliveries.counts() == {"pending": 3, "delivered": 0, "dead": 0}


async def test_the_next_due_time_is_a_chain_heads(storage: Storage) -> None:
    deliveries = storage.deliveries
    await deliveries.fan_out([new(1), new(2)], (0, 2), now=10.0)
    [first] = await deliveries.claim([new(1).id], "r1", now=10.0, lease_seconds=30)
    assert await deliveries.next_due() == 40.0  # leased until then; the second waits behind it
    assert await deliveries.failed(first.id, "r1", status=None, error="reset", retry_at=70.0)
    assert await deliveries.next_due() == 70.0


async def test_retention_prunes_finished_deliveries_and_old_bodies_never_pending_ones(
    storage: Storage,
) -> None:
    deliveries = storage.deliveries
    await deliveries.fan_out([new(1), new(2, job="job2"), new(3, job="job3")], (0, 3), now=10.0)
    await deliveries.fan_out([new(4, job="job4")], (0, 4), now=500.0)
    [one, two, four] = await deliveries.claim(
        [new(1).id, new(2, job="job2").id, new(4, job="job4").id], "r1", now=600, lease_seconds=5
    )
    assert await deliveries.delivered(one.id, "r1", status=200, now=600.0)
    assert await deliveries.failed(two.id, "r1", status=400, error="HTTP 400", retry_at=None)
    assert await deliveries.delivered(four.id, "r1", status=200, now=600.0)
    await deliveries.keep_body("ev1", "application/xml", b"<a/>", now=10.0)
    await deliveries.keep_body("ev4", "application/xml", b"<b/>", now=500.0)
    assert await deliveries.prune(before=100.0, limit=1) == {"deliveries": 1, "delivery_bodies": 1}
    assert await deliveries.prune(before=100.0, limit=1) == {"deliveries": 1}
    assert await deliveries.prune(before=100.0, limit=1) == {}
    # The pending one (3) is kept however old; the newer delivered one (4) and its body too.
    assert await deliveries.counts() == {"pending": 1, "delivered": 1, "dead": 0}
    assert await deliveries.bodies(["ev1", "ev4"]) == {"ev4": ("application/xml", b"<b/>")}


async def test_nothing_pending_has_no_due_time(storage: Storage) -> None:
    assert await storage.deliveries.next_due() is None
    assert await storage.deliveries.oldest_pending_created_at() is None
    assert await storage.deliveries.claim([], "r1", now=1.0, lease_seconds=5) == []


async def test_the_retainer_prunes_deliveries_past_the_period(storage: Storage) -> None:
    day = 86_400.0
    await storage.deliveries.fan_out([new(1)], (0, 1), now=1.0)
    [one] = await storage.deliveries.claim([new(1).id], "r1", now=1.0, lease_seconds=5)
    assert await storage.deliveries.delivered(one.id, "r1", status=200, now=2.0)
    metrics = Metrics()
    retainer = Retainer(
        storage.retention,
        storage.leases,
        metrics,
        days=30,
        clock=lambda: 31 * day,
        deliveries=storage.deliveries,
    )
    assert await retainer.prune_once() == {"deliveries": 1}
    assert await storage.deliveries.get(one.id) is None
    assert sample(metrics.registry, "cirelay_retention_pruned_total", table="deliveries") == 1
