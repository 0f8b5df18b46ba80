"""Batch and media job lifecycle: expansion, outputs, priority, cancellation, persistence."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path

from service.emulator.records import CANCEL, RUNNING, SUBMITTED, SUCCESS, MediaJob
from service.emulator.times import CST
from tests.emulator.conftest import (
    BUCKET,
    WAIT,
    Emulator,
    Receiver,
    StartEmulator,
    emulator_settings,
    wait_idle,
)
from tests.emulator.test_sdk import create, get_batch, list_all


def children(emulator: Emulator, batch_id: str) -> list[MediaJob]:
    jobs = [j for j in emulator.engine.media.values() if j.batch_id == batch_id]
    return sorted(jobs, key=lambda j: j.seq)


async def wait_until_running(emulator: Emulator, job: MediaJob) -> None:
    async with asyncio.timeout(WAIT):
        await emulator.engine.wait_until(lambda: job.state == RUNNING)


def touch(root: Path, key: str, when: str) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"media")
    stamp = datetime.fromisoformat(when).timestamp()
    os.utime(path, (stamp, stamp))


async def test_each_input_kind_expands_to_its_objects(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(emulator_settings(emulator_objects_per_prefix=2))
    sdk = emulator.sdk()
    by_kind = {
        kind: await create(sdk, Input={kind: value})
        for kind, value in [
            ("Object", "in/one.mp4"),
            ("Prefix", "in"),
            ("Manifest", "inventory/manifest.json"),
            ("UrlFile", "lists/urls.txt"),
        ]
    }
    await wait_idle(emulator)

    keys = {
        kind: [j.object_key for j in children(emulator, b["JobId"])] for kind, b in by_kind.items()
    }
    assert keys == {
        "Object": ["in/one.mp4"],
        "Prefix": ["in/object-1.mp4", "in/object-2.mp4"],
        "Manifest": ["inventory/manifest/object-1.mp4", "inventory/manifest/object-2.mp4"],
        "UrlFile": ["lists/urls/object-1.mp4", "lists/urls/object-2.mp4"],
    }


async def test_a_bucket_dir_supplies_the_objects_and_time_interval_filters_them(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    touch(tmp_path, "input/old.mp4", "2022-01-15T12:00:00+08:00")
    touch(tmp_path, "input/new.mp4", "2022-03-01T12:00:00+08:00")
    touch(tmp_path, "input/later.mp4", "2022-06-01T12:00:00+08:00")
    touch(tmp_path, "other/x.mp4", "2022-03-01T12:00:00+08:00")
    touch(tmp_path, "manifest.json", "2022-03-01T12:00:00+08:00")
    emulator = await start_emulator(emulator_settings(emulator_bucket_dir=str(tmp_path)))
    sdk = emulator.sdk()

    everything = await create(sdk, Input={"Prefix": "input/"})
    windowed = await create(
        sdk,
        Input={"Prefix": "input/"},
        TimeInterval={"Start": "2022-02-01T12:00:00+0800", "End": "2022-05-01T12:00:00+0800"},
    )
    manifest = await create(sdk, Input={"Manifest": "manifest.json"})
    nothing = await create(sdk, Input={"Prefix": "missing/"})
    await wait_idle(emulator)

    def keys(batch: dict[str, str]) -> list[str]:
        return [j.object_key for j in children(emulator, batch["JobId"])]

    assert keys(everything) == ["input/later.mp4", "input/new.mp4", "input/old.mp4"]
    assert keys(windowed) == ["input/new.mp4"]
    assert keys(manifest) == ["input/later.mp4", "input/new.mp4", "input/old.mp4", "other/x.mp4"]
    assert keys(nothing) == []
    assert (await get_batch(sdk, nothing["JobId"]))["JobsDetail"][0]["State"] == SUCCESS


async def test_output_variables_are_substituted(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    batch = await create(
        emulator.sdk(),
        Tag="Snapshot",
        Input={"Object": "videos/cat.mp4"},
        JobParam={"Snapshot": {"Count": "3"}},
        Output={
            "Region": "ap-chongqing",
            "Bucket": "test-1234567890",
            "Object": "shots/${InventoryTriggerJobId}/${InputName}-${Number}.jpg",
        },
    )
    await wait_idle(emulator)

    (job,) = children(emulator, batch["JobId"])
    prefix = f"shots/{batch['JobId']}/cat-"
    assert job.output_object == prefix + "${Number}.jpg"
    assert job.output_names == [f"{prefix}{n}.jpg" for n in range(3)]
    assert job.output_prefix == prefix


async def test_higher_job_level_runs_first_when_the_pool_is_busy(
    start_emulator: StartEmulator,
) -> None:
    emulator = await start_emulator(emulator_settings(emulator_workers=1))
    sdk = emulator.sdk()
    emulator.engine.pause()
    low = await create(sdk, JobLevel="0")
    high = await create(sdk, JobLevel="2")
    middle = await create(sdk, JobLevel="1")
    emulator.engine.resume()
    await wait_idle(emulator)

    ran = sorted(emulator.engine.media.values(), key=lambda j: j.run_seq)
    order = [j.batch_id for j in ran]
    assert order == [high["JobId"]] * 3 + [middle["JobId"]] * 3 + [low["JobId"]] * 3
    assert [j.job_id for j in ran[:3]] == [j.job_id for j in children(emulator, high["JobId"])]


async def test_a_batch_goes_submitted_running_success(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator(emulator_settings(emulator_job_seconds=60))
    sdk = emulator.sdk()
    emulator.engine.pause()
    batch = await create(sdk, Input={"Object": "a.mp4"})
    (job,) = children(emulator, batch["JobId"])

    submitted = (await get_batch(sdk, batch["JobId"]))["JobsDetail"][0]
    emulator.engine.resume()
    await wait_until_running(emulator, job)
    running = (await get_batch(sdk, batch["JobId"]))["JobsDetail"][0]

    assert (submitted["State"], submitted["StartTime"], submitted["EndTime"]) == (
        SUBMITTED,
        "-",
        "-",
    )
    assert running["State"] == RUNNING
    assert running["StartTime"] != "-"
    assert running["EndTime"] == "-"


async def test_cancelling_a_running_media_job_ends_it_at_once(
    start_emulator: StartEmulator,
) -> None:
    # Jobs take a minute: the test finishing at all shows the cancel did not wait for them.
    emulator = await start_emulator(emulator_settings(emulator_job_seconds=60))
    sdk = emulator.sdk()
    batch = await create(sdk, Input={"Object": "a.mp4"})
    (job,) = children(emulator, batch["JobId"])
    await wait_until_running(emulator, job)

    await asyncio.to_thread(sdk.ci_cancel_jobs, Bucket=BUCKET, JobID=job.job_id)
    await wait_idle(emulator)

    assert job.state == CANCEL
    assert (await get_batch(sdk, batch["JobId"]))["JobsDetail"][0]["State"] == CANCEL


async def test_jobs_survive_a_restart_and_unfinished_ones_resume(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    state = str(tmp_path / "emulator.db")
    first = await start_emulator(emulator_settings(emulator_state=state, emulator_job_seconds=60))
    sdk = first.sdk()
    first.engine.pause()
    waiting = await create(sdk, Name="waiting")
    first.engine.resume()
    running = await create(sdk, Name="running", Input={"Object": "a.mp4"}, JobLevel="2")
    (interrupted,) = children(first, running["JobId"])
    await wait_until_running(first, interrupted)
    await first.stop()

    second = await start_emulator(emulator_settings(emulator_state=state))
    await wait_idle(second)

    sdk = second.sdk()
    listed = {d["Name"]: d for d in await list_all(sdk)}
    assert set(listed) == {"waiting", "running"}
    assert listed["waiting"]["JobId"] == waiting["JobId"]
    assert listed["waiting"]["CreationTime"] == waiting["CreationTime"]
    assert listed["waiting"]["State"] == SUCCESS
    assert listed["running"]["State"] == SUCCESS
    assert [j.state for j in second.engine.media.values()] == [SUCCESS] * 4
    # Ids keep being unique after the restart, even with the same seed.
    again = await create(sdk)
    assert again["JobId"] not in (waiting["JobId"], running["JobId"])


async def test_a_pending_callback_is_delivered_after_a_restart(
    start_emulator: StartEmulator, receiver: Receiver, tmp_path: Path
) -> None:
    state = str(tmp_path / "emulator.db")
    receiver.fail_first = 1
    first = await start_emulator(
        emulator_settings(
            emulator_state=state,
            emulator_callback_retries=5,
            emulator_callback_retry_seconds=60,
        )
    )
    await create(first.sdk(), Input={"Object": "a.mp4"}, CallBack=receiver.url)
    async with asyncio.timeout(WAIT), receiver.changed:
        await receiver.changed.wait_for(lambda: receiver.attempts == 1)
    await first.stop()

    second = await start_emulator(emulator_settings(emulator_state=state))
    (arrived,) = await receiver.wait_for(1)
    await wait_idle(second)

    assert b"<State>Success</State>" in arrived.body
    assert second.stats.callbacks_delivered == 1


async def test_times_are_china_standard_time(start_emulator: StartEmulator) -> None:
    emulator = await start_emulator()
    batch = await create(emulator.sdk())
    created = datetime.strptime(batch["CreationTime"], "%Y-%m-%dT%H:%M:%S%z")
    assert created.utcoffset() == CST.utcoffset(None)
