"""Normalise a parsed CI callback into cirelay's canonical event (``schemas/event.v1.json``).

Pure functions. The canonical event is what the rest of cirelay stores, serves and publishes; both
formats of one callback give the same event apart from ``format`` and ``document``, and its
``event_id`` depends only on what happened (event type, subject id, state), so the same outcome
delivered by URL, by TDMQ, or rebuilt by polling CI is stored once.
"""

from __future__ import annotations

import functools
import hashlib
import re
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Any

from service.events.canonical import CanonicalEvent, ObjectRef, WorkflowRef, WorkflowTask
from service.ingest.document import (
    EventRejected,
    items,
    job_details,
    node,
    nodes,
    required_text,
    text,
    text_value,
    workflow_execution,
)
from service.ingest.parse import ParsedCallback
from service.timefmt import utc_text

SCHEMA_VERSION = 1
SOURCES: frozenset[str] = frozenset({"http", "pulsar", "poll"})

_COS_HOST = re.compile(r"^https?://[^/.]+\.cos\.([a-z0-9-]+)\.myqcloud\.com/", re.ASCII)
# Longest media JobId taken. CI's are 33 characters; the event log indexes job_id, and PostgreSQL
# refuses an index entry over ~2.7 KB (such a callback was a 500 there, and a Pulsar message was
# redelivered forever), so a longer one is refused as a bad field on every backend.
MAX_JOB_ID_CHARS = 256

# Outputs keyed by (bucket, region, key): a result listed twice is one object, in first-seen order.
_Outputs = dict[tuple[str | None, str | None, str | None], ObjectRef]


def normalize(
    parsed: ParsedCallback, *, source: str, received_at: datetime
) -> list[CanonicalEvent]:
    """One canonical event per JobsDetail of a TaskFinish (normally one), or one WorkflowFinish.

    Raises ``EventRejected`` for what ``parse_callback`` refuses (so a ``ParsedCallback`` built by
    hand, e.g. from a polled JobsDetail, is checked too) and ``EventRejected("bad_field", …)`` for
    a node of the wrong type or an unreadable time or JobLevel; the message names the node.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {sorted(SOURCES)}, not {source!r}")
    received = utc_text(received_at, timespec="milliseconds")
    body = parsed.body
    if parsed.event_name == "WorkflowFinish":
        return [_workflow_finish(body, parsed.format, source, received)]
    details = job_details(body)
    return [
        _task_finish(
            detail,
            f"JobsDetail[{index}]",
            # Each event keeps the document with only its own JobsDetail.
            body if len(details) == 1 else {**body, "JobsDetail": [detail]},
            parsed.format,
            source,
            received,
        )
        for index, detail in enumerate(details)
    ]


def event_id_for(event_type: str, subject_id: str, state: str) -> str:
    """The de-duplication key: sha256 hex of (event type, job id or workflow run id, state)."""
    # json.dumps([event_type, subject_id, state]) written out: the same ASCII text (escapes make
    # it injective) at a third of the cost.
    material = (
        f"[{encode_basestring_ascii(event_type)}, {encode_basestring_ascii(subject_id)},"
        f" {encode_basestring_ascii(state)}]"
    )
    return hashlib.sha256(material.encode("ascii")).hexdigest()


def parse_ci_time(value: str | None) -> str | None:
    """A CI time as RFC 3339 UTC (``2022-06-30T10:47:18Z``); ``None`` for ``-``, empty or None.

    CI writes ``2022-06-30T18:47:18+0800`` (jobs) and ``2022-08-09 14:54:17+0800`` (workflows);
    RFC 3339 input is accepted too. Raises ``ValueError`` for anything else, including a time
    without a UTC offset, which would be ambiguous.
    """
    if value is None:
        return None
    value = value.strip()
    if value in ("", "-"):
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"time {value!r} has no UTC offset")
    try:
        return utc_text(parsed, timespec="seconds")
    except OverflowError:
        raise ValueError(f"time {value!r} is out of range") from None


def batch_finish_event(
    batch: dict[str, Any],
    *,
    batch_id: str,
    cirelay_job_id: str | None,
    tag: str | None,
    state: str,
    code: str | None,
    message: str | None,
    created_at: str | None,
    started_at: str | None,
    ended_at: str | None,
    received_at: datetime,
    source: str = "poll",
) -> CanonicalEvent:
    """The BatchFinish event cirelay emits when polling shows a batch job ended.

    ``batch`` is the batch's JobsDetail from ``GET /inventorytriggerjob/<id>`` (kept as
    ``document``); the keyword arguments win over it. Times are CI's (or RFC 3339) text.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {sorted(SOURCES)}, not {source!r}")
    operation = node(batch, "Operation", "") or {}
    batch_input = node(batch, "Input", "") or {}
    selector = None
    for key in ("Object", "Prefix", "Manifest", "UrlFile"):
        selector = text_value(batch_input.get(key), f"Input.{key}")
        if selector is not None:
            break
    return _event(
        event_type="BatchFinish",
        subject_id=batch_id,
        source=source,
        fmt="xml",
        job_id=batch_id,
        batch_id=batch_id,
        cirelay_job_id=cirelay_job_id,
        tag=tag,
        state=state,
        code=code,
        message=message,
        queue_id=text_value(operation.get("QueueId"), "Operation.QueueId"),
        created_at=_time(created_at, "created_at"),
        started_at=_time(started_at, "started_at"),
        ended_at=_time(ended_at, "ended_at"),
        input_ref=_ref(None, None, selector),
        outputs=[],
        user_data=text_value(operation.get("UserData"), "Operation.UserData"),
        job_level=_job_level(operation.get("JobLevel"), "Operation.JobLevel"),
        workflow=None,
        tasks=[],
        received_at=utc_text(received_at, timespec="milliseconds"),
        document=batch,
    )


# --- TaskFinish -----------------------------------------------------------------------------------


def _task_finish(
    detail: dict[str, Any],
    path: str,
    document: dict[str, Any],
    fmt: str,
    source: str,
    received: str,
) -> CanonicalEvent:
    job_id = required_text(detail, "JobId", path, "missing_job_id")
    if len(job_id) > MAX_JOB_ID_CHARS:
        raise EventRejected(
            "bad_field", f"{path}.JobId is longer than {MAX_JOB_ID_CHARS} characters"
        )
    state = required_text(detail, "State", path, "missing_state")
    operation = node(detail, "Operation", path) or {}
    job_input = node(detail, "Input", path) or {}
    workflow = node(detail, "Workflow", path)
    return _event(
        event_type="TaskFinish",
        subject_id=job_id,
        source=source,
        fmt=fmt,
        job_id=job_id,
        batch_id=None,
        cirelay_job_id=None,
        tag=text(detail, "Tag", path),
        state=state,
        code=text(detail, "Code", path),
        message=text(detail, "Message", path),
        queue_id=text(detail, "QueueId", path),
        created_at=_ci_time(detail, "CreationTime", path),
        started_at=_ci_time(detail, "StartTime", path),
        ended_at=_ci_time(detail, "EndTime", path),
        input_ref=_ref(
            text(job_input, "BucketId", f"{path}.Input")
            or text(job_input, "Bucket", f"{path}.Input"),
            text(job_input, "Region", f"{path}.Input"),
            _key(text(job_input, "Object", f"{path}.Input")),
        ),
        outputs=_task_outputs(operation, state, f"{path}.Operation"),
        user_data=text(operation, "UserData", f"{path}.Operation"),
        job_level=_job_level(operation.get("JobLevel"), f"{path}.Operation.JobLevel"),
        workflow=None
        if workflow is None
        else {
            "workflow_id": text(workflow, "WorkflowId", f"{path}.Workflow"),
            "workflow_name": text(workflow, "WorkflowName", f"{path}.Workflow"),
            "run_id": text(workflow, "RunId", f"{path}.Workflow"),
            "name": text(workflow, "Name", f"{path}.Workflow"),
        },
        tasks=[],
        received_at=received,
        document=document,
    )


def _task_outputs(operation: dict[str, Any], state: str, path: str) -> list[ObjectRef]:
    """Every object the job wrote, with its full key.

    MediaResult.OutputFile lists what was written: ObjectName is relative to ObjectPrefix (a
    Snapshot writes ``0.jpg`` … under ``output/snapshot-``; most tags give full names and an
    empty prefix), and SpriteOutputFile has the same shape. Tags without a MediaResult (speech,
    noise reduction, …) wrote Operation.Output.Object, which is only known to exist when the job
    succeeded and is only a key when it holds no ``${…}`` placeholder.
    """
    output = node(operation, "Output", path) or {}
    default_bucket = text(output, "Bucket", f"{path}.Output")
    default_region = text(output, "Region", f"{path}.Output")
    outputs: _Outputs = {}
    media = node(operation, "MediaResult", path)
    if media is not None:
        file_nodes = nodes(media.get("OutputFile"), f"{path}.MediaResult.OutputFile")
        for index, file_node in enumerate(file_nodes):
            file_path = f"{path}.MediaResult.OutputFile[{index}]"
            _add_output_files(file_node, file_path, default_bucket, default_region, outputs)
            sprite = node(file_node, "SpriteOutputFile", file_path)
            if sprite is not None:
                _add_output_files(
                    sprite, f"{file_path}.SpriteOutputFile", default_bucket, default_region, outputs
                )
    if not outputs and state == "Success":
        candidates = [text(output, "Object", f"{path}.Output")]
        streams = nodes(output.get("StreamExtract"), f"{path}.Output.StreamExtract")
        for index, stream in enumerate(streams):
            stream_path = f"{path}.Output.StreamExtract[{index}]"
            candidates.append(
                text(stream, "Object", stream_path) or text(stream, "Output", stream_path)
            )
        for name in candidates:
            key = _key(name)
            if key is not None and "${" not in key:
                _add(outputs, default_bucket, default_region, key)
    return list(outputs.values())


def _add_output_files(
    files: dict[str, Any],
    path: str,
    default_bucket: str | None,
    default_region: str | None,
    outputs: _Outputs,
) -> None:
    bucket = text(files, "Bucket", path) or default_bucket
    region = text(files, "Region", path) or default_region
    prefix = text(files, "ObjectPrefix", path) or ""
    for index, raw in enumerate(items(files.get("ObjectName"))):
        if type(raw) is str:
            name: str | None = raw.strip()
        else:
            name = text_value(raw, f"{path}.ObjectName[{index}]")
        if not name:
            continue
        # Tolerate a name that already carries its prefix rather than doubling it.
        key = _key(name if name.startswith(prefix) else prefix + name)
        if key is not None:
            _add(outputs, bucket, region, key)


# --- WorkflowFinish -------------------------------------------------------------------------------


def _workflow_finish(body: dict[str, Any], fmt: str, source: str, received: str) -> CanonicalEvent:
    path = "WorkflowExecution"
    execution = workflow_execution(body)
    run_id = required_text(execution, "RunId", path, "missing_run_id")
    state = required_text(execution, "State", path, "missing_state")
    bucket = text(execution, "BucketId", path)
    tasks = [
        _workflow_task(task, f"{path}.Tasks[{index}]", bucket)
        for index, task in enumerate(nodes(execution.get("Tasks"), f"{path}.Tasks"))
    ]
    outputs: _Outputs = {}
    for task in tasks:
        for ref in task["outputs"]:
            outputs.setdefault((ref["bucket"], ref["region"], ref["object"]), ref)
    ended = [task["ended_at"] for task in tasks if task["ended_at"] is not None]
    return _event(
        event_type="WorkflowFinish",
        subject_id=run_id,
        source=source,
        fmt=fmt,
        job_id=None,
        batch_id=None,
        cirelay_job_id=None,
        tag=None,
        state=state,
        code=None,
        message=None,
        queue_id=None,
        created_at=_ci_time(execution, "CreateTime", path),
        started_at=None,
        # CI sends no end time for a run; it ended when its last task did.
        ended_at=max(ended) if ended else None,
        input_ref=_ref(bucket, None, _key(text(execution, "Object", path))),
        outputs=list(outputs.values()),
        user_data=None,
        job_level=None,
        workflow={
            "workflow_id": text(execution, "WorkflowId", path),
            "workflow_name": text(execution, "WorkflowName", path),
            "run_id": run_id,
            "name": None,
        },
        tasks=tasks,
        received_at=received,
        document=body,
    )


def _workflow_task(task: dict[str, Any], path: str, bucket: str | None) -> WorkflowTask:
    outputs: _Outputs = {}
    result = node(task, "ResultInfo", path) or {}
    infos = nodes(result.get("ObjectInfo"), f"{path}.ResultInfo.ObjectInfo")
    for index, info in enumerate(infos):
        info_path = f"{path}.ResultInfo.ObjectInfo[{index}]"
        url = text(info, "ObjectUrl", info_path)
        match = _COS_HOST.match(url) if url else None
        region = match.group(1) if match else None
        for name_index, raw in enumerate(items(info.get("ObjectName"))):
            key = _key(text_value(raw, f"{info_path}.ObjectName[{name_index}]"))
            if key is not None:
                _add(outputs, bucket, region, key)
    return {
        "job_id": text(task, "JobId", path),
        "tag": text(task, "Type", path),
        "state": text(task, "State", path),
        "name": text(task, "Name", path),
        "created_at": _ci_time(task, "CreateTime", path),
        "ended_at": _ci_time(task, "EndTime", path),
        "outputs": list(outputs.values()),
    }


# --- helpers --------------------------------------------------------------------------------------


def _event(
    *,
    event_type: str,
    subject_id: str,
    source: str,
    fmt: str,
    job_id: str | None,
    batch_id: str | None,
    cirelay_job_id: str | None,
    tag: str | None,
    state: str,
    code: str | None,
    message: str | None,
    queue_id: str | None,
    created_at: str | None,
    started_at: str | None,
    ended_at: str | None,
    input_ref: ObjectRef,
    outputs: list[ObjectRef],
    user_data: str | None,
    job_level: int | None,
    workflow: WorkflowRef | None,
    tasks: list[WorkflowTask],
    received_at: str,
    document: dict[str, Any],
) -> CanonicalEvent:
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id_for(event_type, subject_id, state),
        "event_type": event_type,
        "source": source,
        "format": fmt,
        "job_id": job_id,
        "batch_id": batch_id,
        "cirelay_job_id": cirelay_job_id,
        "tag": tag,
        "state": state,
        "code": code,
        "message": message,
        "queue_id": queue_id,
        "created_at": created_at,
        "started_at": started_at,
        "ended_at": ended_at,
        "input": input_ref,
        "outputs": outputs,
        "user_data": user_data,
        "job_level": job_level,
        "workflow": workflow,
        "tasks": tasks,
        "received_at": received_at,
        "document": document,
    }


def _ci_time(parent: dict[str, Any], key: str, path: str) -> str | None:
    return _time(text(parent, key, path), path, key)


# The times of one batch's callbacks repeat (CI stamps to the second): parse each text once.
# Only answers are cached; an unreadable time raises afresh each time.
_cached_ci_time = functools.lru_cache(maxsize=1024)(parse_ci_time)


def _time(value: str | None, path: str, key: str | None = None) -> str | None:
    try:
        return _cached_ci_time(value)
    except ValueError:
        where = path if key is None else f"{path}.{key}"
        raise EventRejected("bad_field", f"{where}: unreadable time {value!r}") from None


# CI's job levels are 0 to 2; the schema's integer is 64-bit.
_JOB_LEVEL_DIGITS = 18


def _job_level(value: Any, path: str) -> int | None:
    level = text_value(value, path)
    if level is None:
        return None
    if not (level.isascii() and level.isdigit()):
        raise EventRejected("bad_field", f"{path} must be a whole number, not {level!r}")
    if len(level) > _JOB_LEVEL_DIGITS:  # and int() refuses past 4,300 digits
        raise EventRejected("bad_field", f"{path} has more than {_JOB_LEVEL_DIGITS} digits")
    return int(level)


def _key(name: str | None) -> str | None:
    # COS keys have no leading slash; CI writes one in some results (speech, workflow ObjectInfo).
    if name is None:
        return None
    return name.lstrip("/") or None


def _ref(bucket: str | None, region: str | None, key: str | None) -> ObjectRef:
    return {"bucket": bucket, "region": region, "object": key}


def _add(outputs: _Outputs, bucket: str | None, region: str | None, key: str) -> None:
    outputs.setdefault((bucket, region, key), _ref(bucket, region, key))
