"""document: reading CI's trees, and refusals that name the node."""

from __future__ import annotations

from typing import Any

import pytest

from service.ingest.document import (
    EventRejected,
    items,
    node,
    nodes,
    reported_text,
    required_text,
    text,
)


@pytest.mark.parametrize(
    ("value", "read"),
    [(" a ", "a"), ("", None), (None, None), (0, "0"), (1.5, "1.5")],
)
def test_text_is_stripped_and_numbers_read_as_ci_writes_them(value: Any, read: str | None) -> None:
    assert text({"K": value}, "K", "Node") == read


def test_a_node_that_is_not_text_is_refused_by_name() -> None:
    with pytest.raises(EventRejected) as info:
        text({"K": {"x": 1}}, "K", "JobsDetail[0]")
    assert info.value.reason == "bad_field"
    assert "JobsDetail[0].K" in info.value.message


def test_required_text_refuses_with_the_given_reason() -> None:
    with pytest.raises(EventRejected) as info:
        required_text({"JobId": " "}, "JobId", "JobsDetail[0]", "missing_job_id")
    assert (info.value.reason, info.value.message) == (
        "missing_job_id",
        "JobsDetail[0].JobId is missing",
    )


def test_reported_text_reads_an_unreadable_node_as_absent() -> None:
    detail = {"JobId": " j1 ", "State": ["a", "b"]}
    assert reported_text(detail, "JobId") == "j1"
    assert reported_text(detail, "State") is None
    assert reported_text(detail, "EndTime") is None


def test_one_node_accepts_ci_one_element_list_and_refuses_two() -> None:
    assert node({"Input": [{"Object": "a"}]}, "Input", "D") == {"Object": "a"}
    assert node({"Input": ""}, "Input", "D") is None
    with pytest.raises(EventRejected) as info:
        node({"Input": [{}, {}]}, "Input", "D")
    assert "D.Input must be one object, not a list of 2" in info.value.message


def test_lists_of_nodes_skip_empty_entries_and_refuse_text() -> None:
    assert items(None) == []
    assert items("a") == ["a"]
    assert nodes([{"a": 1}, {}, None, ""], "T") == [{"a": 1}]
    with pytest.raises(EventRejected) as info:
        nodes([{"a": 1}, "x"], "Tasks")
    assert "Tasks[1] must be an object, not str" in info.value.message
