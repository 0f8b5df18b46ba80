"""The job queue contract, on every backend: order, leases, idempotency, state changes,
observation, and several storages (processes or replicas) sharing one database."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

import pytest

from service.queue import IdempotencyConflict, JobError, JobQueue
from service.storage import Storage
from tests.queue.samples import make_job
from tests.storage.conftest import OpenBackend

T0 = 1_700_000_000.0
LEASE = 30.0


@pytest.fixture
def queue(storage: Storage) -> JobQueue:
    return storage.queue


async def test_claims_higher_job_level_first_then_oldest(queue: JobQueue) -> None:
    levels = [0, 2, 1, 2, 0, 1]
    ids = []
    for i, level in enumerate(levels):
        record, _ = await queue.enqueue(make_job(level=level), now=T0 + i)
        ids.append(record.id)

    claimed = []
    while (job := await queue.claim("w", lease_seconds=LEASE, now=T0 + 10)) is not None:
        claimed.append(job.id)

    assert claimed == [ids[1], ids[3], ids[2], ids[5], ids[0], ids[4]]


async def test_a_job_waiting_for_its_retry_time_is_not_claimed_before_it(
    queue: JobQueue,
) -> None:
    job, _ = await queue.enqueue(make_job(level=2), now=T0)
    other, _ = await queue.enqueue(make_job(level=0), now=T0)
    claimed = await queue.claim("w", lease_seconds=LEASE, now=T0)
    assert claimed is not None
    assert claimed.id == job.id
    assert await queue.retry_later(
        job.id, "w", error=JobError("InternalError", "boom"), available_at=T0 + 60, in_doubt=False
    )

    first = await queue.claim("w", lease_seconds=LEASE, now=T0 + 1)
    assert first is not None
    assert first.id == other.id
    assert await queue.record_submitted(other.id, "w", "ci-1", now=T0 + 1)
    assert await queue.claim("w", lease_seconds=LEASE, now=T0 + 59) is None
    again = await queue.claim("w", lease_seconds=LEASE, now=T0 + 60)
    assert again is not None
    assert again.id == job.id
    assert again.last_error == JobError("InternalError", "boom")


async def test_an_expired_lease_returns_the_job_and_fences_the_old_owner(
    queue: JobQueue,
) -> None:
    job, _ = await queue.enqueue(make_job(), now=T0)
    first = await queue.claim("dead-worker", lease_seconds=LEASE, now=T0)
    assert first is not None
    assert first.lease_owner == "dead-worker"
    assert await queue.claim("other", lease_seconds=LEASE, now=T0 + LEASE - 1) is None

    second = await queue.claim("other", lease_seconds=LEASE, now=T0 + LEASE)
    assert second is not None
    assert second.id == job.id
    assert second.lease_owner == "other"
    # The first owner lost the job: none of its writes land.
    assert not await queue.heartbeat(job.id, "dead-worker", lease_seconds=LEASE, now=T0 + LEASE)
    assert not await queue.begin_attempt(
        job.id, "dead-worker", now=T0 + LEASE, lookup_after=T0 + LEASE
    )
    assert not await queue.record_submitted(job.id, "dead-worker", "ci-1", now=T0 + LEASE)
    assert await queue.record_submitted(job.id, "other", "ci-2", now=T0 + LEASE + 1)
    stored = await queue.get(job.id)
    assert stored is not None
    assert stored.state == "submitted"
    assert stored.ci_job_id == "ci-2"


async def test_a_heartbeat_keeps_the_lease(queue: JobQueue) -> None:
    job, _ = await queue.enqueue(make_job(), now=T0)
    assert await queue.claim("w", lease_seconds=LEASE, now=T0) is not None
    assert await queue.heartbeat(job.id, "w", lease_seconds=LEASE, now=T0 + 20)
    assert await queue.claim("x", lease_seconds=LEASE, now=T0 + LEASE + 1) is None
    assert await queue.claim("x", lease_seconds=LEASE, now=T0 + 20 + LEASE) is not None


async def test_begin_attempt_counts_and_marks_in_doubt_durably(
    queue: JobQueue, open_backend: OpenBackend
) -> None:
    job, _ = await queue.enqueue(make_job(), now=T0)
    await queue.claim("w", lease_seconds=LEASE, now=T0)
    assert await queue.begin_attempt(job.id, "w", now=T0 + 1, lookup_after=T0 + 11)

    # Seen through storage opened a second time, as another process or replica would after a crash.
    stored = await (await open_backend()).queue.get(job.id)
    assert stored is not None
    assert stored.in_doubt
    assert stored.attempts == 1
    assert stored.lookup_after == T0 + 11

    assert await queue.retry_later(
        job.id, "w", error=JobError("Timeout", "t"), available_at=T0 + 5, in_doubt=True
    )
    again = await queue.claim("w2", lease_seconds=LEASE, now=T0 + 5)
    assert again is not None
    assert again.in_doubt
    assert again.attempts == 1


async def test_retry_later_can_count_an_attempt_without_sending(queue: JobQueue) -> None:
    job, _ = await queue.enqueue(make_job(), now=T0)
    await queue.claim("w", lease_seconds=LEASE, now=T0)
    assert await queue.retry_later(
        job.id,
        "w",
        error=JobError("Timeout", "lookup failed"),
        available_at=T0,
        in_doubt=True,
        count_attempt=True,
    )
    stored = await queue.get(job.id)
    assert stored is not None
    assert stored.attempts == 1
    assert stored.lease_owner is None


async def test_bury_makes_the_job_dead_with_its_error_and_retry_requeues_it(
    queue: JobQueue,
) -> None:
    job, _ = await queue.enqueue(make_job(), now=T0)
    await queue.claim("w", lease_seconds=LEASE, now=T0)
    await queue.begin_attempt(job.id, "w", now=T0, lookup_after=T0)
    assert await queue.bury(job.id, "w", error=JobError("InvalidArgument", "bad"), now=T0 + 1)
    dead = await queue.get(job.id)
    assert dead is not None
    assert dead.state == "dead"
    assert dead.finished_at == T0 + 1
    assert dead.last_error == JobError("InvalidArgument", "bad")
    assert await queue.claim("w", lease_seconds=LEASE, now=T0 + 100) is None

    requeued = await queue.requeue_dead(job.id, now=T0 + 2)
    assert requeued is not None
    assert requeued.state == "queued"
    assert requeued.attempts == 0
    assert requeued.finished_at is None
    assert await queue.requeue_dead(job.id, now=T0 + 3) is None  # no longer dead
    assert await queue.claim("w", lease_seconds=LEASE, now=T0 + 2) is not None


async def test_release_gives_a_claimed_job_back_at_once(queue: JobQueue) -> None:
    job, _ = await queue.enqueue(make_job(), now=T0)
    await queue.claim("w", lease_seconds=LEASE, now=T0)
    assert await queue.release(job.id, "w", now=T0 + 1)
    released = await queue.claim("x", lease_seconds=LEASE, now=T0 + 1)
    assert released is not None
    assert released.id == job.id


async def test_idempotency_key_returns_the_same_job_or_conflicts(queue: JobQueue) -> None:
    first, created = await queue.enqueue(make_job(key="k1", fingerprint="f1"), now=T0)
    assert created
    again, created_again = await queue.enqueue(make_job(key="k1", fingerprint="f1"), now=T0 + 1)
    assert not created_again
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict) as info:
        await queue.enqueue(make_job(key="k1", fingerprint="f2"), now=T0 + 2)
    assert info.value.existing.id == first.id
    assert (await queue.depth_by_state())["queued"] == 1


async def test_cancel_queued_only_cancels_queued_jobs(queue: JobQueue) -> None:
    job, _ = await queue.enqueue(make_job(), now=T0)
    before = await queue.cancel_queued(job.id, now=T0 + 1)
    assert before is not None
    assert before.state == "queued"
    cancelled = await queue.get(job.id)
    assert cancelled is not None
    assert cancelled.state == "cancelled"
    assert cancelled.finished_at == T0 + 1
    assert await queue.cancel_queued(job.id, now=T0 + 2) is None
    assert await queue.claim("w", lease_seconds=LEASE, now=T0 + 3) is None


async def test_a_claimed_job_cancelled_meanwhile_refuses_the_workers_writes(
    queue: JobQueue,
) -> None:
    job, _ = await queue.enqueue(make_job(), now=T0)
    await queue.claim("w", lease_seconds=LEASE, now=T0)
    await queue.cancel_queued(job.id, now=T0 + 1)
    assert not await queue.begin_attempt(job.id, "w", now=T0 + 1, lookup_after=T0 + 1)
    assert not await queue.record_submitted(job.id, "w", "ci-1", now=T0 + 2)
    assert await queue.attach_ci_job(job.id, "ci-1")
    stored = await queue.get(job.id)
    assert stored is not None
    assert stored.state == "cancelled"
    assert stored.ci_job_id == "ci-1"


async def test_events_side_state_changes(queue: JobQueue) -> None:
    job, _ = await queue.enqueue(make_job(), now=T0)
    assert not await queue.mark_running(job.id)  # still queued
    await queue.claim("w", lease_seconds=LEASE, now=T0)
    await queue.record_submitted(job.id, "w", "ci-1", now=T0 + 1)
    assert [j.id for j in await queue.unfinished_batches(10)] == [job.id]
    assert await queue.mark_running(job.id)
    assert not await queue.mark_running(job.id)
    assert [j.id for j in await queue.unfinished_batches(10)] == [job.id]
    assert await queue.finish(job.id, "succeeded", at=T0 + 9)
    assert not await queue.finish(job.id, "failed", at=T0 + 10)  # already final: no-op
    stored = await queue.get(job.id)
    assert stored is not None
    assert stored.state == "succeeded"
    assert stored.finished_at == T0 + 9
    assert await queue.unfinished_batches(10) == []


async def test_depth_oldest_age_and_next_available(queue: JobQueue) -> None:
    assert await queue.oldest_queued_age(T0) == 0.0
    assert await queue.next_available_at() is None
    a, _ = await queue.enqueue(make_job(), now=T0)
    await queue.enqueue(make_job(), now=T0 + 5)
    await queue.claim("w", lease_seconds=LEASE, now=T0 + 6)
    await queue.record_submitted(a.id, "w", "ci-1", now=T0 + 6)

    depth = await queue.depth_by_state()
    assert depth == {
        "queued": 1,
        "submitted": 1,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
        "dead": 0,
    }
    assert await queue.oldest_queued_age(T0 + 10) == 5.0
    assert await queue.next_available_at() == T0 + 5


async def test_list_is_newest_first_with_a_keyset_cursor(queue: JobQueue) -> None:
    ids = [(await queue.enqueue(make_job(), now=T0 + i))[0].id for i in range(7)]
    seen: list[str] = []
    before = None
    while page := await queue.list_jobs(limit=3, before_seq=before):
        seen += [j.id for j in page]
        before = page[-1].seq
        # A job enqueued while paging does not shift the pages still to come.
        await queue.enqueue(make_job(), now=T0 + 100)
    assert seen == ids[::-1]


async def test_list_filters_by_state(queue: JobQueue) -> None:
    a, _ = await queue.enqueue(make_job(), now=T0)
    b, _ = await queue.enqueue(make_job(), now=T0)
    await queue.cancel_queued(a.id, now=T0)
    assert [j.id for j in await queue.list_jobs(states=["cancelled"])] == [a.id]
    assert [j.id for j in await queue.list_jobs(states=["queued", "cancelled"])] == [b.id, a.id]


async def test_wait_changed_wakes_on_enqueue(queue: JobQueue) -> None:
    waiter = asyncio.create_task(queue.wait_changed(3600))
    await asyncio.sleep(0)  # let the waiter start waiting
    await queue.enqueue(make_job(), now=T0)
    await asyncio.wait_for(waiter, timeout=10)


async def test_concurrent_enqueues_commit_together_and_keep_idempotency(
    queue: JobQueue,
) -> None:
    plain = [make_job() for _ in range(30)]
    same_key = [make_job(key="shared", fingerprint="f") for _ in range(5)]
    clash = make_job(key="shared", fingerprint="other")
    results = await asyncio.gather(
        *(queue.enqueue(job, now=T0) for job in [*plain, *same_key, clash]),
        return_exceptions=True,
    )

    assert all(isinstance(r, tuple) and r[1] for r in results[:30])
    keyed = results[30:35]
    assert all(isinstance(r, tuple) for r in keyed)
    ids = {r[0].id for r in keyed if isinstance(r, tuple)}
    assert len(ids) == 1
    assert [r[1] for r in keyed if isinstance(r, tuple)] == [True, False, False, False, False]
    assert isinstance(results[35], IdempotencyConflict)
    assert results[35].existing.id in ids
    assert (await queue.depth_by_state())["queued"] == 31


async def test_a_failing_job_does_not_fail_the_jobs_committed_with_it(
    queue: JobQueue,
) -> None:
    good = make_job()
    duplicate_id = make_job()
    first, _ = await queue.enqueue(duplicate_id, now=T0)
    results = await asyncio.gather(
        queue.enqueue(good, now=T0), queue.enqueue(duplicate_id, now=T0), return_exceptions=True
    )
    assert isinstance(results[0], tuple)
    assert results[0][0].id == good.id
    assert isinstance(results[1], Exception)  # the same job id twice: refused by the database
    assert (await queue.depth_by_state())["queued"] == 2
    assert first.id == duplicate_id.id


async def test_a_stored_request_comes_back_as_it_was_accepted(queue: JobQueue) -> None:
    # Key order matters: the submission XML is built from the request in this order.
    request = {"Type": "Job", "Name": "zé", "Operation": {"Tag": "Transcode", "JobLevel": "2"}}
    record, _ = await queue.enqueue(dataclasses.replace(make_job(), request=request), now=T0)
    stored = await queue.get(record.id)
    assert stored is not None
    assert list(stored.request) == ["Type", "Name", "Operation"]
    assert stored.request == request
    assert record.request == request


# --- several storages on one database: processes sharing a file, replicas sharing PostgreSQL ---


async def test_storages_claiming_at_once_never_hand_out_one_job_twice(
    storage: Storage, open_backend: OpenBackend
) -> None:
    ids = set()
    for i in range(400):
        record, _ = await storage.queue.enqueue(make_job(level=i % 3), now=T0)
        ids.add(record.id)
    replicas = [storage, await open_backend()]
    claimed: list[tuple[str, str]] = []
    # Every worker holds its first job until all hold one: 16 claims open at once, over both.
    all_holding = asyncio.Barrier(16)

    async def worker(queue: JobQueue, owner: str) -> None:
        first = True
        while (job := await queue.claim(owner, lease_seconds=LEASE, now=T0 + 1)) is not None:
            claimed.append((job.id, owner))
            if first:
                await all_holding.wait()
                first = False
            assert await queue.record_submitted(job.id, owner, f"ci-{job.id}", now=T0 + 2)

    await asyncio.gather(
        *(
            worker(replica.queue, f"replica{r}-worker{w}")
            for r, replica in enumerate(replicas)
            for w in range(8)
        )
    )

    assert len(claimed) == len({job_id for job_id, _ in claimed}) == 400
    assert {job_id for job_id, _ in claimed} == ids
    assert len({owner for _, owner in claimed}) == 16  # every worker of both took work
    assert (await storage.queue.depth_by_state())["submitted"] == 400


async def test_one_idempotency_key_sent_to_two_storages_at_once_makes_one_job(
    storage: Storage, open_backend: OpenBackend
) -> None:
    first, second = storage.queue, (await open_backend()).queue
    keys = [f"key-{i}" for i in range(40)]
    # The same keys in opposite orders: each storage's batch meets the other's keys in reverse.
    sends = [
        *(first.enqueue(make_job(key=k, fingerprint=f"f-{k}"), now=T0) for k in keys),
        *(second.enqueue(make_job(key=k, fingerprint=f"f-{k}"), now=T0) for k in reversed(keys)),
        *(second.enqueue(make_job(key=k, fingerprint="other"), now=T0) for k in keys[::10]),
    ]
    results = await asyncio.gather(*sends, return_exceptions=True)

    answers = [r for r in results if isinstance(r, tuple)]
    conflicts = [r for r in results if isinstance(r, IdempotencyConflict)]
    assert len(answers) == 80
    assert len(conflicts) == 4
    by_key = {
        key: [record for record, _ in group]
        for key, group in itertools.groupby(
            sorted(answers, key=lambda a: str(a[0].idempotency_key)),
            key=lambda a: a[0].idempotency_key,
        )
    }
    assert sorted(by_key) == sorted(keys)
    assert all(len({record.id for record in group}) == 1 for group in by_key.values())
    assert sum(created for _, created in answers) == 40
    assert {c.existing.id for c in conflicts} == {by_key[k][0].id for k in keys[::10]}
    assert (await first.depth_by_state())["queued"] == 40
