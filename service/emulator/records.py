"""The emulator's two records, a batch job and the media jobs it spawned, and their JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from service.emulator.spec import BatchSpec
from service.emulator.times import from_iso, to_iso

SUBMITTED = "Submitted"
RUNNING = "Running"
SUCCESS = "Success"
FAILED = "Failed"
PAUSE = "Pause"
CANCEL = "Cancel"
STATES = (SUBMITTED, RUNNING, SUCCESS, FAILED, PAUSE, CANCEL)
TERMINAL = frozenset({SUCCESS, FAILED, CANCEL})

# The code and message a media job fails with when CIRELAY_EMULATOR_FAILURE_RATE strikes.
FAILURE_CODE = "InternalError"
FAILURE_MESSAGE = "emulated media processing failure"

CallbackState = Literal["none", "pending", "done"]


@dataclass
class Batch:
    job_id: str
    bucket: str
    region: str
    seq: int  # creation order; list ordering and NextToken are built on it
    spec: BatchSpec
    creation_time: datetime
    state: str = SUBMITTED
    code: str = "Success"
    message: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    media_job_ids: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "bucket": self.bucket,
            "region": self.region,
            "seq": self.seq,
            "spec": self.spec.to_dict(),
            "creation_time": to_iso(self.creation_time),
            "state": self.state,
            "code": self.code,
            "message": self.message,
            "start_time": to_iso(self.start_time),
            "end_time": to_iso(self.end_time),
            "media_job_ids": list(self.media_job_ids),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Batch:
        created = from_iso(data["creation_time"])
        assert created is not None
        return cls(
            job_id=data["job_id"],
            bucket=data["bucket"],
            region=data["region"],
            seq=int(data["seq"]),
            spec=BatchSpec.from_dict(data["spec"]),
            creation_time=created,
            state=data["state"],
            code=data["code"],
            message=data["message"],
            start_time=from_iso(data["start_time"]),
            end_time=from_iso(data["end_time"]),
            media_job_ids=list(data["media_job_ids"]),
        )


@dataclass
class MediaJob:
    job_id: str
    batch_id: str
    bucket: str
    region: str
    seq: int
    object_key: str  # the input object
    output_object: str  # Output.Object with every variable but `${Number}` substituted
    output_names: list[str]  # the result files it writes (ObjectName[])
    output_prefix: str  # ObjectPrefix: the part of Output.Object before `${Number}`
    creation_time: datetime
    state: str = SUBMITTED
    code: str = "Success"
    message: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    run_seq: int = 0  # order in which the worker pool started it; 0 = never started
    end_seq: int = 0  # order in which it ended; orders held callbacks across a restart
    callback: CallbackState = "none"

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "batch_id": self.batch_id,
            "bucket": self.bucket,
            "region": self.region,
            "seq": self.seq,
            "object_key": self.object_key,
            "output_object": self.output_object,
            "output_names": list(self.output_names),
            "output_prefix": self.output_prefix,
            "creation_time": to_iso(self.creation_time),
            "state": self.state,
            "code": self.code,
            "message": self.message,
            "start_time": to_iso(self.start_time),
            "end_time": to_iso(self.end_time),
            "run_seq": self.run_seq,
            "end_seq": self.end_seq,
            "callback": self.callback,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MediaJob:
        created = from_iso(data["creation_time"])
        assert created is not None
        return cls(
            job_id=data["job_id"],
            batch_id=data["batch_id"],
            bucket=data["bucket"],
            region=data["region"],
            seq=int(data["seq"]),
            object_key=data["object_key"],
            output_object=data["output_object"],
            output_names=list(data["output_names"]),
            output_prefix=data["output_prefix"],
            creation_time=created,
            state=data["state"],
            code=data["code"],
            message=data["message"],
            start_time=from_iso(data["start_time"]),
            end_time=from_iso(data["end_time"]),
            run_seq=int(data["run_seq"]),
            end_seq=int(data["end_seq"]),
            callback=data["callback"],
        )
