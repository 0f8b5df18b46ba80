"""JobsDetail trees (xmltodict form) for batch jobs and media jobs. Pure.

A media job's JobsDetail is the same tree in `GET /jobs` answers and in its TaskFinish callback,
so a missed callback can be rebuilt by polling.
"""

from __future__ import annotations

import hashlib
from typing import Any

from service.emulator.records import SUCCESS, Batch, MediaJob
from service.emulator.times import ci_time


def batch_detail(batch: Batch) -> dict[str, Any]:
    return {
        "Code": batch.code,
        "Type": "Job",
        "Message": batch.message,
        "Name": batch.spec.name,
        "JobId": batch.job_id,
        "State": batch.state,
        "CreationTime": ci_time(batch.creation_time),
        "StartTime": ci_time(batch.start_time),
        "EndTime": ci_time(batch.end_time),
        "Input": batch.spec.input_tree,
        "Operation": batch.spec.operation_tree,
    }


def media_detail(job: MediaJob, batch: Batch) -> dict[str, Any]:
    spec = batch.spec
    operation: dict[str, Any] = {
        "TemplateId": spec.template_id,
        # Emulated queues have no templates to name; CI sends the template's name here.
        "TemplateName": "",
    }
    if spec.output is not None:
        operation["Output"] = {
            "Region": spec.output.region,
            "Bucket": spec.output.bucket,
            "Object": job.output_object,
        }
        if job.state == SUCCESS and job.output_names:
            operation["MediaResult"] = {
                "OutputFile": {
                    "Bucket": spec.output.bucket,
                    "Region": spec.output.region,
                    "ObjectName": list(job.output_names),
                    "ObjectPrefix": job.output_prefix,
                    "Md5Info": [
                        {"ObjectName": name, "Md5": _md5(name)} for name in job.output_names
                    ],
                }
            }
    operation["UserData"] = spec.user_data
    operation["JobLevel"] = str(spec.job_level)
    return {
        "Code": job.code,
        "Message": job.message,
        "JobId": job.job_id,
        "Tag": spec.tag,
        "State": job.state,
        "CreationTime": ci_time(job.creation_time),
        "StartTime": ci_time(job.start_time),
        "EndTime": ci_time(job.end_time),
        "QueueId": spec.queue_id,
        "Input": {"BucketId": job.bucket, "Object": job.object_key, "Region": job.region},
        "Operation": operation,
    }


def _md5(name: str) -> str:
    # Stands for the result file's checksum: stable per name, so repeated polls agree.
    return hashlib.md5(name.encode()).hexdigest()
