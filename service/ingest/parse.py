"""Turn an untrusted CI callback body (XML or JSON) into a checked ``ParsedCallback``.

Both formats are read into a tree by ``service.xmlsafe`` (hardened, and lean enough for this hot
path); its refusal reasons become the rejection reasons. The always-list keys are applied to both
formats. The tree is then checked through ``document``, the layer ``normalize`` reads it with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.ingest.document import EventRejected, describe, job_details, workflow_execution
from service.xmlsafe import DocumentError, parse_json, parse_xml, sniff_format

__all__ = ["ALWAYS_LIST", "EVENT_NAMES", "EventRejected", "ParsedCallback", "parse_callback"]

# Keys CI sends as a list in one sample and as a single node in another (and XML can only show as
# repeated elements): after parsing they are always lists, in both formats.
ALWAYS_LIST: frozenset[str] = frozenset(
    {
        "JobsDetail",
        "CosHeaders",
        "Tasks",
        "ObjectInfo",
        "ObjectName",
        "Md5Info",
        "StreamExtract",
    }
)

EVENT_NAMES: frozenset[str] = frozenset({"TaskFinish", "WorkflowFinish"})


@dataclass(frozen=True, slots=True)
class ParsedCallback:
    format: str  # "xml" or "json"
    event_name: str  # "TaskFinish" or "WorkflowFinish"
    body: dict[str, Any]  # the content of the Response node; always-list keys are lists


def parse_callback(body: bytes, content_type: str = "", *, max_depth: int = 32) -> ParsedCallback:
    """Parse and check one callback body; raise ``EventRejected`` for anything unacceptable."""
    if not body or body.isspace():
        raise EventRejected("empty", "empty body")
    fmt = sniff_format(body, content_type)
    inner = _json_response(body, max_depth) if fmt == "json" else _xml_response(body, max_depth)
    event_name = _event_name(inner)
    if event_name == "TaskFinish":
        job_details(inner)
    else:
        workflow_execution(inner)
    return ParsedCallback(format=fmt, event_name=event_name, body=inner)


# --- JSON -----------------------------------------------------------------------------------------


def _json_response(body: bytes, max_depth: int) -> dict[str, Any]:
    try:
        # A NUL: XML, CI's other format, cannot carry one, and PostgreSQL's text columns refuse
        # one (the same callback must not be stored on one backend and a 5xx on the other).
        root = parse_json(body, force_list=ALWAYS_LIST, max_depth=max_depth, refuse_nul=True)
    except DocumentError as exc:
        raise EventRejected(exc.reason, exc.message) from None
    if type(root) is not dict:
        raise EventRejected("not_an_object", f"JSON root must be an object, not {describe(root)}")
    inner = root.get("Response", root)
    if type(inner) is not dict:
        raise EventRejected("not_an_object", f"Response must be an object, not {describe(inner)}")
    return inner


# --- XML ------------------------------------------------------------------------------------------


def _xml_response(body: bytes, max_depth: int) -> dict[str, Any]:
    root, inner = next(iter(xml_tree(body, max_depth=max_depth).items()))
    if root != "Response":
        raise EventRejected("unexpected_root", f"XML root must be <Response>, not <{root}>")
    if type(inner) is not dict:
        raise EventRejected("not_an_object", "<Response> has no child elements")
    return inner


def xml_tree(body: bytes, *, max_depth: int = 32) -> dict[str, Any]:
    """Parse XML into xmltodict's tree shape with ``ALWAYS_LIST`` forced; no DTDs, bounded depth."""
    try:
        return parse_xml(body, force_list=ALWAYS_LIST, max_depth=max_depth)
    except DocumentError as exc:
        raise EventRejected(exc.reason, exc.message) from None


# --- shape ----------------------------------------------------------------------------------------


def _event_name(inner: dict[str, Any]) -> str:
    if "EventName" not in inner:
        # Older CI pages document callbacks without EventName; the content says which it is.
        if "JobsDetail" in inner:
            return "TaskFinish"
        if "WorkflowExecution" in inner:
            return "WorkflowFinish"
        raise EventRejected(
            "unknown_event", "EventName is missing and there is no JobsDetail or WorkflowExecution"
        )
    raw = inner["EventName"]
    if type(raw) is str and raw.strip() in EVENT_NAMES:
        return raw.strip()
    shown = repr(raw)[:80] if type(raw) is str else describe(raw)
    raise EventRejected(
        "unknown_event", f"EventName {shown} is not one of TaskFinish, WorkflowFinish"
    )
