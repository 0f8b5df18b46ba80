"""Valid batch Requests for queue, API and end-to-end tests, and new jobs for the queue itself."""

from __future__ import annotations

import itertools
import json
from typing import Any

from service.queue import NewJob

BUCKET = "media-1250000000"
REGION = "ap-chongqing"


def request_tree(
    name: str = "demo", *, level: int | None = None, **operation: Any
) -> dict[str, Any]:
    """The inner Request: a Transcode of a prefix, with extra Operation nodes from ``operation``."""
    op: dict[str, Any] = {
        "Tag": "Transcode",
        "QueueId": "p893bcda225bf4945a378da6662e81a89",
        "JobParam": {"TemplateId": "t1460606b9752148c4ab182f55163ba7cd"},
        "Output": {
            "Region": REGION,
            "Bucket": BUCKET,
            "Object": "out/${InventoryTriggerJobId}.mp4",
        },
    }
    if level is not None:
        op["JobLevel"] = str(level)
    op.update(operation)
    return {"Name": name, "Type": "Job", "Input": {"Object": "in/a.mp4"}, "Operation": op}


def request_json(name: str = "demo", **kwargs: Any) -> bytes:
    return json.dumps({"Request": request_tree(name, **kwargs)}).encode()


def request_xml(name: str = "demo", *, level: int | None = None) -> bytes:
    level_node = f"<JobLevel>{level}</JobLevel>" if level is not None else ""
    return (
        "<Request><Name>{name}</Name><Type>Job</Type><Input><Object>in/a.mp4</Object></Input>"
        "<Operation><Tag>Transcode</Tag><QueueId>p893bcda225bf4945a378da6662e81a89</QueueId>"
        "<JobParam><TemplateId>t1460606b9752148c4ab182f55163ba7cd</TemplateId></JobParam>"
        f"<Output><Region>{REGION}</Region><Bucket>{BUCKET}</Bucket>"
        "<Object>out/${{InventoryTriggerJobId}}.mp4</Object></Output>{level}</Operation></Request>"
    ).format(name=name, level=level_node).encode()


_job_numbers = itertools.count()


def make_job(
    *, level: int = 0, key: str | None = None, fingerprint: str | None = None, name: str = "demo"
) -> NewJob:
    """A job as intake would hand it to the queue, with an id and a submission name of its own."""
    n = next(_job_numbers)
    return NewJob(
        id=f"job{n:06d}",
        bucket=BUCKET,
        region=REGION,
        tag="Transcode",
        job_level=level,
        request={"Name": name, "Type": "Job"},
        submit_name=f"{name}-{n:016x}",
        caller_callback="",
        via="http",
        idempotency_key=key,
        fingerprint=fingerprint,
    )
