"""Reading CI's documents: the one place that knows how a callback's or a polled job's tree is
laid out and which of its nodes are text, one object or a list, and that refuses a node of the
wrong kind, naming it.

``parse`` turns bytes into these trees, ``normalize`` and the reconciler read them through here.
Every reader takes the node's path, formatted only when a refusal names it.
"""

from __future__ import annotations

from typing import Any


class EventRejected(Exception):
    """The body is not an acceptable CI callback. ``reason`` is a stable snake_case code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def text_value(value: Any, path: str) -> str | None:
    """A node's text: stripped, ``None`` when empty; numbers as CI would write them in XML."""
    kind = type(value)
    if kind is str:
        return value.strip() or None
    if value is None:
        return None
    if kind is int or kind is float:
        return str(value)
    raise EventRejected("bad_field", f"{path} must be a text value, not {describe(value)}")


def text(node: dict[str, Any], key: str, path: str) -> str | None:
    """The text of ``node[key]`` (see ``text_value``); ``path`` is ``node``'s."""
    value = node.get(key)
    # The common cases first: the node path is only formatted for a refusal.
    if type(value) is str:
        return value.strip() or None
    if value is None:
        return None
    return text_value(value, f"{path}.{key}")


def reported_text(node: dict[str, Any], key: str) -> str | None:
    """The text of ``node[key]``, ``None`` when it is absent or not text: for what CI reports
    about its own jobs (a polled JobsDetail), where an unreadable entry is refused later, by
    ``normalize``, and must not stop the reading of the others."""
    try:
        return text(node, key, "")
    except EventRejected:
        return None


def required_text(node: dict[str, Any], key: str, path: str, reason: str) -> str:
    """The text of ``node[key]``, refusing the callback with ``reason`` when it is absent."""
    value = text(node, key, path)
    if value is None:
        raise EventRejected(reason, f"{path}.{key} is missing")
    return value


def single_node(value: Any, path: str) -> dict[str, Any] | None:
    """A container node, accepting CI's one-element-list form; ``None`` when absent or empty."""
    if type(value) is dict:
        return value
    if value is None or value == "" or value == []:
        return None
    if type(value) is list and len(value) == 1:
        return single_node(value[0], path)
    raise EventRejected("bad_field", f"{path} must be one object, not {describe(value)}")


def node(parent: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
    """``parent[key]`` as one container node (see ``single_node``); ``path`` is ``parent``'s."""
    value = parent.get(key)
    if type(value) is dict:
        return value
    return single_node(value, f"{path}.{key}" if path else key)


def items(value: Any) -> list[Any]:
    """A node CI sends as one value or as a list of them, as a list."""
    if value is None:
        return []
    return value if type(value) is list else [value]


def nodes(value: Any, path: str) -> list[dict[str, Any]]:
    """A list of container nodes; XML's empty element (None) and JSON's "" or {} stand for
    "none here"."""
    found = []
    for index, item in enumerate(items(value)):
        if type(item) is dict:
            if item:
                found.append(item)
        elif item is not None and item != "":
            raise EventRejected(
                "bad_field", f"{path}[{index}] must be an object, not {type(item).__name__}"
            )
    return found


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
                "missing_jobs_detail", f"{path} is {describe(detail)}, not an object"
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


def describe(value: Any) -> str:
    """What a node is, for a refusal's message."""
    if value is None:
        return "empty"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
