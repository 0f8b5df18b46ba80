"""Helpers shared by the event tests: settings, jobs already at CI, callback bodies, metrics."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from service.queue import JobQueue, JobRecord, NewJob
from service.settings import Settings

API_TOKEN = "test-api-token"
STATIC_TOKEN = "static-callback-token-0123456789"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "callbacks"


def events_settings(tmp_path: Path, **environ: str) -> Settings:
    """Settings for an app that takes callbacks but talks to no CI unless told to."""
    return Settings.load(
        {
            "CIRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'cirelay.db'}",
            "CIRELAY_API_TOKEN": API_TOKEN,
            "CIRELAY_CALLBACK_TOKEN": STATIC_TOKEN,
            "CIRELAY_LOG_FORMAT": "json",
            "CIRELAY_SUBMITTER_ENABLED": "false",
            "CIRELAY_RECONCILE_ENABLED": "false",
            **environ,
        }
    )


async def submitted_job(
    queue: JobQueue,
    ci_job_id: str | None = None,
    *,
    tag: str = "Transcode",
    bucket: str = "media-1250000000",
    region: str = "ap-guangzhou",
    callback: str = "",
    callback_format: str | None = None,
) -> JobRecord:
    """A job the submitter already created at CI as ``ci_job_id`` (state ``submitted``), with
    the Request's own ``CallBack`` (and ``CallBackFormat``) when given."""
    job_id = uuid.uuid4().hex
    operation: dict[str, Any] = {"Tag": tag}
    if callback:
        operation["CallBack"] = callback
    if callback_format is not None:
        operation["CallBackFormat"] = callback_format
    now = time.time()
    await queue.enqueue(
        NewJob(
            id=job_id,
            bucket=bucket,
            region=region,
            tag=tag,
            job_level=0,
            request={"Name": "demo", "Operation": operation},
            submit_name=f"demo-{job_id[:8]}",
            caller_callback=callback,
            via="http",
        ),
        now=now,
    )
    claimed = await queue.claim("tester", lease_seconds=60, now=now)
    assert claimed is not None
    assert claimed.id == job_id
    assert await queue.record_submitted(
        job_id, "tester", ci_job_id or f"b{uuid.uuid4().hex}", now=now
    )
    job = await queue.get(job_id)
    assert job is not None
    return job


def task_finish_xml(job_id: str, state: str = "Success", *, tag: str = "Transcode") -> bytes:
    """A TaskFinish as CI sends it, for one media job."""
    return (
        "<Response><EventName>TaskFinish</EventName><JobsDetail>"
        f"<Code>{'Success' if state == 'Success' else 'InternalError'}</Code><Message/>"
        f"<JobId>{job_id}</JobId><Tag>{tag}</Tag><State>{state}</State>"
        "<CreationTime>2022-06-30T18:47:18+0800</CreationTime>"
        "<StartTime>2022-06-30T18:47:20+0800</StartTime>"
        "<EndTime>2022-06-30T18:48:02+0800</EndTime>"
        "<QueueId>p90ea2f7a998f7611ff25dcbefcb37fc3</QueueId>"
        "<Input><BucketId>media-1250000000</BucketId><Object>in/a.mp4</Object>"
        "<Region>ap-guangzhou</Region></Input>"
        "<Operation><TemplateId>t1460606b9752148c4ab182f55163ba7cd</TemplateId>"
        "<Output><Region>ap-guangzhou</Region><Bucket>media-1250000000</Bucket>"
        f"<Object>out/{job_id}.mp4</Object></Output><UserData>u</UserData>"
        "<JobLevel>0</JobLevel></Operation></JobsDetail></Response>"
    ).encode()


def task_finish_json(job_id: str, state: str = "Success") -> bytes:
    """The same callback in CI's JSON form (JobsDetail a list, JobLevel a number)."""
    detail: dict[str, Any] = {
        "Code": "Success" if state == "Success" else "InternalError",
        "Message": "",
        "JobId": job_id,
        "Tag": "Transcode",
        "State": state,
        "CreationTime": "2022-06-30T18:47:18+0800",
        "StartTime": "2022-06-30T18:47:20+0800",
        "EndTime": "2022-06-30T18:48:02+0800",
        "QueueId": "p90ea2f7a998f7611ff25dcbefcb37fc3",
        "Input": {"BucketId": "media-1250000000", "Object": "in/a.mp4", "Region": "ap-guangzhou"},
        "Operation": {
            "TemplateId": "t1460606b9752148c4ab182f55163ba7cd",
            "Output": {
                "Region": "ap-guangzhou",
                "Bucket": "media-1250000000",
                "Object": f"out/{job_id}.mp4",
            },
            "UserData": "u",
            "JobLevel": 0,
        },
    }
    return json.dumps({"Response": {"EventName": "TaskFinish", "JobsDetail": [detail]}}).encode()


def sample(registry: Any, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return float(value) if value is not None else 0.0
