"""Each fault-injection knob does what it says, measured by counts."""

from __future__ import annotations

import time
from collections import Counter

import aiohttp
import pytest
from qcloud_cos.cos_exception import CosServiceError

from service.emulator.faults import TokenBucket
from service.xmlsafe import parse_xml
from tests.emulator.conftest import (
    BUCKET,
    Receiver,
    StartEmulator,
    batch_request,
    emulator_settings,
    wait_idle,
)
from tests.emulator.test_sdk import create, sdk_call, sdk_error


async def outcomes(start_emulator: StartEmulator, calls: int, **settings: float) -> Counter[str]:
    """Run ``calls`` list calls against an emulator with ``settings``; count status/Code."""
    emulator = await start_emulator(emulator_settings(**settings))
    sdk = emulator.sdk()
    seen: Counter[str] = Counter()
    for _ in range(calls):
        try:
            await sdk_call(sdk.ci_list_inventory_trigger_jobs, Bucket=BUCKET, Type="Job")
            seen["200"] += 1
        except CosServiceError as exc:
            code = parse_xml(exc.get_origin_msg().encode())["Error"]["Code"]
            seen[f"{exc.get_status_code()} {code}"] += 1
    return seen


async def test_latency_delays_every_answer(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(emulator_settings(emulator_latency_ms=150))
    started = time.monotonic()
    await sdk_call(emulator.sdk().ci_list_inventory_trigger_jobs, Bucket=BUCKET, Type="Job")
    # A lower bound only: the answer cannot come before the injected delay.
    assert time.monotonic() - started >= 0.15
    assert emulator.stats.requests_delayed == 1


async def test_error_rate_one_answers_every_call_with_a_5xx(
    start_emulator: StartEmulator,
) -> None:
    seen = await outcomes(start_emulator, 4, emulator_error_rate=1.0)
    assert seen == {"500 InternalError": 4}


async def test_error_rate_half_fails_some_calls(start_emulator: StartEmulator) -> None:
    seen = await outcomes(start_emulator, 40, emulator_error_rate=0.5)
    assert set(seen) == {"200", "500 InternalError"}
    assert sum(seen.values()) == 40


async def test_throttle_rate_answers_slow_down_with_429_or_503(
    start_emulator: StartEmulator,
) -> None:
    seen = await outcomes(start_emulator, 20, emulator_throttle_rate=1.0)
    assert set(seen) == {"429 SlowDown", "503 SlowDown"}


async def test_a_qps_quota_throttles_calls_over_it(start_emulator: StartEmulator) -> None:
    # 0.01 calls/s: a burst of one, and no refill within the test.
    seen = await outcomes(start_emulator, 4, emulator_qps=0.01)
    assert seen == {"200": 1, "429 SlowDown": 3}


def test_the_quota_refills_with_time() -> None:
    now = [100.0]
    bucket = TokenBucket(2.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] += 0.5
    assert [bucket.take() for _ in range(2)] == [True, False]


async def test_a_lost_answer_still_creates_the_job(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(emulator_settings(emulator_lost_response_rate=1.0))
    sdk = emulator.sdk()
    status, error = await sdk_error(
        sdk.ci_create_inventory_trigger_jobs, Bucket=BUCKET, JobBody=batch_request(Name="doubt")
    )
    assert (status, error["Code"]) == (500, "InternalError")
    assert emulator.stats.batches_created == {BUCKET: 1}
    assert emulator.stats.requests_lost == 1


async def test_duplicate_rate_one_delivers_every_callback_twice(
    start_emulator: StartEmulator, receiver: Receiver
) -> None:
    emulator = await start_emulator(emulator_settings(emulator_duplicate_rate=1.0))
    await create(emulator.sdk(), CallBack=receiver.url)

    arrived = await receiver.wait_for(6)
    await wait_idle(emulator)

    per_job = Counter(parse_xml(item.body)["Response"]["JobsDetail"]["JobId"] for item in arrived)
    assert sorted(per_job.values()) == [2, 2, 2]
    assert emulator.stats.callbacks_duplicated == 3
    assert emulator.stats.callbacks_delivered == 6


async def test_drop_rate_one_delivers_nothing(
    start_emulator: StartEmulator, receiver: Receiver
) -> None:
    emulator = await start_emulator(emulator_settings(emulator_drop_rate=1.0))
    await create(emulator.sdk(), CallBack=receiver.url)
    await wait_idle(emulator)

    assert receiver.attempts == 0
    assert emulator.stats.callbacks_dropped == 3
    assert emulator.stats.callbacks_due == 3


async def test_drop_rate_half_drops_some(start_emulator: StartEmulator, receiver: Receiver) -> None:
    emulator = await start_emulator(
        emulator_settings(emulator_drop_rate=0.5, emulator_objects_per_prefix=20)
    )
    await create(emulator.sdk(), CallBack=receiver.url)
    await wait_idle(emulator)

    dropped = emulator.stats.callbacks_dropped
    assert 0 < dropped < 20
    assert len(receiver.received) == emulator.stats.callbacks_delivered == 20 - dropped


async def test_reorder_delivers_a_batchs_callbacks_latest_first(
    start_emulator: StartEmulator, receiver: Receiver
) -> None:
    emulator = await start_emulator(emulator_settings(emulator_reorder=True, emulator_workers=1))
    batch = await create(emulator.sdk(), CallBack=receiver.url)

    arrived = await receiver.wait_for(3)

    order = [parse_xml(item.body)["Response"]["JobsDetail"]["JobId"] for item in arrived]
    children = [j for j in emulator.engine.media.values() if j.batch_id == batch["JobId"]]
    assert order == [j.job_id for j in sorted(children, key=lambda j: j.end_seq, reverse=True)]
    assert emulator.stats.callbacks_reordered_batches == 1


@pytest.mark.parametrize("rate", [0.0, 1.0])
async def test_failure_rate_decides_media_job_outcomes(
    start_emulator: StartEmulator, rate: float
) -> None:
    emulator = await start_emulator(emulator_settings(emulator_failure_rate=rate))
    await create(emulator.sdk())
    await wait_idle(emulator)
    assert emulator.stats.media_jobs_ended == {("Failed" if rate else "Success"): 3}


async def test_stats_are_served_as_json(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    await create(emulator.sdk())
    await wait_idle(emulator)
    async with (
        aiohttp.ClientSession() as session,
        session.get(emulator.endpoint + "/_emulator/stats") as response,
    ):
        stats = await response.json()
    assert stats["batches_created"] == {BUCKET: 1}
    assert stats["media_jobs_created"] == 3
    assert stats["media_jobs_ended"] == {"Success": 3}
    assert stats["requests"]["total"] == 1
    assert stats["idle"] is True
