"""parse_callback: formats, CI's list-or-object quirks, and every way a body is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.parsers.expat import ExpatError

import pytest
import xmltodict

from service.ingest.parse import ALWAYS_LIST, EventRejected, parse_callback, xml_tree

FIXTURES = Path(__file__).parents[1] / "fixtures" / "callbacks"
NAMES = sorted(path.stem for path in FIXTURES.glob("*.xml"))


def fixture(name: str, ext: str) -> bytes:
    return (FIXTURES / f"{name}.{ext}").read_bytes()


def rejection(body: bytes, content_type: str = "", **kwargs: Any) -> EventRejected:
    with pytest.raises(EventRejected) as caught:
        parse_callback(body, content_type, **kwargs)
    return caught.value


# --- accepted documents ---------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["xml", "json"])
@pytest.mark.parametrize("name", NAMES)
def test_every_fixture_parses_in_both_formats(name: str, ext: str) -> None:
    parsed = parse_callback(fixture(name, ext))

    assert parsed.format == ext
    assert parsed.event_name == ("WorkflowFinish" if name == "workflow_finish" else "TaskFinish")


def xmltodict_tree(body: bytes) -> dict[str, object]:
    """The reference: what xmltodict itself builds for the same document."""
    tree: dict[str, object] = xmltodict.parse(
        body, force_list=tuple(ALWAYS_LIST), disable_entities=True
    )
    return tree


@pytest.mark.parametrize("name", NAMES)
def test_xml_tree_is_the_tree_xmltodict_builds(name: str) -> None:
    body = fixture(name, "xml")
    reference = xmltodict_tree(body)

    assert xml_tree(body) == reference
    assert parse_callback(body).body == reference["Response"]


UNUSUAL_XML = {
    "attributes": (
        b'<Response a="1"><JobsDetail id="x"><JobId k="v">j1</JobId></JobsDetail></Response>'
    ),
    "attribute_only": b'<Response><Tag name="t"/></Response>',
    "mixed_content": b"<Response>head<A>1</A>middle<A>2</A>tail</Response>",
    "comments_split_text": b"<Response><A>x<!-- c -->y</A><!-- c2 --><B> z </B></Response>",
    "cdata": b"<Response><A><![CDATA[<b>&amp;</b>]]></A><B>a<![CDATA[ b ]]>c</B></Response>",
    "processing_instruction": (
        b"<?xml version='1.0'?><?pi data?><Response><?x y?><A>1</A></Response>"
    ),
    "entities_and_char_refs": (
        b"<Response><A>&lt;&gt;&amp;&quot;&apos;&#20013;&#x6587;</A></Response>"
    ),
    "declared_namespaces": (
        b'<Response xmlns="urn:a" xmlns:b="urn:b"><b:A b:c="1">x</b:A></Response>'
    ),
    "undeclared_prefix": b"<Response><ci:A>1</ci:A><xml:B>2</xml:B></Response>",
    "xml_lang": b'<Response xml:lang="zh"><A xml:space="preserve"> x </A></Response>',
    "repeated_plain_keys": b"<Response><A>1</A><A>2</A><A/><B/></Response>",
    "always_list_everywhere": (
        b"<Response><ObjectName/><X><ObjectName>a</ObjectName><ObjectName>b</ObjectName></X>"
        b"<Tasks><ObjectInfo><ObjectName>c</ObjectName></ObjectInfo></Tasks><Tasks/></Response>"
    ),
    "whitespace_only_text": b"<Response>\n  <A>   </A>\n\t<B>\r\n</B>\n</Response>\n\n",
    "unicode": "<Response><A>悯农 — ☃</A></Response>".encode(),
    "latin1_declared": (
        "<?xml version='1.0' encoding='ISO-8859-1'?><Response><A>café</A></Response>"
    ).encode("latin-1"),
    "utf16": ("<?xml version='1.0' encoding='UTF-16'?><Response><A>x 中</A></Response>").encode(
        "utf-16"
    ),
    "long_text": b"<Response><A>" + b"x" * 100_000 + b"</A></Response>",
    "root_is_always_list_key": b"<Tasks><A>1</A></Tasks>",
    "empty_root": b"<Response/>",
}


@pytest.mark.parametrize("body", UNUSUAL_XML.values(), ids=UNUSUAL_XML.keys())
def test_xml_tree_matches_xmltodict_on_unusual_documents(body: bytes) -> None:
    assert xml_tree(body) == xmltodict_tree(body)


MALFORMED_XML = {
    "truncated": b"<Response><A>1</A>",
    "mismatched": b"<Response><A>1</B></Response>",
    "two_roots": b"<Response/><Response/>",
    "text_after_root": b"<Response/>trailing",
    "bad_character": b"<Response>\x01</Response>",
    "invalid_utf8": b"<Response><A>\xff\xfe</A></Response>",
}


@pytest.mark.parametrize("body", MALFORMED_XML.values(), ids=MALFORMED_XML.keys())
def test_xml_tree_refuses_what_xmltodict_refuses(body: bytes) -> None:
    with pytest.raises(ExpatError):
        xmltodict.parse(body, force_list=tuple(ALWAYS_LIST), disable_entities=True)
    with pytest.raises(EventRejected) as ours:
        xml_tree(body)

    assert ours.value.reason == "malformed_xml"


def test_json_list_keys_become_lists_whatever_form_ci_used() -> None:
    body = {
        "EventName": "TaskFinish",
        "JobsDetail": {
            "JobId": "j1",
            "State": "Success",
            "Input": {"CosHeaders": {"Key": "Content-Type", "Value": "video/mp4"}},
            "Operation": {
                "MediaResult": {
                    "OutputFile": {
                        "Md5Info": None,
                        "ObjectName": "a.mp4",
                        "SpriteOutputFile": {"ObjectName": ["0.jpg"], "Md5Info": []},
                    }
                },
                "Output": {"StreamExtract": [{"Index": "0"}]},
            },
        },
        "Tasks": [{"ResultInfo": {"ObjectInfo": {"ObjectName": "x"}}}],
    }

    parsed = parse_callback(json.dumps(body).encode())

    detail = parsed.body["JobsDetail"][0]
    assert detail["Input"]["CosHeaders"] == [{"Key": "Content-Type", "Value": "video/mp4"}]
    output_file = detail["Operation"]["MediaResult"]["OutputFile"]
    assert output_file["Md5Info"] == [None]
    assert output_file["ObjectName"] == ["a.mp4"]
    assert output_file["SpriteOutputFile"] == {"ObjectName": ["0.jpg"], "Md5Info": []}
    assert detail["Operation"]["Output"]["StreamExtract"] == [{"Index": "0"}]
    assert parsed.body["Tasks"] == [{"ResultInfo": {"ObjectInfo": [{"ObjectName": ["x"]}]}}]


def test_json_jobs_detail_as_object_or_as_one_element_list_parse_alike() -> None:
    as_object = json.loads(fixture("transcode", "json"))
    as_list = json.loads(fixture("transcode", "json"))
    as_list["Response"]["JobsDetail"] = [as_list["Response"]["JobsDetail"]]

    assert (
        parse_callback(json.dumps(as_object).encode()).body
        == parse_callback(json.dumps(as_list).encode()).body
    )


def test_json_response_wrapper_is_optional() -> None:
    wrapped = fixture("transcode", "json")
    bare = json.dumps(json.loads(wrapped)["Response"]).encode()

    assert parse_callback(bare).body == parse_callback(wrapped).body


def test_json_unicode_escapes_read_like_the_characters_they_stand_for() -> None:
    escaped = rb'{"EventName": "TaskFinish", "JobsDetail": {"JobId": "j1", "State": "Success",'
    escaped += rb' "Operation": {"UserData": "\u4e2d\u6587 \ud83d\ude00 \\ud800"}}}'
    plain = '{"EventName": "TaskFinish", "JobsDetail": {"JobId": "j1", "State": "Success",'
    plain += ' "Operation": {"UserData": "中文 😀 \\\\ud800"}}}'

    assert parse_callback(escaped).body == parse_callback(plain.encode()).body


def test_json_values_are_kept_as_ci_sent_them() -> None:
    parsed = parse_callback(fixture("snapshot", "json"))

    assert parsed.body["JobsDetail"][0]["Operation"]["JobLevel"] == 1
    assert parsed.body["JobsDetail"][0]["Message"] == ""


@pytest.mark.parametrize("ext", ["xml", "json"])
def test_event_name_is_inferred_from_jobs_detail_when_missing(ext: str) -> None:
    parsed = parse_callback(fixture("legacy_noise_reduction", ext))

    assert parsed.event_name == "TaskFinish"
    assert "EventName" not in parsed.body


def test_event_name_is_inferred_from_workflow_execution_when_missing() -> None:
    xml = fixture("workflow_finish", "xml").replace(b"<EventName>WorkflowFinish</EventName>", b"")
    document = json.loads(fixture("workflow_finish", "json"))
    del document["Response"]["EventName"]

    assert parse_callback(xml).event_name == "WorkflowFinish"
    assert parse_callback(json.dumps(document).encode()).event_name == "WorkflowFinish"


def test_workflow_execution_as_one_element_list_is_accepted() -> None:
    document = json.loads(fixture("workflow_finish", "json"))
    execution = document["Response"]["WorkflowExecution"]
    document["Response"]["WorkflowExecution"] = [execution]

    assert parse_callback(json.dumps(document).encode()).event_name == "WorkflowFinish"


@pytest.mark.parametrize(
    ("name", "ext", "content_type"),
    [
        ("transcode", "json", "application/json; charset=utf-8"),
        ("transcode", "json", "text/plain"),
        ("transcode", "json", ""),
        ("transcode", "xml", "application/xml"),
        ("transcode", "xml", "text/xml; charset=UTF-8"),
        ("transcode", "xml", ""),
    ],
)
def test_format_comes_from_content_type_else_from_the_body(
    name: str, ext: str, content_type: str
) -> None:
    assert parse_callback(fixture(name, ext), content_type).format == ext


def test_a_document_at_the_depth_limit_is_accepted() -> None:
    # XML: Response > JobsDetail > Operation > MediaResult > OutputFile > Md5Info > Md5 is 7 deep.
    # JSON: the root object, then the same containers, with Md5Info an array of objects: 8.
    assert parse_callback(fixture("transcode", "xml"), max_depth=7).format == "xml"
    assert parse_callback(fixture("transcode", "json"), max_depth=8).format == "json"
    assert rejection(fixture("transcode", "xml"), max_depth=6).reason == "too_deep"
    assert rejection(fixture("transcode", "json"), max_depth=7).reason == "too_deep"


# --- refused documents ----------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Response><EventName>TaskFinish</EventName><JobsDetail><JobId>&lol9;</JobId></JobsDetail></Response>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE Response [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Response><EventName>TaskFinish</EventName>
<JobsDetail><JobId>&xxe;</JobId><State>Success</State></JobsDetail></Response>
"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE Response SYSTEM "http://127.0.0.1:9/evil.dtd">
<Response><EventName>TaskFinish</EventName></Response>
"""


def deep_xml(levels: int) -> bytes:
    return b"<Response>" + b"<A>" * (levels - 1) + b"x" + b"</A>" * (levels - 1) + b"</Response>"


def deep_json(levels: int) -> bytes:
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


REFUSED: dict[str, tuple[bytes, str, str]] = {
    "empty": (b"", "", "empty"),
    "whitespace_only": (b" \r\n\t ", "application/xml", "empty"),
    "empty_declared_json": (b"", "application/json", "empty"),
    "truncated_xml": (fixture("transcode", "xml")[:1500], "", "malformed_xml"),
    "truncated_xml_declared": (
        fixture("transcode", "xml")[:1500],
        "application/xml",
        "malformed_xml",
    ),
    "truncated_json": (fixture("transcode", "json")[:1500], "", "malformed_json"),
    "truncated_json_declared": (
        fixture("transcode", "json")[:1500],
        "application/json",
        "malformed_json",
    ),
    "plain_text": (b"hello, this is not a callback", "", "malformed_xml"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "application/octet-stream", "malformed_xml"),
    "xml_declared_as_json": (fixture("transcode", "xml"), "application/json", "malformed_json"),
    "json_declared_as_xml": (fixture("transcode", "json"), "application/xml", "malformed_xml"),
    "json_invalid_utf8": (b'{"EventName": "\xff\xfe"}', "", "malformed_json"),
    "json_nan": (
        b'{"EventName": "TaskFinish", "JobsDetail": {"JobLevel": NaN}}',
        "",
        "malformed_json",
    ),
    "json_lone_surrogate": (
        b'{"EventName": "TaskFinish", "JobsDetail": {"JobId": "j\\ud800", "State": "Success"}}',
        "",
        "malformed_json",
    ),
    "xml_invalid_utf8": (b"<Response><EventName>\xff</EventName></Response>", "", "malformed_xml"),
    "xml_multibyte_encoding": (
        "<?xml version='1.0' encoding='GBK'?><Response><A>中</A></Response>".encode("gbk"),
        "",
        "malformed_xml",
    ),
    "billion_laughs": (BILLION_LAUGHS, "", "doctype"),
    "billion_laughs_utf16": (BILLION_LAUGHS.decode().encode("utf-16"), "", "doctype"),
    "external_entity": (EXTERNAL_ENTITY, "application/xml", "doctype"),
    "external_dtd": (EXTERNAL_DTD, "", "doctype"),
    "undeclared_entity": (
        b"<Response><EventName>&xxe;</EventName></Response>",
        "",
        "malformed_xml",
    ),
    "xml_too_deep": (deep_xml(33), "", "too_deep"),
    "json_too_deep": (deep_json(33), "", "too_deep"),
    "json_far_too_deep": (b"[" * 100_000, "", "too_deep"),
    "json_array_root": (b'[{"EventName": "TaskFinish"}]', "", "not_an_object"),
    "json_string_root": (b'"TaskFinish"', "application/json", "not_an_object"),
    "json_null_root": (b"null", "application/json", "not_an_object"),
    "json_response_not_object": (b'{"Response": ["TaskFinish"]}', "", "not_an_object"),
    "xml_other_root": (b"<Error><Code>NoSuchKey</Code></Error>", "", "unexpected_root"),
    "xml_empty_response": (b"<Response/>", "", "not_an_object"),
    "xml_text_response": (b"<Response>TaskFinish</Response>", "", "not_an_object"),
    "unknown_event_xml": (
        b"<Response><EventName>TaskStart</EventName><JobsDetail/></Response>",
        "",
        "unknown_event",
    ),
    "unknown_event_json": (b'{"EventName": "JobCreated", "JobsDetail": {}}', "", "unknown_event"),
    "two_event_names": (
        b"<Response><EventName>TaskFinish</EventName><EventName>TaskFinish</EventName></Response>",
        "",
        "unknown_event",
    ),
    "numeric_event_name": (b'{"EventName": 1}', "", "unknown_event"),
    "no_event_name_nothing_to_infer": (
        b"<Response><RequestId>r</RequestId></Response>",
        "",
        "unknown_event",
    ),
    "task_finish_without_jobs_detail_xml": (
        b"<Response><EventName>TaskFinish</EventName></Response>",
        "",
        "missing_jobs_detail",
    ),
    "task_finish_without_jobs_detail_json": (
        b'{"Response": {"EventName": "TaskFinish"}}',
        "",
        "missing_jobs_detail",
    ),
    "task_finish_empty_jobs_detail_xml": (
        b"<Response><EventName>TaskFinish</EventName><JobsDetail/></Response>",
        "",
        "missing_jobs_detail",
    ),
    "task_finish_empty_jobs_detail_list": (
        b'{"EventName": "TaskFinish", "JobsDetail": []}',
        "",
        "missing_jobs_detail",
    ),
    "task_finish_jobs_detail_text": (
        b'{"EventName": "TaskFinish", "JobsDetail": "j1"}',
        "",
        "missing_jobs_detail",
    ),
    "task_finish_without_job_id": (
        b"<Response><EventName>TaskFinish</EventName>"
        b"<JobsDetail><State>Success</State></JobsDetail></Response>",
        "",
        "missing_job_id",
    ),
    "task_finish_without_state": (
        b'{"EventName": "TaskFinish", "JobsDetail": {"JobId": "j1", "State": ""}}',
        "",
        "missing_state",
    ),
    "task_finish_job_id_object": (
        b'{"EventName": "TaskFinish", "JobsDetail": {"JobId": {"x": 1}, "State": "Success"}}',
        "",
        "bad_field",
    ),
    "workflow_finish_without_execution_xml": (
        b"<Response><EventName>WorkflowFinish</EventName><JobsDetail/></Response>",
        "",
        "missing_workflow_execution",
    ),
    "workflow_finish_without_execution_json": (
        b'{"EventName": "WorkflowFinish", "WorkflowExecution": ""}',
        "",
        "missing_workflow_execution",
    ),
    "workflow_finish_without_run_id": (
        b"<Response><EventName>WorkflowFinish</EventName>"
        b"<WorkflowExecution><State>Success</State></WorkflowExecution></Response>",
        "",
        "missing_run_id",
    ),
    "workflow_finish_without_state": (
        b'{"EventName": "WorkflowFinish", "WorkflowExecution": {"RunId": "i1"}}',
        "",
        "missing_state",
    ),
    "workflow_finish_two_executions": (
        b"<Response><EventName>WorkflowFinish</EventName>"
        b"<WorkflowExecution><RunId>i1</RunId></WorkflowExecution>"
        b"<WorkflowExecution><RunId>i2</RunId></WorkflowExecution></Response>",
        "",
        "bad_field",
    ),
}


@pytest.mark.parametrize(("body", "content_type", "reason"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_bodies_get_a_stable_reason(body: bytes, content_type: str, reason: str) -> None:
    refused = rejection(body, content_type)

    assert refused.reason == reason
    assert str(refused) == refused.message
    assert refused.message


def test_entities_are_never_expanded_or_fetched() -> None:
    for body in (EXTERNAL_ENTITY, BILLION_LAUGHS):
        refused = rejection(body)
        assert refused.reason == "doctype"
        assert "root:" not in refused.message
        assert "lollol" not in refused.message


def test_depth_limit_is_the_argument() -> None:
    assert rejection(deep_xml(5), max_depth=4).reason == "too_deep"
    assert rejection(deep_json(5), max_depth=4).reason == "too_deep"
    # Past the depth check, these are refused for their content, not their depth.
    assert rejection(deep_xml(5), max_depth=5).reason == "unknown_event"
    assert rejection(deep_json(5), max_depth=5).reason == "unknown_event"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (deep_xml(40), "<A>"),
        (
            b'{"EventName": "TaskFinish", "JobsDetail": [{"JobId": "j1", "State": "Success"}, '
            b'{"State": "Success"}]}',
            "JobsDetail[1].JobId",
        ),
        (
            b'{"EventName": "TaskFinish", "JobsDetail": {"JobId": ["a", "b"], "State": "x"}}',
            "JobsDetail[0].JobId",
        ),
        (b"<Response><EventName>TaskFinished</EventName></Response>", "'TaskFinished'"),
        (b"<Data><JobsDetail/></Data>", "<Data>"),
        (
            b'{"EventName": "WorkflowFinish", "WorkflowExecution": {"State": "Success"}}',
            "WorkflowExecution.RunId",
        ),
    ],
)
def test_messages_name_the_offending_node(body: bytes, named: str) -> None:
    assert named in rejection(body).message
