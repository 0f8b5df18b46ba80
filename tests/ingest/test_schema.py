"""schemas/event.v1.json: a valid, fully described schema that every normalised event meets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from service.ingest.normalize import batch_finish_event, normalize
from service.ingest.parse import parse_callback

SCHEMA_PATH = Path(__file__).parents[2] / "service" / "schemas" / "event.v1.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = Draft202012Validator(SCHEMA)
FIXTURES = Path(__file__).parents[1] / "fixtures" / "callbacks"
NAMES = sorted(path.stem for path in FIXTURES.glob("*.xml"))
RECEIVED = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


def events(name: str, ext: str, source: str = "http") -> list[dict[str, Any]]:
    body = (FIXTURES / f"{name}.{ext}").read_bytes()
    return normalize(parse_callback(body), source=source, received_at=RECEIVED)


def errors(event: dict[str, Any]) -> list[str]:
    return [error.message for error in VALIDATOR.iter_errors(event)]


def test_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_id_and_schema_version_say_version_1() -> None:
    assert SCHEMA["$id"].endswith(":v1")
    assert SCHEMA["properties"]["schema_version"] == {
        "description": SCHEMA["properties"]["schema_version"]["description"],
        "const": 1,
    }


def test_schema_fields_are_exactly_the_events_fields() -> None:
    (event,) = events("transcode", "xml")

    assert list(SCHEMA["properties"]) == list(event)
    assert SCHEMA["required"] == list(event)
    assert SCHEMA["additionalProperties"] is False


def described_nodes(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for name, child in node.get("properties", {}).items():
            yield f"{path}/properties/{name}", child
        for name, child in node.get("$defs", {}).items():
            yield f"{path}/$defs/{name}", child
        for key, child in node.items():
            yield from described_nodes(child, f"{path}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from described_nodes(child, f"{path}/{index}")


def test_every_field_is_described() -> None:
    undescribed = [
        path
        for path, node in described_nodes(SCHEMA)
        if "/allOf/" not in path and not node.get("description")
    ]

    assert undescribed == []


def closed_objects(node: Any, path: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        kind = node.get("type")
        if (
            kind == "object" or (isinstance(kind, list) and "object" in kind)
        ) and "properties" in node:
            yield path, node
        for key, child in node.items():
            yield from closed_objects(child, f"{path}/{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from closed_objects(child, f"{path}/{index}")


def test_every_object_with_fields_allows_no_others() -> None:
    open_objects = [
        path
        for path, node in closed_objects(SCHEMA)
        if node.get("additionalProperties") is not False
    ]

    assert open_objects == []


@pytest.mark.parametrize("source", ["http", "pulsar", "poll"])
@pytest.mark.parametrize("ext", ["xml", "json"])
@pytest.mark.parametrize("name", NAMES)
def test_every_normalised_fixture_meets_the_schema(name: str, ext: str, source: str) -> None:
    for event in events(name, ext, source):
        assert errors(event) == []


def test_batch_finish_event_meets_the_schema() -> None:
    batch = {
        "JobId": "be8f65004eb8511eaaed4f377124a303c",
        "State": "Cancel",
        "Input": {"Manifest": "inventory/manifest.json"},
        "Operation": {"QueueId": "p893bcda225bf4945a378da6662e81a89", "JobLevel": "0"},
    }
    event = batch_finish_event(
        batch,
        batch_id="be8f65004eb8511eaaed4f377124a303c",
        cirelay_job_id=None,
        tag=None,
        state="Cancel",
        code=None,
        message=None,
        created_at="2022-06-27T15:23:10+0800",
        started_at="-",
        ended_at="-",
        received_at=RECEIVED,
    )

    assert errors(event) == []
    assert event["input"] == {"bucket": None, "region": None, "object": "inventory/manifest.json"}


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"extra": 1}, "Additional properties"),
        ({"schema_version": 2}, "1 was expected"),
        ({"event_id": "not-a-hash"}, "does not match"),
        ({"event_type": "JobCreated"}, "is not one of"),
        ({"source": "smtp"}, "is not one of"),
        ({"format": "yaml"}, "is not one of"),
        ({"job_id": None}, "is not of type 'string'"),
        ({"created_at": "2022-06-30T18:47:18+0800"}, "does not match"),
        ({"received_at": "2024-05-01T12:00:00Z"}, "does not match"),
        ({"job_level": "0"}, "is not of type"),
        ({"input": {"bucket": "b", "region": "r"}}, "'object' is a required property"),
        ({"outputs": [{"bucket": "b", "region": "r", "object": "k", "url": "u"}]}, "Additional"),
        ({"tasks": [{}]}, "'job_id' is a required property"),
        (
            {
                "tasks": [
                    {
                        "job_id": "j1",
                        "tag": "Transcode",
                        "state": "Success",
                        "name": "Transcode_1",
                        "created_at": None,
                        "ended_at": None,
                        "outputs": [],
                    }
                ]
            },
            "is expected to be empty",
        ),
        ({"workflow": {"run_id": "i1"}}, "is a required property"),
    ],
)
def test_the_schema_refuses_events_that_break_it(change: dict[str, Any], complaint: str) -> None:
    (event,) = events("transcode", "xml")

    found = errors({**event, **change})

    assert any(complaint in message for message in found), found


def test_the_schema_refuses_an_event_missing_a_field() -> None:
    (event,) = events("workflow_finish", "json")
    del event["tasks"]

    assert "'tasks' is a required property" in errors(event)


def test_the_schema_refuses_a_workflow_finish_without_its_run() -> None:
    (event,) = events("workflow_finish", "xml")

    assert errors({**event, "workflow": None}) != []
    assert errors({**event, "job_id": "j1"}) != []
