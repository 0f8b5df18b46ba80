"""Request documents in (JSON, XML) and out (tree, XML): the seed's sample and round trips."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from service.request import (
    BatchRequest,
    RequestInvalid,
    parse_request,
    request_from_tree,
)
from service.xmlsafe import DocumentError

# The "Request body" sample of CI's API document, inventorytriggerjob.txt, copied verbatim
# (indentation included).
SEED_SAMPLE = b"""    <Request>
    <Name>demo</Name>
    <Type>Job</Type>
    <Input>
    <Prefix>input</Prefix>
    </Input>
    <Operation>
    <TimeInterval>
    <Start>2022-02-01T12:00:00+0800</Start>
    <End>2022-05-01T12:00:00+0800</End>
    </TimeInterval>
    <QueueId>p893bcda225bf4945a378da6662e81a89</QueueId>
    <UserData>this is my inventorytriggerjob</UserData>
    <CallBack>https://www.callback.com</CallBack>
    <Tag>Transcode</Tag>
    <JobParam>
    <TemplateId>t1460606b9752148c4ab182f55163ba7cd</TemplateId>
    </JobParam>
    <Output>
    <Region>ap-chongqing</Region>
    <Bucket>test-1234567890</Bucket>
    <Object>output/${InventoryTriggerJobId}/out.mp4</Object>
    </Output>
    <JobLevel>0</JobLevel>
    </Operation>
    </Request>
"""

SEED_SAMPLE_XML_OUT = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b"<Request><Name>demo</Name><Type>Job</Type><Input><Prefix>input</Prefix></Input>"
    b"<Operation><TimeInterval><Start>2022-02-01T12:00:00+0800</Start>"
    b"<End>2022-05-01T12:00:00+0800</End></TimeInterval>"
    b"<QueueId>p893bcda225bf4945a378da6662e81a89</QueueId>"
    b"<UserData>this is my inventorytriggerjob</UserData>"
    b"<CallBack>https://www.callback.com</CallBack><Tag>Transcode</Tag>"
    b"<JobParam><TemplateId>t1460606b9752148c4ab182f55163ba7cd</TemplateId></JobParam>"
    b"<Output><Region>ap-chongqing</Region><Bucket>test-1234567890</Bucket>"
    b"<Object>output/${InventoryTriggerJobId}/out.mp4</Object></Output>"
    b"<JobLevel>0</JobLevel></Operation></Request>"
)

SEED_SAMPLE_TREE: dict[str, Any] = {
    "Name": "demo",
    "Type": "Job",
    "Input": {"Prefix": "input"},
    "Operation": {
        "TimeInterval": {"Start": "2022-02-01T12:00:00+0800", "End": "2022-05-01T12:00:00+0800"},
        "QueueId": "p893bcda225bf4945a378da6662e81a89",
        "UserData": "this is my inventorytriggerjob",
        "CallBack": "https://www.callback.com",
        "Tag": "Transcode",
        "JobParam": {"TemplateId": "t1460606b9752148c4ab182f55163ba7cd"},
        "Output": {
            "Region": "ap-chongqing",
            "Bucket": "test-1234567890",
            "Object": "output/${InventoryTriggerJobId}/out.mp4",
        },
        "JobLevel": "0",
    },
}

# Every node the seed defines, in an order unlike the seed's, JSON-style (JobLevel a number).
FULL_TREE: dict[str, Any] = {
    "Operation": {
        "JobLevel": 2,
        "Output": {
            "StreamExtract": [{"Object": "v.mp4", "Index": "0"}, {"Index": "1", "Object": "a.aac"}],
            "SpriteObject": "sprite-${Number}.jpg",
            "AuObject": "audio.mp3",
            "Object": "out/${InventoryTriggerJobId}.mp4",
            "Bucket": "out-1250000000",
            "Region": "ap-guangzhou",
        },
        "CallBackMqConfig": {"MqName": "ci-events", "MqMode": "Topic", "MqRegion": "gz"},
        "CallBackType": "TDMQ",
        "CallBackFormat": "JSON",
        "CallBack": "https://relay.example/callbacks/abc",
        "UserData": "tenant=7 & <batch> \"q\" 'a' 中文",
        "JobParam": {
            "TtsTpl": {"Mode": "Sync"},
            "DigitalWatermark": {
                "IgnoreError": "true",
                "Version": "V1",
                "Type": "Text",
                "Message": "abc*_-",
            },
            "WatermarkTemplateId": ["w1", "w2"],
            "Watermark": [{"Type": "Text"}, {"Type": "Image", "Pos": "TopRight"}],
            "Transcode": {"Container": {"Format": "mp4"}, "Video": {"Codec": "H.264"}},
            "TranscodeTemplateId": "t-trans",
            "TemplateId": "t1",
        },
        "Tag": "Transcode",
        "QueueId": "p893bcda225bf4945a378da6662e81a89",
        "TimeInterval": {"End": "2022-05-01T12:00:00+0800", "Start": "2022-02-01T12:00:00+0800"},
    },
    "Input": {"Object": "in/a.mp4", "Prefix": "in/", "UrlFile": "urls.txt", "Manifest": "m.json"},
    "Type": "Job",
    "Name": "full_request-1",
}

FULL_XML_OUT = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    "<Request><Name>full_request-1</Name><Type>Job</Type>"
    "<Input><Manifest>m.json</Manifest><UrlFile>urls.txt</UrlFile><Prefix>in/</Prefix>"
    "<Object>in/a.mp4</Object></Input>"
    "<Operation>"
    "<TimeInterval><Start>2022-02-01T12:00:00+0800</Start><End>2022-05-01T12:00:00+0800</End>"
    "</TimeInterval>"
    "<QueueId>p893bcda225bf4945a378da6662e81a89</QueueId>"
    "<UserData>tenant=7 &amp; &lt;batch&gt; \"q\" 'a' 中文</UserData>"
    "<CallBack>https://relay.example/callbacks/abc</CallBack>"
    "<CallBackFormat>JSON</CallBackFormat><CallBackType>TDMQ</CallBackType>"
    "<CallBackMqConfig><MqRegion>gz</MqRegion><MqMode>Topic</MqMode><MqName>ci-events</MqName>"
    "</CallBackMqConfig>"
    "<Tag>Transcode</Tag>"
    "<JobParam><TemplateId>t1</TemplateId><TranscodeTemplateId>t-trans</TranscodeTemplateId>"
    "<Transcode><Container><Format>mp4</Format></Container><Video><Codec>H.264</Codec></Video>"
    "</Transcode>"
    "<DigitalWatermark><Message>abc*_-</Message><Type>Text</Type><Version>V1</Version>"
    "<IgnoreError>true</IgnoreError></DigitalWatermark>"
    "<Watermark><Type>Text</Type></Watermark>"
    "<Watermark><Type>Image</Type><Pos>TopRight</Pos></Watermark>"
    "<WatermarkTemplateId>w1</WatermarkTemplateId><WatermarkTemplateId>w2</WatermarkTemplateId>"
    "<TtsTpl><Mode>Sync</Mode></TtsTpl></JobParam>"
    "<Output><Region>ap-guangzhou</Region><Bucket>out-1250000000</Bucket>"
    "<Object>out/${InventoryTriggerJobId}.mp4</Object><AuObject>audio.mp3</AuObject>"
    "<SpriteObject>sprite-${Number}.jpg</SpriteObject>"
    "<StreamExtract><Index>0</Index><Object>v.mp4</Object></StreamExtract>"
    "<StreamExtract><Index>1</Index><Object>a.aac</Object></StreamExtract></Output>"
    "<JobLevel>2</JobLevel></Operation></Request>"
).encode()


def tree_for(tag: str, **operation: Any) -> dict[str, Any]:
    base = copy.deepcopy(SEED_SAMPLE_TREE)
    base["Operation"]["Tag"] = tag
    base["Operation"].update(operation)
    return {key: value for key, value in base.items() if value is not None}


ROUND_TRIP_CASES: dict[str, dict[str, Any]] = {
    "seed sample": SEED_SAMPLE_TREE,
    "every node": FULL_TREE,
    "snapshot with counts": tree_for(
        "Snapshot",
        JobParam={"Snapshot": {"Mode": "Interval", "Count": 3, "Start": 0.5, "IsCheckBlack": True}},
        Output={"Region": "r", "Bucket": "b", "SpriteObject": "s-${Number}.jpg"},
    ),
    "one stream": tree_for(
        "StreamExtract",
        JobParam={},
        Output={"Region": "r", "Bucket": "b", "StreamExtract": {"Index": "2", "Object": "s.aac"}},
    ),
    "voice separate by alias": tree_for(
        "VoiceSpearte",
        JobParam={"VoiceSeparate": {"AudioMode": "IsAudio"}},
        Output={"Region": "r", "Bucket": "b", "AuObject": "bgm.mp3"},
    ),
    "media info without output": {
        "Name": "n",
        "Type": "Job",
        "Input": {"UrlFile": "list.txt"},
        "Operation": {"Tag": "MediaInfo", "QueueId": "q", "JobParam": None, "TimeInterval": {}},
    },
    "opaque shapes": tree_for(
        "VideoMontage",
        JobParam={
            "VideoMontage": {
                "Container": {"Format": "mp4"},
                "Scenes": [{"Type": "a", "Tags": ["x", "y"]}, {"Type": "b", "Tags": ["z"]}],
                "Empty": None,
                "EmptyNode": {},
                "Blank": "  ",
                "Single": [{"Only": 1}],
                "Flags": [True, False, None],
                "Big": 10**20,
            }
        },
    ),
    "text with whitespace and markup": tree_for(
        "Transcode",
        UserData="line one\r\nline two\rline three\n\t<x a='1'>&amp;</x>",
        CallBack="no",
    ),
}


@pytest.mark.parametrize("case", ROUND_TRIP_CASES)
def test_round_trips(case: str) -> None:
    request = request_from_tree(ROUND_TRIP_CASES[case])
    xml = request.to_xml()
    assert parse_request(xml) == request
    assert parse_request(xml, "application/xml").to_xml() == xml
    tree = json.loads(json.dumps(request.to_tree()))
    assert request_from_tree(tree) == request
    assert request_from_tree(tree).to_tree() == tree
    assert parse_request(json.dumps({"Request": tree}).encode(), "application/json") == request


# -------------------------------------------------------------------------------- the seed


def test_seed_sample_parses_exactly_as_given() -> None:
    request = parse_request(SEED_SAMPLE, "application/xml")
    assert request.name == "demo"
    assert request.type == "Job"
    assert request.input.prefix == "input"
    assert (request.input.manifest, request.input.url_file, request.input.object) == (None,) * 3
    op = request.operation
    assert op.time_interval is not None
    assert (op.time_interval.start, op.time_interval.end) == (
        "2022-02-01T12:00:00+0800",
        "2022-05-01T12:00:00+0800",
    )
    assert op.queue_id == "p893bcda225bf4945a378da6662e81a89"
    assert op.user_data == "this is my inventorytriggerjob"
    assert op.callback == "https://www.callback.com"
    assert (op.callback_format, op.callback_type, op.callback_mq_config) == (None, None, None)
    assert request.tag == op.tag == "Transcode"
    assert op.job_param.template_id == "t1460606b9752148c4ab182f55163ba7cd"
    assert op.job_param.containers == {}
    assert op.output is not None
    assert (op.output.region, op.output.bucket, op.output.object) == (
        "ap-chongqing",
        "test-1234567890",
        "output/${InventoryTriggerJobId}/out.mp4",
    )
    assert op.job_level == 0
    assert request.job_level == 0


def test_seed_sample_renders_in_the_seed_order() -> None:
    assert parse_request(SEED_SAMPLE).to_xml() == SEED_SAMPLE_XML_OUT


def test_seed_sample_to_tree() -> None:
    assert parse_request(SEED_SAMPLE).to_tree() == SEED_SAMPLE_TREE


def test_json_and_xml_give_the_same_request() -> None:
    from_xml = parse_request(SEED_SAMPLE)
    bare = json.dumps(SEED_SAMPLE_TREE).encode()
    wrapped = json.dumps({"Request": SEED_SAMPLE_TREE}).encode()
    assert parse_request(bare) == from_xml
    assert parse_request(wrapped, "application/json; charset=utf-8") == from_xml
    assert request_from_tree({"Request": SEED_SAMPLE_TREE}) == from_xml


# -------------------------------------------------------------------------------- rendering


def test_every_node_renders_in_order() -> None:
    assert request_from_tree(FULL_TREE).to_xml() == FULL_XML_OUT


def test_to_tree_has_strings_everywhere_and_canonical_spellings() -> None:
    tree = request_from_tree(FULL_TREE).to_tree()
    assert tree["Operation"]["JobLevel"] == "2"
    assert tree["Operation"]["JobParam"]["DigitalWatermark"]["IgnoreError"] == "true"

    def leaves(node: Any) -> list[Any]:
        if isinstance(node, dict):
            return [leaf for child in node.values() for leaf in leaves(child)]
        if isinstance(node, list):
            return [leaf for child in node for leaf in leaves(child)]
        return [node]

    assert all(isinstance(leaf, str) for leaf in leaves(tree))
    aliased = request_from_tree(ROUND_TRIP_CASES["voice separate by alias"]).to_tree()
    assert aliased["Operation"]["Tag"] == "VoiceSeparate"


def test_to_tree_omits_absent_nodes() -> None:
    tree = request_from_tree(ROUND_TRIP_CASES["media info without output"]).to_tree()
    assert tree == {
        "Name": "n",
        "Type": "Job",
        "Input": {"UrlFile": "list.txt"},
        "Operation": {"TimeInterval": {}, "QueueId": "q", "Tag": "MediaInfo", "JobParam": {}},
    }


def test_opaque_containers_take_the_shape_xml_gives_them() -> None:
    request = request_from_tree(ROUND_TRIP_CASES["opaque shapes"])
    assert request.operation.job_param.containers["VideoMontage"] == {
        "Container": {"Format": "mp4"},
        "Scenes": [{"Type": "a", "Tags": ["x", "y"]}, {"Type": "b", "Tags": "z"}],
        "Empty": "",
        "EmptyNode": "",
        "Blank": "",
        "Single": {"Only": "1"},
        "Flags": ["true", "false", ""],
        "Big": "100000000000000000000",
    }
    snapshot = request_from_tree(ROUND_TRIP_CASES["snapshot with counts"])
    assert snapshot.operation.job_param.containers["Snapshot"] == {
        "Mode": "Interval",
        "Count": "3",
        "Start": "0.5",
        "IsCheckBlack": "true",
    }


def test_text_is_normalised_as_xml_delivers_it() -> None:
    request = request_from_tree(ROUND_TRIP_CASES["text with whitespace and markup"])
    assert request.operation.user_data == "line one\nline two\nline three\n\t<x a='1'>&amp;</x>"
    assert b"<UserData>line one\nline two\nline three\n\t&lt;x a='1'&gt;&amp;amp;&lt;/x&gt;" in (
        request.to_xml()
    )


def test_to_tree_is_a_copy() -> None:
    request = request_from_tree(FULL_TREE)
    tree = request.to_tree()
    tree["Operation"]["JobParam"]["Transcode"]["Container"]["Format"] = "flv"
    tree["Operation"]["Output"]["StreamExtract"].clear()
    assert request.to_tree() == request_from_tree(FULL_TREE).to_tree()


def test_the_model_does_not_share_the_callers_tree() -> None:
    tree = copy.deepcopy(FULL_TREE)
    request = request_from_tree(tree)
    tree["Operation"]["JobParam"]["Transcode"]["Container"]["Format"] = "flv"
    assert request.operation.job_param.containers["Transcode"]["Container"] == {"Format": "mp4"}


def test_requests_are_hashable_values() -> None:
    first, second = request_from_tree(FULL_TREE), parse_request(FULL_XML_OUT)
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second}) == 1


# ------------------------------------------------------------------------------ bad documents


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"", "", "empty"),
        (b"  \n", "application/json", "empty"),
        (b"<Request><Name>demo</Request>", "", "malformed_xml"),
        (b'{"Name": }', "", "malformed_json"),
        (b'{"Name": "demo"}', "application/xml", "malformed_xml"),
        (b"<Request/>", "application/json", "malformed_json"),
        (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><Request>&a;</Request>',
            "",
            "doctype",
        ),
    ],
)
def test_malformed_documents(body: bytes, content_type: str, reason: str) -> None:
    with pytest.raises(DocumentError) as caught:
        parse_request(body, content_type)
    assert caught.value.reason == reason


def test_depth_is_bounded() -> None:
    deep_xml = SEED_SAMPLE.replace(
        b"<JobParam>", b"<JobParam><Snapshot>" + b"<A>" * 30 + b"x" + b"</A>" * 30 + b"</Snapshot>"
    )
    with pytest.raises(DocumentError) as caught:
        parse_request(deep_xml)
    assert caught.value.reason == "too_deep"
    assert parse_request(deep_xml, max_depth=64).tag == "Transcode"
    deep = copy.deepcopy(SEED_SAMPLE_TREE)
    node: dict[str, Any] = deep["Operation"]["JobParam"]
    for _ in range(31):
        node["A"] = {}
        node = node["A"]
    with pytest.raises(DocumentError) as caught:
        parse_request(json.dumps(deep).encode())
    assert caught.value.reason == "too_deep"


def test_xml_with_another_root() -> None:
    body = SEED_SAMPLE.replace(b"Request>", b"Response>")
    with pytest.raises(RequestInvalid) as caught:
        parse_request(body)
    assert [(e.path, e.message) for e in caught.value.errors] == [
        ("Request", "is the root element CI expects, not Response")
    ]


def test_json_that_is_not_an_object() -> None:
    with pytest.raises(RequestInvalid) as caught:
        parse_request(b'["Request"]')
    assert [(e.path, e.message) for e in caught.value.errors] == [
        ("Request", "expected a container, got a list")
    ]


def test_non_finite_numbers_in_a_container() -> None:
    tree = tree_for("Snapshot", JobParam={"Snapshot": {"Count": float("inf")}})
    with pytest.raises(DocumentError) as refused:
        parse_request(json.dumps(tree).encode())
    assert refused.value.reason == "malformed_json"
    with pytest.raises(RequestInvalid) as caught:
        request_from_tree(tree)
    assert [(e.path, e.message) for e in caught.value.errors] == [
        ("Request.Operation.JobParam.Snapshot.Count", "must be a finite number, not inf")
    ]


def test_xml_in_another_encoding() -> None:
    body = SEED_SAMPLE.replace(b"this is my", "für".encode("latin-1"))
    body = b'<?xml version="1.0" encoding="ISO-8859-1"?>\n' + body
    request = parse_request(body)
    assert request.operation.user_data == "für inventorytriggerjob"
    assert parse_request(request.to_xml()) == request


def test_parse_returns_the_model_type() -> None:
    assert isinstance(parse_request(SEED_SAMPLE), BatchRequest)
