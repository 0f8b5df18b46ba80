"""The emulator's pure pieces: credentials, hosts, expansion, paging, documents, records."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import overload

import pytest

from service.ci.signing import Credentials
from service.emulator.app import check_emulator
from service.emulator.auth import Target, parse_credentials, parse_host
from service.emulator.documents import task_finish
from service.emulator.expand import BucketFile, numbered, select_files, synthetic_keys
from service.emulator.listing import DEFAULT_SIZE, paginate, parse_page
from service.emulator.records import Batch, MediaJob
from service.emulator.responses import CIError
from service.emulator.spec import BatchSpec, OutputSpec, spec_from_request
from service.emulator.times import CST
from service.request import parse_request
from service.settings import SettingsError
from service.xmlsafe import parse_xml, unparse_xml
from tests.emulator.conftest import batch_request, emulator_settings


def test_credentials_parse_with_and_without_tokens() -> None:
    assert parse_credentials("a:k1, b:k2:tok,") == {
        "a": Credentials("a", "k1"),
        "b": Credentials("b", "k2", "tok"),
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a", "entry 1 must be"),
        ("a:k,b", "entry 2 must be"),
        ("a:k:t:x", "entry 1 must be"),
        ("a::t", "entry 1 must be"),
        ("a:k,a:k2", "listed twice"),
    ],
)
def test_malformed_credentials_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_credentials(text)


def test_the_emulator_needs_credentials() -> None:
    with pytest.raises(SettingsError) as missing:
        check_emulator(emulator_settings(emulator_credentials=""))
    with pytest.raises(SettingsError) as malformed:
        check_emulator(emulator_settings(emulator_credentials="id-only"))
    assert missing.value.variable == malformed.value.variable == "CIRELAY_EMULATOR_CREDENTIALS"


@pytest.mark.parametrize(
    ("host", "target"),
    [
        ("demo-1250000000.ci.ap-guangzhou.myqcloud.com", Target("demo-1250000000", "ap-guangzhou")),
        ("demo-1250000000.cos.ap-beijing.myqcloud.com", Target("demo-1250000000", "ap-beijing")),
        (
            "Demo-1250000000.CI.ap-guangzhou.myqcloud.com:8080",
            Target("demo-1250000000", "ap-guangzhou"),
        ),
        ("127.0.0.1:8090", None),
        ("demo.ci.ap-guangzhou.example.com", None),
        ("", None),
    ],
)
def test_the_bucket_comes_from_the_host(host: str, target: Target | None) -> None:
    assert parse_host(host) == target


def test_synthetic_keys_are_deterministic() -> None:
    assert synthetic_keys("Prefix", "", 2) == ["object-1.mp4", "object-2.mp4"]
    assert synthetic_keys("Prefix", "in/", 1) == ["in/object-1.mp4"]
    assert synthetic_keys("UrlFile", "urls.txt", 1) == ["urls/object-1.mp4"]
    assert synthetic_keys("Prefix", "in", 0) == []


def test_time_interval_bounds_are_inclusive() -> None:
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).astimezone(CST)

    files = [
        BucketFile("a", at("2022-02-01T12:00:00+08:00")),
        BucketFile("b", at("2022-05-01T12:00:00+08:00")),
        BucketFile("c", at("2022-05-01T12:00:01+08:00")),
    ]
    spec = spec_of(time_start="2022-02-01T12:00:00+0800", time_end="2022-05-01T12:00:00+0800")
    assert select_files(files, spec) == ["a", "b"]


def test_numbered_outputs() -> None:
    assert numbered("a.jpg", 5) == ["a.jpg"]
    assert numbered("a-${Number}.jpg", 2) == ["a-0.jpg", "a-1.jpg"]
    assert len(numbered("a-${Number}.jpg", 10_000)) == 100


def test_list_defaults_and_times_with_an_unescaped_plus() -> None:
    page = parse_page({"startCreationTime": "2022-02-01T12:00:00 0800"})
    assert page.size == DEFAULT_SIZE
    assert page.descending
    assert page.states is None
    assert page.start == datetime.fromisoformat("2022-02-01T12:00:00+08:00")


def test_list_states_must_be_known() -> None:
    with pytest.raises(CIError) as caught:
        parse_page({"states": "Success,Done"})
    assert caught.value.code == "InvalidArgument"
    assert "Done" in caught.value.message


def test_xml_task_finish_is_a_response_document() -> None:
    body, content_type = task_finish(
        {"JobId": "j1", "Operation": {"JobLevel": "1"}}, "XML", random.Random(1)
    )
    assert content_type == "application/xml"
    assert parse_xml(body) == {
        "Response": {
            "EventName": "TaskFinish",
            "JobsDetail": {"JobId": "j1", "Operation": {"JobLevel": "1"}},
        }
    }


def test_json_task_finish_makes_job_level_a_number() -> None:
    detail = {"JobId": "j1", "Operation": {"JobLevel": "2"}}
    body, content_type = task_finish(detail, "JSON", random.Random(1))
    document = json.loads(body)
    jobs_detail = document["JobsDetail"]
    first = jobs_detail[0] if isinstance(jobs_detail, list) else jobs_detail
    assert content_type == "application/json"
    assert first["Operation"]["JobLevel"] == 2
    assert detail["Operation"]["JobLevel"] == "2"  # the caller's tree is left alone


def spec_of(**changes: str) -> BatchSpec:
    base = BatchSpec(
        name="demo",
        tag="Transcode",
        input_kind="Prefix",
        input_value="",
        input_tree={"Prefix": ""},
        operation_tree={},
        queue_id="q",
    )
    return BatchSpec.from_dict({**base.to_dict(), **changes})


def test_records_round_trip_through_json() -> None:
    request = parse_request(
        unparse_xml(
            {
                "Request": batch_request(
                    Tag="StreamExtract",
                    Output={
                        "Region": "r",
                        "Bucket": "b-1",
                        "StreamExtract": [
                            {"Index": "0", "Object": "v.mp4"},
                            {"Index": "1", "Object": "a.m4a"},
                        ],
                    },
                    CallBackFormat="JSON",
                    CallBack="http://127.0.0.1/cb",
                )
            }
        )
    )
    spec = spec_from_request(request)
    created = datetime(2022, 6, 30, 18, 47, 18, tzinfo=CST)
    batch = Batch("b1", "bucket-1", "ap-guangzhou", 1, spec, created)
    job = MediaJob(
        "j1",
        "b1",
        "bucket-1",
        "ap-guangzhou",
        2,
        "in/a.mp4",
        "",
        ["v.mp4"],
        "",
        created,
        callback="pending",
    )

    assert spec.output == OutputSpec("r", "b-1", stream_extract=("v.mp4", "a.m4a"))
    assert spec.callback_format == "JSON"
    assert spec.wants_callback
    assert Batch.from_dict(json.loads(json.dumps(batch.to_dict()))) == batch
    assert MediaJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job


@dataclass(frozen=True)
class Listed:
    seq: int
    state: str
    creation_time: datetime


class CountingList(Sequence[Listed]):
    """100,000 items in seq order that count how many of them a page reads."""

    def __init__(self, size: int) -> None:
        self._size = size
        self.reads = 0

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, index: int) -> Listed: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Listed]: ...
    def __getitem__(self, index: int | slice) -> Listed | Sequence[Listed]:
        if isinstance(index, slice):
            raise TypeError("paging never slices")
        self.reads += 1
        return Listed(index + 1, "Success", datetime(2022, 6, 30, tzinfo=CST))


@pytest.mark.parametrize("order", ["Asc", "Desc"])
def test_a_page_reads_its_own_items_not_the_whole_list(order: str) -> None:
    items = CountingList(100_000)
    first, token = paginate(items, parse_page({"size": "100", "orderByTime": order}))
    assert len(first) == 100
    assert token
    second, _ = paginate(
        items, parse_page({"size": "100", "orderByTime": order, "nextToken": token})
    )
    step = 1 if order == "Asc" else -1
    assert second[0].seq == first[-1].seq + step
    # Two pages of 100 (and the one after each that says there is more), plus a bisection.
    assert items.reads <= 2 * 101 + 2 * 17
