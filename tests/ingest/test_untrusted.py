"""Any bytes at all, through parse_callback and normalize: an event or a documented refusal.

A delivery that raises anything but ``EventRejected`` would answer 500 (HTTP) or redeliver
forever (Pulsar); these properties feed the two readers what CI never sends.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.ingest.normalize import normalize
from service.ingest.parse import EventRejected, parse_callback

FIXTURES = Path(__file__).parents[1] / "fixtures" / "callbacks"
BODIES = [
    path.read_bytes()
    for path in sorted([*FIXTURES.glob("*.xml"), *FIXTURES.glob("*.json")])
    if not path.name.endswith(".expected.json")
]
RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)
# Every reason parse_callback and normalize give (README: "Events").
REASONS = frozenset(
    {
        "empty",
        "malformed_xml",
        "malformed_json",
        "doctype",
        "too_deep",
        "not_an_object",
        "unexpected_root",
        "unknown_event",
        "missing_jobs_detail",
        "missing_job_id",
        "missing_state",
        "missing_workflow_execution",
        "missing_run_id",
        "bad_field",
    }
)
CONTENT_TYPES = st.sampled_from(["", "application/xml", "application/json", "text/plain"])


def outcome(body: bytes, content_type: str) -> str:
    """ "event" when the body became events, else the refusal's reason."""
    try:
        events = normalize(parse_callback(body, content_type), source="http", received_at=RECEIVED)
    except EventRejected as exc:
        return exc.reason if exc.message else "refused without a message"
    assert events
    return "event"


def assert_documented(result: str) -> None:
    assert result == "event" or result in REASONS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), CONTENT_TYPES)
def test_any_bytes_become_events_or_a_documented_refusal(body: bytes, content_type: str) -> None:
    assert_documented(outcome(body, content_type))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(BODIES),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.binary(max_size=3)), max_size=4),
)
def test_damaged_callbacks_become_events_or_a_documented_refusal(
    body: bytes, edits: list[tuple[float, bytes]]
) -> None:
    for where, replacement in edits:
        at = int(where * len(body))
        body = body[:at] + replacement + body[at + len(replacement) + 1 :]
    assert_documented(outcome(body, ""))


# JSON callbacks whose every node may be of any JSON type, under CI's own names.
_KEYS = st.sampled_from(
    [
        "EventName",
        "JobsDetail",
        "JobId",
        "State",
        "Tag",
        "Code",
        "Input",
        "Object",
        "Operation",
        "Output",
        "MediaResult",
        "OutputFile",
        "ObjectName",
        "ObjectPrefix",
        "SpriteOutputFile",
        "StreamExtract",
        "JobLevel",
        "CreationTime",
        "EndTime",
        "Workflow",
        "WorkflowExecution",
        "RunId",
        "Tasks",
        "ResultInfo",
        "ObjectInfo",
        "ObjectUrl",
    ]
)
_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["TaskFinish", "WorkflowFinish", "Success", "2022-06-30T18:47:18+0800", "-"])
    | st.text(max_size=6)
)
_TREES = st.recursive(
    _LEAVES,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(_KEYS, _TREES, max_size=6), st.sampled_from(["TaskFinish", "WorkflowFinish"])
)
def test_callbacks_of_any_shape_become_events_or_a_documented_refusal(
    tree: dict[str, Any], event_name: str
) -> None:
    body = json.dumps({"EventName": event_name, **tree}).encode()
    assert_documented(outcome(body, "application/json"))


@pytest.mark.parametrize(
    ("job_level", "reason"),
    [(b"7" * 5000, "malformed_json"), (b'"' + b"7" * 5000 + b'"', "bad_field")],
    ids=["number", "text"],
)
def test_a_job_level_too_long_to_read_is_refused(job_level: bytes, reason: str) -> None:
    body = (
        b'{"EventName": "TaskFinish", "JobsDetail": {"JobId": "j1", "State": "Success", '
        b'"Operation": {"JobLevel": ' + job_level + b"}}}"
    )
    assert outcome(body, "application/json") == reason
