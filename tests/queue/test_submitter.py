"""The submitter against the emulator on a real socket, in burst mode (no sleeps, no timing)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from service.intake import enqueue, submission_name
from service.queue import JobError, JobQueue, JobRecord
from service.ratelimit import RateLimiter
from service.request import request_from_tree
from service.submitter import submission_xml
from service.tokens import job_id_from_token
from service.xmlsafe import parse_xml
from tests.queue.conftest import RigFactory
from tests.queue.rig import TARGET, Rig, until
from tests.queue.samples import BUCKET, REGION, request_tree


async def test_jobs_reach_ci_once_each_in_priority_order(make_rig: RigFactory) -> None:
    rig = await make_rig(workers=1)
    low = await rig.enqueue(["low1", "low2"], level=0)
    high = await rig.enqueue(["high1", "high2"], level=2)
    mid = await rig.enqueue(["mid1"], level=1)

    assert await rig.submitter().run_burst() == 5

    jobs = [await rig.queue.get(j.id) for j in [*high, *mid, *low]]
    assert all(j is not None and j.state == "submitted" and j.attempts == 1 for j in jobs)
    order = sorted(jobs, key=lambda j: j.submitted_at or 0)  # type: ignore[union-attr]
    assert [j.submit_name.split("-")[0] for j in order if j] == [
        "high1",
        "high2",
        "mid1",
        "low1",
        "low2",
    ]
    # CI's list call shows exactly these five names, each once, each with our CI job id.
    assert sorted(await rig.names_at_ci()) == sorted(j.submit_name for j in jobs if j)
    assert len({j.ci_job_id for j in jobs if j}) == 5
    assert rig.submitted("created") == 5


async def test_injected_5xx_are_retried_until_every_job_is_created_once(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(emulator_error_rate=0.4, retry_max_attempts=30)
    jobs = await rig.enqueue([f"job{i}" for i in range(20)])

    await rig.submitter().run_burst()

    stats = await rig.stats()
    assert stats["requests"]["failed"] > 0
    stored = [await rig.queue.get(j.id) for j in jobs]
    assert all(j is not None and j.state == "submitted" for j in stored)
    assert sum(j.attempts for j in stored if j) == 20 + stats["requests"]["failed"]
    assert await rig.created_at_ci() == 20
    assert sorted(await rig.names_at_ci()) == sorted(j.submit_name for j in jobs)
    assert rig.submitted("retry") == stats["requests"]["failed"]


async def test_retries_back_off_with_full_jitter_within_the_cap(make_rig: RigFactory) -> None:
    rig = await make_rig(emulator_error_rate=1.0, retry_base_seconds=100.0, retry_cap_seconds=150.0)
    (job,) = await rig.enqueue(["always-failing"])
    submitter = rig.submitter(workers=1)
    before = time.time()

    # Stop the burst once the first attempt has failed and the job is back in the queue.
    task = asyncio.create_task(submitter.run_burst())
    stored = await rig.queue.get(job.id)
    while stored is not None and (stored.attempts < 1 or stored.lease_owner is not None):
        await rig.queue.wait_changed(1.0)
        stored = await rig.queue.get(job.id)
    await submitter.stop(grace=0)
    await task

    assert stored is not None
    assert stored.state == "queued"
    assert stored.attempts == 1
    assert stored.last_error == JobError("InternalError", "internal error, please retry")
    # The first retry waits uniformly in [0, base]: never beyond it, never in the past.
    assert before <= stored.available_at <= time.time() + 100.0


async def test_exhausted_retries_dead_letter_the_job(make_rig: RigFactory) -> None:
    rig = await make_rig(emulator_error_rate=1.0, retry_max_attempts=3)
    (job,) = await rig.enqueue(["doomed"])

    await rig.submitter().run_burst()

    dead = await rig.queue.get(job.id)
    assert dead is not None
    assert dead.state == "dead"
    assert dead.attempts == 3
    assert dead.last_error == JobError("InternalError", "internal error, please retry")
    assert (rig.submitted("retry"), rig.submitted("dead")) == (2, 1)
    assert await rig.created_at_ci() == 0


async def test_a_permanent_error_dead_letters_at_once_with_cis_code(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(ci_secret_key="not-the-key")
    (job,) = await rig.enqueue(["unsigned"])

    await rig.submitter().run_burst()

    dead = await rig.queue.get(job.id)
    assert dead is not None
    assert dead.state == "dead"
    assert dead.attempts == 1
    assert dead.last_error is not None
    assert dead.last_error.code == "SignatureDoesNotMatch"
    assert dead.last_error.message
    assert rig.submitted("dead") == 1
    assert rig.submitted("retry") == 0


async def test_throttling_is_retried_and_every_job_still_reaches_ci_once(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig(emulator_throttle_rate=0.3, retry_max_attempts=30)
    jobs = await rig.enqueue([f"job{i}" for i in range(20)])

    await rig.submitter().run_burst()

    stats = await rig.stats()
    assert stats["requests"]["throttled"] > 0
    assert rig.metrics.registry.get_sample_value("cirelay_ci_throttled_total") == float(
        stats["requests"]["throttled"]
    )
    assert await rig.states(jobs) == ["submitted"] * 20
    assert await rig.created_at_ci() == 20
    assert rig.submitted("retry") == stats["requests"]["throttled"]


async def test_throttling_slows_the_bucket_down(make_rig: RigFactory) -> None:
    rig = await make_rig(emulator_throttle_rate=1.0, retry_max_attempts=4, ci_rate_limit=40.0)
    rig.limiter = RateLimiter(40.0, 8, decrease_cooldown=0.0)
    (job,) = await rig.enqueue(["throttled"])

    await rig.submitter().run_burst()

    dead = await rig.queue.get(job.id)
    assert dead is not None
    assert dead.state == "dead"
    assert dead.last_error is not None
    assert dead.last_error.code == "SlowDown"
    assert rig.limiter.rate((REGION, BUCKET)) == 40.0 / 2**4  # halved on each of 4 answers


# The limiter does not touch the queue: once is enough, and it takes seconds.
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_the_rate_limit_holds_within_ten_percent(make_rig: RigFactory) -> None:
    rate = 20.0
    rig = await make_rig(ci_rate_limit=rate, workers=4, ci_concurrency=8)
    await rig.enqueue([f"job{i}" for i in range(80)])

    started = time.monotonic()
    await rig.submitter().run_burst()
    elapsed = time.monotonic() - started

    created = await rig.created_at_ci()
    assert created == 80
    assert rate * 0.9 <= created / elapsed <= rate * 1.1, (created, elapsed)


async def test_lost_answers_are_resolved_by_name_without_a_second_create(
    make_rig: RigFactory,
) -> None:
    # CI carries out the create but answers 500: the in-doubt case, every time it happens.
    rig = await make_rig(emulator_lost_response_rate=0.4, retry_max_attempts=30)
    jobs = await rig.enqueue([f"job{i}" for i in range(20)])

    await rig.submitter().run_burst()

    stats = await rig.stats()
    assert stats["requests"]["lost"] > 0
    stored = [await rig.queue.get(j.id) for j in jobs]
    assert all(j is not None and j.state == "submitted" and not j.in_doubt for j in stored)
    names = await rig.names_at_ci()
    assert sorted(names) == sorted(j.submit_name for j in jobs)  # each exactly once
    assert rig.submitted("adopted") > 0
    assert rig.submitted("created") + rig.submitted("adopted") == 20


async def test_a_job_whose_worker_died_after_sending_is_adopted(make_rig: RigFactory) -> None:
    rig = await make_rig()
    (job,) = await rig.enqueue(["orphan"])
    # A worker claimed it, marked it in doubt, sent it, and died before recording the answer.
    t0 = time.time()
    assert await rig.queue.claim("dead-worker", lease_seconds=0.0, now=t0) is not None
    assert await rig.queue.begin_attempt(job.id, "dead-worker", now=t0, lookup_after=t0)
    created = await rig.ci.create(BUCKET, REGION, submission_xml(rig.settings, job))

    await rig.submitter().run_burst()

    adopted = await rig.queue.get(job.id)
    assert adopted is not None
    assert adopted.state == "submitted"
    assert adopted.ci_job_id == created.job_id
    assert await rig.created_at_ci() == 1
    assert rig.submitted("adopted") == 1
    assert rig.submitted("created") == 0


async def test_a_job_whose_worker_died_before_sending_is_created_once(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig()
    (job,) = await rig.enqueue(["never-sent"])
    t0 = time.time()
    await rig.queue.claim("dead-worker", lease_seconds=0.0, now=t0)
    await rig.queue.begin_attempt(job.id, "dead-worker", now=t0, lookup_after=t0)

    await rig.submitter().run_burst()

    stored = await rig.queue.get(job.id)
    assert stored is not None
    assert stored.state == "submitted"
    assert stored.attempts == 2
    assert await rig.names_at_ci() == [job.submit_name]


async def test_an_in_doubt_job_is_not_looked_up_before_its_lookup_time(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig()
    (job,) = await rig.enqueue(["recent"])
    t0 = time.time()
    await rig.queue.claim("dead-worker", lease_seconds=0.0, now=t0)
    # The worker died right after sending: its request may still be on the way to CI.
    await rig.queue.begin_attempt(job.id, "dead-worker", now=t0, lookup_after=t0 + 3600)

    submitter = rig.submitter()
    task = asyncio.create_task(submitter.run_burst())
    stored = await rig.queue.get(job.id)
    while stored is not None and stored.available_at < t0 + 3600:
        await rig.queue.wait_changed(1.0)
        stored = await rig.queue.get(job.id)
    await submitter.stop(grace=0)
    await task

    assert stored is not None
    assert stored.state == "queued"
    assert stored.in_doubt
    assert stored.available_at == t0 + 3600
    assert stored.attempts == 1
    assert (await rig.stats())["requests"]["total"] == 0  # neither a lookup nor a create yet


async def test_graceful_stop_releases_in_flight_jobs_and_loses_none(
    make_rig: RigFactory, queue: JobQueue
) -> None:
    rig = await make_rig(emulator_latency_ms=300, ci_timeout_seconds=1.0, workers=4)
    jobs = await rig.enqueue([f"job{i}" for i in range(8)])
    submitter = rig.submitter()
    submitter.start()
    while not await rig.in_doubt(jobs):
        await queue.wait_changed(0.05)

    await submitter.stop(grace=0.0)  # no grace: everything in flight is released

    after_stop = [await queue.get(j.id) for j in jobs]
    assert all(j is not None and j.lease_owner is None for j in after_stop)
    assert all(j.state in ("queued", "submitted") for j in after_stop if j)

    # The next process picks the released jobs up; the in-doubt ones are looked up first.
    await rig.submitter().run_burst()
    assert await rig.states(jobs) == ["submitted"] * 8
    assert sorted(await rig.names_at_ci()) == sorted(j.submit_name for j in jobs)


async def test_a_job_cancelled_while_its_create_is_in_flight_is_cancelled_at_ci(
    make_rig: RigFactory, queue: JobQueue
) -> None:
    rig = await make_rig(emulator_latency_ms=200, emulator_job_seconds=60, workers=1)
    (job,) = await rig.enqueue(["cancel-me"])
    submitter = rig.submitter()
    task = asyncio.create_task(submitter.run_burst())
    while not await rig.in_doubt([job]):
        await queue.wait_changed(0.02)
    assert await queue.cancel_queued(job.id, now=time.time()) is not None
    await task

    stored = await queue.get(job.id)
    assert stored is not None
    assert stored.state == "cancelled"
    assert stored.ci_job_id
    at_ci = await rig.ci.get(BUCKET, REGION, stored.ci_job_id)
    assert at_ci is not None
    assert at_ci.state == "Cancel"
    assert rig.submitted("cancelled") == 1


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_a_worker_outlives_the_database_failing_under_an_in_flight_job(
    make_rig: RigFactory, queue: JobQueue, request: pytest.FixtureRequest
) -> None:
    # The create call is in flight when PostgreSQL stops: recording its outcome fails, and so
    # does recording a retry. The one worker must live on and finish the job once it is back.
    server = request.getfixturevalue("postgres_server")
    rig = await make_rig(emulator_latency_ms=300, workers=1, lease_seconds=1.0)
    (job,) = await rig.enqueue(["outlives"])
    submitter = rig.submitter()
    submitter.start()
    try:
        while not await rig.in_doubt([job]):
            await queue.wait_changed(0.02)
        await asyncio.to_thread(server.halt)
        await until(lambda: _created_at_ci(rig), "the create call to be answered")
        await asyncio.to_thread(server.resume)
        # Claimed again once its lease ran out, looked up by name, found: submitted, once.
        await until(lambda: _states_are(rig, [job], ["submitted"]), "the job to be submitted")
    finally:
        await submitter.stop(grace=0.0)
    assert await rig.created_at_ci() == 1


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_the_heartbeat_outlives_the_database_failing_under_an_in_flight_job(
    make_rig: RigFactory, queue: JobQueue, request: pytest.FixtureRequest
) -> None:
    # A slow create call, and PostgreSQL away for a few heartbeats meanwhile: once it is back
    # the lease is renewed again, so it cannot lapse under the call still in flight.
    server = request.getfixturevalue("postgres_server")
    lease = 0.6  # a heartbeat every 0.2 s
    rig = await make_rig(
        emulator_latency_ms=6000, workers=1, lease_seconds=lease, ci_timeout_seconds=10.0
    )
    (job,) = await rig.enqueue(["heartbeat"])
    submitter = rig.submitter()
    submitter.start()
    try:
        while not await rig.in_doubt([job]):
            await queue.wait_changed(0.02)
        await asyncio.to_thread(server.halt)
        await asyncio.sleep(lease)  # time passing is the point: heartbeats fail meanwhile
        await asyncio.to_thread(server.resume)
        resumed = time.time()

        async def renewed() -> bool:
            current = await queue.get(job.id)
            assert current is not None
            return current.state == "queued" and current.available_at > resumed + lease / 2

        await until(renewed, "a heartbeat after the database came back", deadline=3)
    finally:
        await submitter.stop(grace=0.0)


async def _created_at_ci(rig: Rig) -> bool:
    return await rig.created_at_ci() == 1


async def _states_are(rig: Rig, jobs: list[JobRecord], states: list[str]) -> bool:
    return await rig.states(jobs) == states


# --- what is sent -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        ({}, "ours"),
        ({"CallBack": "https://caller.example/cb"}, "ours"),
        ({"CallBack": "no"}, "no"),
        (
            {
                "CallBackType": "TDMQ",
                "CallBackMqConfig": {"MqRegion": "gz", "MqMode": "Queue", "MqName": "q"},
            },
            None,
        ),
    ],
    ids=["none", "caller-url", "no", "tdmq"],
)
async def test_the_callback_is_wired_to_cirelay_unless_tdmq_or_no(
    make_rig: RigFactory, operation: dict[str, Any], expected: str | None
) -> None:
    rig = await make_rig(public_url="https://relay.example.com/")
    job, _ = await enqueue(
        rig.queue, request_from_tree(request_tree("cb", **operation)), TARGET, via="http"
    )
    assert job.caller_callback == operation.get("CallBack", "")

    sent = request_from_tree(parse_xml(submission_xml(rig.settings, job)), from_xml=True)
    assert sent.name == submission_name("cb", job.id)
    callback = sent.operation.callback
    if expected == "ours":
        assert callback is not None
        prefix = "https://relay.example.com/v1/callbacks/"
        assert callback.startswith(prefix)
        assert job_id_from_token(rig.settings.callback_key, callback[len(prefix) :]) == job.id
    else:
        assert callback == expected
    # The stored request keeps the caller's own choice.
    stored = await rig.queue.get(job.id)
    assert stored is not None
    assert stored.request == request_tree("cb", **operation)
