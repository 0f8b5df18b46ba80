"""What the emulator keeps of a batch Request: the echo trees plus the fields it acts on.

Built once from the validated request model, then stored as plain JSON, so persisted state never
depends on the request model's classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from service.request import BatchRequest

INPUT_KINDS = ("Object", "Prefix", "Manifest", "UrlFile")


@dataclass(frozen=True)
class OutputSpec:
    region: str
    bucket: str
    object: str = ""
    au_object: str = ""
    sprite_object: str = ""
    stream_extract: tuple[str, ...] = ()  # the StreamExtract result objects, in request order


@dataclass(frozen=True)
class BatchSpec:
    name: str
    tag: str
    input_kind: str  # one of INPUT_KINDS
    input_value: str
    input_tree: dict[str, Any]  # Request.Input as sent, echoed in JobsDetail
    operation_tree: dict[str, Any]  # Request.Operation as sent, echoed in JobsDetail
    queue_id: str
    time_start: str = ""  # CI time strings, "" when unset
    time_end: str = ""
    output: OutputSpec | None = None
    template_id: str = ""
    user_data: str = ""
    job_level: int = 0
    callback: str = ""
    callback_format: str = "XML"  # XML | JSON
    callback_type: str = "Url"  # Url | TDMQ
    mq_name: str = ""
    outputs_per_job: int = 1  # files a job writes through `${Number}` (Snapshot/SmartCover Count)

    @property
    def wants_callback(self) -> bool:
        if self.callback_type == "TDMQ":
            return bool(self.mq_name)
        # No CallBack means "the queue's", and emulated queues have no callback configured.
        return bool(self.callback) and self.callback.lower() != "no"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchSpec:
        values = dict(data)
        output = values.pop("output", None)
        if output is not None:
            output = OutputSpec(
                **{**output, "stream_extract": tuple(output.get("stream_extract", ()))}
            )
        return cls(output=output, **values)


def spec_from_request(request: BatchRequest) -> BatchSpec:
    op = request.operation
    tree = request.to_tree()
    kind, value = _input_source(request)
    output = None
    if op.output is not None:
        out = op.output
        output = OutputSpec(
            region=out.region,
            bucket=out.bucket,
            object=out.object or "",
            au_object=out.au_object or "",
            sprite_object=out.sprite_object or "",
            stream_extract=tuple(s.object for s in out.stream_extract),
        )
    interval = op.time_interval
    return BatchSpec(
        name=request.name,
        tag=request.tag,
        input_kind=kind,
        input_value=value,
        input_tree=tree["Input"],
        operation_tree=tree["Operation"],
        queue_id=op.queue_id,
        time_start=(interval.start or "") if interval else "",
        time_end=(interval.end or "") if interval else "",
        output=output,
        template_id=op.job_param.template_id or "",
        user_data=op.user_data or "",
        job_level=request.job_level,
        callback=op.callback or "",
        callback_format=op.callback_format or "XML",
        callback_type=op.callback_type or "Url",
        mq_name=op.callback_mq_config.mq_name if op.callback_mq_config else "",
        outputs_per_job=_count(request),
    )


def _input_source(request: BatchRequest) -> tuple[str, str]:
    # Validation guarantees at least one; when several are given the most specific one wins.
    source = request.input
    for kind, value in (
        ("Object", source.object),
        ("Prefix", source.prefix),
        ("Manifest", source.manifest),
        ("UrlFile", source.url_file),
    ):
        if value is not None:
            return kind, value
    return "Prefix", ""


def _count(request: BatchRequest) -> int:
    """How many `${Number}` files each job writes: Snapshot/SmartCover Count, else 1."""
    container = request.operation.job_param.containers.get(request.tag)
    if request.tag not in ("Snapshot", "SmartCover") or not isinstance(container, dict):
        return 1
    count = str(container.get("Count", "1"))
    return int(count) if count.isdigit() and int(count) > 0 else 1
