"""normalize: every fixture's full canonical event, format independence, and event_id stability."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from service.ingest.normalize import (
    MAX_JOB_ID_CHARS,
    batch_finish_event,
    event_id_for,
    normalize,
    parse_ci_time,
)
from service.ingest.parse import ALWAYS_LIST, EventRejected, ParsedCallback, parse_callback
from service.xmlsafe import parse_xml

FIXTURES = Path(__file__).parents[1] / "fixtures" / "callbacks"
NAMES = sorted(path.stem for path in FIXTURES.glob("*.xml"))
RECEIVED = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


def fixture(name: str, ext: str) -> bytes:
    return (FIXTURES / f"{name}.{ext}").read_bytes()


def expected(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    return loaded


def one_event(body: bytes, *, source: str = "http", received_at: datetime = RECEIVED) -> Any:
    events = normalize(parse_callback(body), source=source, received_at=received_at)
    assert len(events) == 1
    return events[0]


def listified(node: Any) -> Any:
    """The JSON document as the spec says it is kept: always-list keys made lists, nothing else."""
    if isinstance(node, list):
        return [listified(value) for value in node]
    if not isinstance(node, dict):
        return node
    result = {}
    for key, value in node.items():
        value = listified(value)
        result[key] = [value] if key in ALWAYS_LIST and not isinstance(value, list) else value
    return result


def document_as_received(name: str, ext: str) -> dict[str, Any]:
    if ext == "xml":
        tree: dict[str, Any] = parse_xml(fixture(name, "xml"), force_list=ALWAYS_LIST)["Response"]
        return tree
    loaded = json.loads(fixture(name, "json"))
    inner: dict[str, Any] = listified(loaded.get("Response", loaded))
    return inner


def without(event: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in event.items() if key not in keys}


@pytest.mark.parametrize("ext", ["xml", "json"])
@pytest.mark.parametrize("name", NAMES)
def test_fixture_normalises_to_its_expected_event(name: str, ext: str) -> None:
    event = one_event(fixture(name, ext))

    assert event == {
        **expected(name),
        "format": ext,
        "document": document_as_received(name, ext),
    }


@pytest.mark.parametrize("name", NAMES)
def test_both_formats_give_the_same_event_apart_from_format_and_document(name: str) -> None:
    from_xml = one_event(fixture(name, "xml"))
    from_json = one_event(fixture(name, "json"))

    assert without(from_xml, "format", "document") == without(from_json, "format", "document")
    assert (from_xml["format"], from_json["format"]) == ("xml", "json")


@pytest.mark.parametrize("name", NAMES)
def test_event_id_ignores_source_format_and_arrival(name: str) -> None:
    ids = {
        one_event(fixture(name, ext), source=source, received_at=RECEIVED + timedelta(hours=hours))[
            "event_id"
        ]
        for ext in ("xml", "json")
        for source in ("http", "pulsar", "poll")
        for hours in (0, 5)
    }

    assert ids == {expected(name)["event_id"]}


def test_event_id_is_sha256_of_type_subject_and_state() -> None:
    material = json.dumps(["TaskFinish", "j94f9b32cb8bfeff04af295b059e59c2b", "Success"])

    assert event_id_for("TaskFinish", "j94f9b32cb8bfeff04af295b059e59c2b", "Success") == (
        hashlib.sha256(material.encode()).hexdigest()
    )
    assert expected("transcode")["event_id"] == hashlib.sha256(material.encode()).hexdigest()


def test_event_ids_differ_when_anything_they_are_built_from_differs() -> None:
    ids = {
        event_id_for("TaskFinish", "j1", "Success"),
        event_id_for("TaskFinish", "j1", "Failed"),
        event_id_for("TaskFinish", "j2", "Success"),
        event_id_for("BatchFinish", "j1", "Success"),
        event_id_for("WorkflowFinish", "j1", "Success"),
        # No separator trick makes two different triples collide.
        event_id_for("TaskFinish", 'j1", "Success', ""),
        event_id_for("TaskFinish", "j1\nSuccess", ""),
    }

    assert len(ids) == 7


def test_a_job_rebuilt_by_polling_ci_gets_the_callbacks_event_id() -> None:
    # GET /jobs/<id> answers <Response><JobsDetail>…</JobsDetail><NonExistJobIds/></Response>
    # with the same JobsDetail fields as the TaskFinish callback.
    query_response = (
        fixture("transcode", "xml")
        .replace(b"<EventName>TaskFinish</EventName>", b"")
        .replace(b"</Response>", b"<NonExistJobIds/></Response>")
    )
    tree = parse_xml(query_response, force_list=ALWAYS_LIST)["Response"]
    polled = ParsedCallback(format="xml", event_name="TaskFinish", body=tree)

    (rebuilt,) = normalize(polled, source="poll", received_at=RECEIVED + timedelta(minutes=3))
    from_callback = one_event(fixture("transcode", "json"), source="pulsar")

    assert rebuilt["event_id"] == from_callback["event_id"]
    assert without(rebuilt, "source", "format", "received_at", "document") == without(
        from_callback, "source", "format", "received_at", "document"
    )
    assert rebuilt["source"] == "poll"


def test_each_jobs_detail_becomes_its_own_event_with_its_own_document() -> None:
    document = json.loads(fixture("transcode", "json"))["Response"]
    second = copy.deepcopy(document["JobsDetail"])
    second["JobId"] = "j5cf35d9a297fd2b07c64c385ca6507c1"
    second["State"] = "Failed"
    document["JobsDetail"] = [document["JobsDetail"], second]

    events = normalize(
        parse_callback(json.dumps(document).encode()), source="http", received_at=RECEIVED
    )

    assert [event["job_id"] for event in events] == [
        "j94f9b32cb8bfeff04af295b059e59c2b",
        "j5cf35d9a297fd2b07c64c385ca6507c1",
    ]
    assert [event["state"] for event in events] == ["Success", "Failed"]
    assert events[0]["event_id"] == expected("transcode")["event_id"]
    assert events[1]["event_id"] == event_id_for(
        "TaskFinish", "j5cf35d9a297fd2b07c64c385ca6507c1", "Failed"
    )
    for event in events:
        assert event["document"]["EventName"] == "TaskFinish"
        assert [detail["JobId"] for detail in event["document"]["JobsDetail"]] == [event["job_id"]]


def task_finish(detail: dict[str, Any]) -> bytes:
    return json.dumps({"EventName": "TaskFinish", "JobsDetail": detail}).encode()


def test_an_object_name_that_already_carries_its_prefix_is_not_prefixed_twice() -> None:
    output_file = {
        "Bucket": "b-1250000000",
        "Region": "ap-guangzhou",
        "ObjectPrefix": "out/snap-",
        "ObjectName": ["out/snap-0.jpg", "1.jpg", "out/snap-1.jpg", "2.jpg"],
    }
    detail = {
        "JobId": "j1",
        "State": "Success",
        "Operation": {"MediaResult": {"OutputFile": output_file}},
    }

    outputs = one_event(task_finish(detail))["outputs"]

    assert [output["object"] for output in outputs] == [
        "out/snap-0.jpg",
        "out/snap-1.jpg",
        "out/snap-2.jpg",
    ]


def test_output_bucket_and_region_fall_back_to_operation_output() -> None:
    detail = {
        "JobId": "j1",
        "State": "Success",
        "Operation": {
            "MediaResult": {"OutputFile": {"ObjectName": "a.mp4"}},
            "Output": {"Bucket": "b-1250000000", "Region": "ap-beijing", "Object": "x.mp4"},
        },
    }

    assert one_event(task_finish(detail))["outputs"] == [
        {"bucket": "b-1250000000", "region": "ap-beijing", "object": "a.mp4"}
    ]


@pytest.mark.parametrize(
    ("state", "output_object", "outputs"),
    [
        ("Success", "out/a.wav", ["out/a.wav"]),
        ("Failed", "out/a.wav", []),
        ("Cancel", "out/a.wav", []),
        ("Success", "out/snapshot-${Number}.jpg", []),
        ("Success", "", []),
    ],
)
def test_operation_output_counts_only_for_a_succeeded_job_and_a_real_key(
    state: str, output_object: str, outputs: list[str]
) -> None:
    detail = {
        "JobId": "j1",
        "State": state,
        "Operation": {
            "Output": {"Bucket": "b-1", "Region": "ap-guangzhou", "Object": output_object}
        },
    }

    event = one_event(task_finish(detail))

    assert [output["object"] for output in event["outputs"]] == outputs


def test_stream_extract_outputs_are_used_without_a_media_result() -> None:
    document = json.loads(fixture("stream_extract", "json"))
    del document["Response"]["JobsDetail"][0]["Operation"]["MediaResult"]

    event = one_event(json.dumps(document).encode())

    assert event["outputs"] == expected("stream_extract")["outputs"]


def test_a_minimal_task_finish_has_every_field() -> None:
    event = one_event(task_finish({"JobId": "j1", "State": "Failed"}))

    assert without(event, "event_id", "document") == {
        "schema_version": 1,
        "event_type": "TaskFinish",
        "source": "http",
        "format": "json",
        "job_id": "j1",
        "batch_id": None,
        "cirelay_job_id": None,
        "tag": None,
        "state": "Failed",
        "code": None,
        "message": None,
        "queue_id": None,
        "created_at": None,
        "started_at": None,
        "ended_at": None,
        "input": {"bucket": None, "region": None, "object": None},
        "outputs": [],
        "user_data": None,
        "job_level": None,
        "workflow": None,
        "tasks": [],
        "received_at": "2024-05-01T12:00:00.123Z",
    }


@pytest.mark.parametrize(
    ("detail", "named"),
    [
        ({"Operation": {"JobLevel": "high"}}, "JobsDetail[0].Operation.JobLevel"),
        ({"Operation": {"JobLevel": -1}}, "JobsDetail[0].Operation.JobLevel"),
        ({"Operation": {"JobLevel": True}}, "JobsDetail[0].Operation.JobLevel"),
        ({"CreationTime": "yesterday"}, "JobsDetail[0].CreationTime"),
        ({"EndTime": "2022-06-30T18:47:18"}, "JobsDetail[0].EndTime"),
        ({"StartTime": "0001-01-01T00:00:00+0800"}, "JobsDetail[0].StartTime"),
        ({"Operation": "Transcode"}, "JobsDetail[0].Operation"),
        ({"Input": ["a", "b"]}, "JobsDetail[0].Input"),
        ({"Tag": {"x": 1}}, "JobsDetail[0].Tag"),
        (
            {"Operation": {"MediaResult": {"OutputFile": {"ObjectName": [{"x": 1}]}}}},
            "JobsDetail[0].Operation.MediaResult.OutputFile[0].ObjectName[0]",
        ),
        (
            {"Operation": {"MediaResult": {"OutputFile": ["a.mp4"]}}},
            "JobsDetail[0].Operation.MediaResult.OutputFile[0]",
        ),
        ({"Workflow": "w1"}, "JobsDetail[0].Workflow"),
    ],
)
def test_a_node_of_the_wrong_kind_is_refused_by_name(detail: dict[str, Any], named: str) -> None:
    body = task_finish({"JobId": "j1", "State": "Success", **detail})

    with pytest.raises(EventRejected) as refused:
        normalize(parse_callback(body), source="http", received_at=RECEIVED)

    assert refused.value.reason == "bad_field"
    assert named in refused.value.message


def test_a_job_id_longer_than_any_of_cis_is_refused_by_name() -> None:
    # Indexed in the event log: PostgreSQL cannot index one this long (it was a 500 there).
    fits = task_finish({"JobId": "j" * MAX_JOB_ID_CHARS, "State": "Success"})
    assert normalize(parse_callback(fits), source="http", received_at=RECEIVED)
    body = task_finish({"JobId": "j" * (MAX_JOB_ID_CHARS + 1), "State": "Success"})

    with pytest.raises(EventRejected) as refused:
        normalize(parse_callback(body), source="http", received_at=RECEIVED)

    assert refused.value.reason == "bad_field"
    assert "JobsDetail[0].JobId" in refused.value.message


def test_workflow_output_region_comes_only_from_a_cos_object_url() -> None:
    document = json.loads(fixture("workflow_finish", "json"))
    tasks = document["Response"]["WorkflowExecution"]["Tasks"]
    tasks[0]["ResultInfo"]["ObjectInfo"] = [
        {"ObjectName": "/a.jpg", "ObjectUrl": "https://cdn.example.com/a.jpg"},
        {"ObjectName": "/b.jpg"},
    ]

    event = one_event(json.dumps(document).encode())

    assert event["tasks"][0]["outputs"] == [
        {"bucket": "media-1250000000", "region": None, "object": "a.jpg"},
        {"bucket": "media-1250000000", "region": None, "object": "b.jpg"},
    ]


def test_a_workflow_task_of_the_wrong_kind_is_refused_by_name() -> None:
    document = json.loads(fixture("workflow_finish", "json"))
    document["Response"]["WorkflowExecution"]["Tasks"].append("Transcode")

    with pytest.raises(EventRejected) as refused:
        one_event(json.dumps(document).encode())

    assert refused.value.reason == "bad_field"
    assert "WorkflowExecution.Tasks[2]" in refused.value.message


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "missing_jobs_detail"),
        ({"JobsDetail": [{"State": "Success"}]}, "missing_job_id"),
        ({"JobsDetail": {"JobId": "j1"}}, "missing_state"),
    ],
)
def test_a_hand_built_task_finish_is_checked_too(body: dict[str, Any], reason: str) -> None:
    parsed = ParsedCallback(format="xml", event_name="TaskFinish", body=body)

    with pytest.raises(EventRejected) as refused:
        normalize(parsed, source="poll", received_at=RECEIVED)

    assert refused.value.reason == reason


def test_a_hand_built_workflow_finish_is_checked_too() -> None:
    parsed = ParsedCallback(format="xml", event_name="WorkflowFinish", body={})

    with pytest.raises(EventRejected) as refused:
        normalize(parsed, source="poll", received_at=RECEIVED)

    assert refused.value.reason == "missing_workflow_execution"


def test_received_at_is_utc_with_milliseconds_whatever_the_zone() -> None:
    shanghai = timezone(timedelta(hours=8))
    received = datetime(2024, 5, 1, 20, 0, 0, 5000, tzinfo=shanghai)

    event = one_event(fixture("transcode", "xml"), received_at=received)

    assert event["received_at"] == "2024-05-01T12:00:00.005Z"


def test_received_at_without_a_zone_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="naive"):
        one_event(fixture("transcode", "xml"), received_at=datetime(2024, 5, 1, 12, 0, 0))


def test_an_unknown_source_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="source"):
        one_event(fixture("transcode", "xml"), source="smtp")


@pytest.mark.parametrize(
    ("value", "utc"),
    [
        ("2022-06-30T18:47:18+0800", "2022-06-30T10:47:18Z"),
        ("2022-08-09 14:54:17+0800", "2022-08-09T06:54:17Z"),
        ("2022-01-01T02:00:00+0800", "2021-12-31T18:00:00Z"),
        ("2022-06-30T18:47:18+08:00", "2022-06-30T10:47:18Z"),
        ("2022-06-30T10:47:18Z", "2022-06-30T10:47:18Z"),
        ("2022-06-30T10:47:18.750Z", "2022-06-30T10:47:18Z"),
        ("2022-06-30T01:47:18-0900", "2022-06-30T10:47:18Z"),
        (" 2022-06-30T18:47:18+0800 ", "2022-06-30T10:47:18Z"),
        ("-", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_ci_time_reads_both_ci_formats(value: str | None, utc: str | None) -> None:
    assert parse_ci_time(value) == utc


@pytest.mark.parametrize(
    "value",
    [
        "2022-06-30T18:47:18",  # no offset: which zone?
        "2022-06-30",
        "yesterday",
        "2022-13-30T18:47:18+0800",
        "2022-06-30T18:47:18+2500",
        "0001-01-01T00:00:00+0800",
        "--",
    ],
)
def test_parse_ci_time_refuses_anything_else(value: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        parse_ci_time(value)


BATCH = {
    "Code": "Success",
    "Type": "Job",
    "Message": None,
    "Name": "cirelay-01HZX3K6Q6E2W9V6Y2W4J8B7QF",
    "JobId": "be8f65004eb8511eaaed4f377124a303c",
    "State": "Success",
    "CreationTime": "2022-06-27T15:23:10+0800",
    "StartTime": "2022-06-27T15:23:11+0800",
    "EndTime": "2022-06-27T15:25:10+0800",
    "Input": {"Prefix": "input"},
    "Operation": {
        "QueueId": "p893bcda225bf4945a378da6662e81a89",
        "UserData": "this is my inventorytriggerjob",
        "Tag": "Transcode",
        "JobParam": {"TemplateId": "t1460606b9752148c4ab182f55163ba7cd"},
        "Output": {
            "Region": "ap-chongqing",
            "Bucket": "test-1234567890",
            "Object": "output/${InventoryTriggerJobId}/out.mp4",
        },
        "JobLevel": "1",
    },
}


def batch_event(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "batch_id": "be8f65004eb8511eaaed4f377124a303c",
        "cirelay_job_id": "01HZX3K6Q6E2W9V6Y2W4J8B7QF",
        "tag": "Transcode",
        "state": "Success",
        "code": "Success",
        "message": None,
        "created_at": "2022-06-27T15:23:10+0800",
        "started_at": "2022-06-27T15:23:11+0800",
        "ended_at": "2022-06-27T15:25:10+0800",
        "received_at": RECEIVED,
        **overrides,
    }
    return batch_finish_event(BATCH, **arguments)


def test_batch_finish_event_is_a_canonical_event() -> None:
    assert batch_event() == {
        "schema_version": 1,
        "event_id": event_id_for("BatchFinish", "be8f65004eb8511eaaed4f377124a303c", "Success"),
        "event_type": "BatchFinish",
        "source": "poll",
        "format": "xml",
        "job_id": "be8f65004eb8511eaaed4f377124a303c",
        "batch_id": "be8f65004eb8511eaaed4f377124a303c",
        "cirelay_job_id": "01HZX3K6Q6E2W9V6Y2W4J8B7QF",
        "tag": "Transcode",
        "state": "Success",
        "code": "Success",
        "message": None,
        "queue_id": "p893bcda225bf4945a378da6662e81a89",
        "created_at": "2022-06-27T07:23:10Z",
        "started_at": "2022-06-27T07:23:11Z",
        "ended_at": "2022-06-27T07:25:10Z",
        "input": {"bucket": None, "region": None, "object": "input"},
        "outputs": [],
        "user_data": "this is my inventorytriggerjob",
        "job_level": 1,
        "workflow": None,
        "tasks": [],
        "received_at": "2024-05-01T12:00:00.123Z",
        "document": BATCH,
    }


def test_batch_finish_event_id_depends_on_batch_and_state_only() -> None:
    first = batch_event()
    again = batch_event(received_at=RECEIVED + timedelta(minutes=7), cirelay_job_id=None)
    failed = batch_event(state="Failed", code="InternalError", message="boom")

    assert first["event_id"] == again["event_id"]
    assert failed["event_id"] != first["event_id"]
    assert (failed["code"], failed["message"]) == ("InternalError", "boom")


def test_batch_finish_event_reads_unstarted_times_and_refuses_unreadable_ones() -> None:
    cancelled = batch_event(state="Cancel", started_at="-", ended_at="-")
    assert (cancelled["started_at"], cancelled["ended_at"]) == (None, None)

    with pytest.raises(EventRejected) as refused:
        batch_event(ended_at="soon")
    assert refused.value.reason == "bad_field"
    assert "ended_at" in refused.value.message


def test_batch_finish_event_with_an_unknown_source_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="source"):
        batch_event(source="http-ish")
