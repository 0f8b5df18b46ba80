"""Turn an untrusted CI callback body (XML or JSON) into a checked ``ParsedCallback``.

Both formats are read by ``service.xmlsafe`` (hardened, and lean enough for this hot path); its
refusal reasons become the rejection reasons. The always-list keys are applied to both formats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.xmlsafe import DocumentError, parse_json, parse_xml, sniff_format

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


class EventRejected(Exception):
    """The body is not an acceptable CI callback. ``reason`` is a stable snake_case code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


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


def text_value(value: Any, path: str) -> str | None:
    """A node's text: stripped, ``None`` when empty; numbers as CI would write them in XML."""
    kind = type(value)
    if kind is str:
        return value.strip() or None
    if value is None:
        return None
    if kind is int or kind is float:
        return str(value)
    raise EventRejected("bad_field", f"{path} must be a text value, not {_describe(value)}")


def required_text(node: dict[str, Any], key: str, path: str, reason: str) -> str:
    """The text of ``node[key]``, refusing the callback with ``reason`` when it is absent."""
    value = text_value(node.get(key), f"{path}.{key}")
    if value is None:
        raise EventRejected(reason, f"{path}.{key} is missing")
    return value


def job_details(inner: dict[str, Any]) -> list[dict[str, Any]]:
    """A TaskFinish's JobsDetail entries, each with a JobId and a State."""
    details = inner.get("JobsDetail")
    if not details:
        raise EventRejected("missing_jobs_detail", "TaskFinish has no JobsDetail")
    if type(details) is not list:
        details = [details]
    for index, detail in enumerate(details):
        path = f"JobsDetail[{index}]"
        if type(detail) is not dict:
            raise EventRejected(
                "missing_jobs_detail", f"{path} is {_describe(detail)}, not an object"
            )
        required_text(detail, "JobId", path, "missing_job_id")
        required_text(detail, "State", path, "missing_state")
    return details


def workflow_execution(inner: dict[str, Any]) -> dict[str, Any]:
    """A WorkflowFinish's WorkflowExecution, with a RunId and a State."""
    execution = single_node(inner.get("WorkflowExecution"), "WorkflowExecution")
    if execution is None:
        raise EventRejected("missing_workflow_execution", "WorkflowFinish has no WorkflowExecution")
    required_text(execution, "RunId", "WorkflowExecution", "missing_run_id")
    required_text(execution, "State", "WorkflowExecution", "missing_state")
    return execution


def single_node(value: Any, path: str) -> dict[str, Any] | None:
    """A container node, accepting CI's one-element-list form; ``None`` when absent or empty."""
    if type(value) is dict:
        return value
    if value is None or value == "" or value == []:
        return None
    if type(value) is list and len(value) == 1:
        return single_node(value[0], path)
    raise EventRejected("bad_field", f"{path} must be one object, not {_describe(value)}")


def _describe(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --- JSON -----------------------------------------------------------------------------------------


def _json_response(body: bytes, max_depth: int) -> dict[str, Any]:
    try:
        # A NUL: XML, CI's other format, cannot carry one, and PostgreSQL's text columns refuse
        # one (the same callback must not be stored on one backend and a 5xx on the other).
        root = parse_json(body, force_list=ALWAYS_LIST, max_depth=max_depth, refuse_nul=True)
    except DocumentError as exc:
        raise EventRejected(exc.reason, exc.message) from None
    if type(root) is not dict:
        raise EventRejected("not_an_object", f"JSON root must be an object, not {_describe(root)}")
    inner = root.get("Response", root)
    if type(inner) is not dict:
        raise EventRejected("not_an_object", f"Response must be an object, not {_describe(inner)}")
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
    shown = repr(raw)[:80] if type(raw) is str else _describe(raw)
    raise EventRejected(
        "unknown_event", f"EventName {shown} is not one of TaskFinish, WorkflowFinish"
    )
