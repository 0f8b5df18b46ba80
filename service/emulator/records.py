"""The emulator's two records, a batch job and the media jobs it spawned, and their JSON form."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal, TypeVar

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

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Batch:
        return _from_json(cls, data)


@dataclass(slots=True)  # a batch may hold 100,000 of them
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
        return _to_json(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MediaJob:
        return _from_json(cls, data)


# The JSON form is the fields by name; times are ISO text and the spec its own dict.
_TIMES = frozenset({"creation_time", "start_time", "end_time"})
_Record = TypeVar("_Record", Batch, MediaJob)


def _to_json(record: Batch | MediaJob) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name in _TIMES:
            value = to_iso(value)
        elif isinstance(value, BatchSpec):
            value = value.to_dict()
        elif isinstance(value, list):
            value = list(value)
        data[f.name] = value
    return data


def _from_json(cls: type[_Record], data: dict[str, Any]) -> _Record:
    values: dict[str, Any] = {}
    for f in fields(cls):
        value = data[f.name]
        if f.name in _TIMES:
            value = from_iso(value)
        elif f.name == "spec":
            value = BatchSpec.from_dict(value)
        elif isinstance(value, list):
            value = list(value)
        values[f.name] = value
    return cls(**values)
