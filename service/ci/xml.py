"""Parsing CI's XML answers into typed results (pure; no I/O).

XML cannot say "a list of one", so element shapes are fixed by name: ``ALWAYS_LIST`` names are
lists wherever they occur, and ``ObjectName`` is a list only under ``OutputFile`` and
``SpriteOutputFile`` (under ``Md5Info`` and ``ObjectInfo`` it is one string, per the official Go
SDK's types). ``normalise_lists`` applies the same rules to JSON trees, where CI is inconsistent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.xmlsafe import DocumentError, parse_xml

ALWAYS_LIST = frozenset(
    {
        "JobsDetail",
        "NonExistJobIds",
        "NonExistJobId",  # the Go SDK's spelling for the batch job query
        "CosHeaders",
        "Md5Info",
        "StreamExtract",
        "Tasks",
        "ObjectInfo",
    }
)
_LIST_UNDER = {"ObjectName": frozenset({"OutputFile", "SpriteOutputFile"})}


@dataclass(frozen=True)
class BatchJob:
    """One batch (inventory trigger) job; ``detail`` is its whole ``JobsDetail`` tree."""

    job_id: str
    name: str
    state: str
    type: str
    code: str
    message: str
    creation_time: str
    start_time: str
    end_time: str
    detail: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class BatchJobPage:
    jobs: tuple[BatchJob, ...]
    next_token: str
    request_id: str
    non_exist_job_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class MediaJobPage:
    """Media jobs as ``JobsDetail`` trees (the same fields as their TaskFinish callbacks)."""

    jobs: tuple[dict[str, Any], ...]
    next_token: str
    non_exist_job_ids: tuple[str, ...]
    request_id: str = ""


def normalise_lists(node: Any, parent: str = "") -> Any:
    """A copy of ``node`` with list-valued elements always lists and empty entries dropped."""
    if isinstance(node, list):
        return [normalise_lists(item, parent) for item in node]
    if not isinstance(node, dict):
        return node
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key in ALWAYS_LIST or parent in _LIST_UNDER.get(key, ()):
            items = value if isinstance(value, list) else [value]
            result[key] = [normalise_lists(item, key) for item in items if item is not None]
        else:
            result[key] = normalise_lists(value, key)
    return result


def parse_batch_jobs(body: bytes) -> BatchJobPage:
    """The answer to create, query or list of batch jobs."""
    root = _response(body)
    return BatchJobPage(
        jobs=tuple(_batch_job(detail) for detail in _details(root)),
        next_token=_text(root.get("NextToken")),
        request_id=_text(root.get("RequestId")),
        non_exist_job_ids=_non_exist(root),
    )


def parse_media_jobs(body: bytes) -> MediaJobPage:
    """The answer to a query or list of media jobs."""
    root = _response(body)
    return MediaJobPage(
        jobs=tuple(_details(root)),
        next_token=_text(root.get("NextToken")),
        non_exist_job_ids=_non_exist(root),
        request_id=_text(root.get("RequestId")),
    )


def _response(body: bytes) -> dict[str, Any]:
    tree = parse_xml(body)
    if "Response" not in tree:
        raise DocumentError("unexpected_shape", f"expected <Response>, got <{next(iter(tree))}>")
    root = normalise_lists(tree["Response"] or {}, "Response")
    if not isinstance(root, dict):
        raise DocumentError("unexpected_shape", "<Response> has no elements")
    return root


def _details(root: dict[str, Any]) -> list[dict[str, Any]]:
    details: list[Any] = root.get("JobsDetail", [])
    for detail in details:
        if not isinstance(detail, dict):
            raise DocumentError("unexpected_shape", "<JobsDetail> is not a container")
    return details


def _batch_job(detail: dict[str, Any]) -> BatchJob:
    return BatchJob(
        job_id=_text(detail.get("JobId")),
        name=_text(detail.get("Name")),
        state=_text(detail.get("State")),
        type=_text(detail.get("Type")),
        code=_text(detail.get("Code")),
        message=_text(detail.get("Message")),
        creation_time=_text(detail.get("CreationTime")),
        start_time=_text(detail.get("StartTime")),
        end_time=_text(detail.get("EndTime")),
        detail=detail,
    )


def _non_exist(root: dict[str, Any]) -> tuple[str, ...]:
    # Repeated elements per the Go SDK; a comma list is accepted too, ids never hold commas.
    values = [*root.get("NonExistJobIds", []), *root.get("NonExistJobId", [])]
    return tuple(part for value in values for part in _text(value).split(",") if part)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict):  # an element that carries attributes
        return _text(value.get("#text"))
    return ""
