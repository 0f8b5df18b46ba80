"""Every rule of the seed's inventorytriggerjob Request, each accepted and refused."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from service.request import (
    TAG_ALIASES,
    TAG_CONTAINERS,
    TAGS,
    TAGS_WITHOUT_OUTPUT,
    BatchRequest,
    FieldError,
    RequestInvalid,
    parse_request,
    request_from_tree,
)

DELETE = object()

# The 22 spellings of the seed's "Operation.Tag supports the following types" table, verbatim.
SEED_TAG_TABLE = (
    "Animatin",
    "SmartCover",
    "Transcode",
    "Snapshot",
    "SpeechRecognition",
    "Concat",
    "VoiceSpearte",
    "VideoMontage",
    "SDRtoHDR",
    "VoiceSeparate",
    "VideoProcess",
    "SuperResolution",
    "Segment",
    "VideoTag",
    "PicProcess",
    "DigitalWatermark",
    "ExtractDigitalWatermark",
    "MediaInfo",
    "StreamExtract",
    "Tts",
    "NoiseReduction",
    "QualityEstimate",
)


def valid(tag: str = "Transcode") -> dict[str, Any]:
    """A valid Request (JSON form) for ``tag``; tests change one node of it."""
    output: dict[str, Any] = {
        "Region": "ap-chongqing",
        "Bucket": "test-1234567890",
        "Object": "output/${InventoryTriggerJobId}/out.mp4",
    }
    if tag == "StreamExtract":
        output["StreamExtract"] = [{"Index": "0", "Object": "v.mp4"}]
    return {
        "Name": "demo",
        "Type": "Job",
        "Input": {"Prefix": "input"},
        "Operation": {
            "Tag": tag,
            "QueueId": "p893bcda225bf4945a378da6662e81a89",
            "JobParam": {"TemplateId": "t1460606b9752148c4ab182f55163ba7cd"},
            "Output": output,
        },
    }


def edited(tree: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``tree`` with nodes set (or removed with DELETE); keys are dotted paths."""
    tree = copy.deepcopy(tree)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return tree


def errors_of(tree: Any, *, xml: bytes | None = None) -> list[tuple[str, str]]:
    with pytest.raises(RequestInvalid) as caught:
        request_from_tree(tree) if xml is None else parse_request(xml)
    return [(e.path, e.message) for e in caught.value.errors]


def ok(tree: Any) -> BatchRequest:
    return request_from_tree(tree)


# ---------------------------------------------------------------------------------------- tags


def test_tag_lists() -> None:
    assert len(TAGS) == 21 == len(set(TAGS))
    assert dict(TAG_ALIASES) == {
        "Animatin": "Animation",
        "VoiceSpearte": "VoiceSeparate",
        "SDR2HDR": "SDRtoHDR",
    }
    assert set(TAG_ALIASES.values()) <= set(TAGS)
    assert set(TAGS) == {TAG_ALIASES.get(t, t) for t in SEED_TAG_TABLE}
    assert {"VideoTag", "ExtractDigitalWatermark", "MediaInfo", "QualityEstimate"} == set(
        TAGS_WITHOUT_OUTPUT
    )


@pytest.mark.parametrize("spelling", [*SEED_TAG_TABLE, "Animation", "SDR2HDR"])
def test_every_documented_tag_spelling_is_accepted_and_stored_canonical(spelling: str) -> None:
    canonical = TAG_ALIASES.get(spelling, spelling)
    request = ok(edited(valid(canonical), Operation__Tag=spelling))
    assert request.tag == canonical
    assert request.to_tree()["Operation"]["Tag"] == canonical


def test_unknown_tag() -> None:
    assert errors_of(edited(valid(), Operation__Tag="Transcoding")) == [
        (
            "Request.Operation.Tag",
            "'Transcoding' is not a CI job tag; expected one of " + ", ".join(TAGS),
        )
    ]


def test_tag_in_the_wrong_case_gets_a_hint() -> None:
    assert errors_of(edited(valid(), Operation__Tag="transcode")) == [
        ("Request.Operation.Tag", "'transcode' is not a CI job tag; did you mean Transcode?")
    ]


# ------------------------------------------------------------------------------ required nodes


def test_the_valid_base_request() -> None:
    request = ok(valid())
    assert (request.name, request.type, request.tag, request.job_level) == (
        "demo",
        "Job",
        "Transcode",
        0,
    )


@pytest.mark.parametrize(
    ("dotted", "path"),
    [
        ("Name", "Request.Name"),
        ("Type", "Request.Type"),
        ("Input", "Request.Input"),
        ("Operation", "Request.Operation"),
        ("Operation__Tag", "Request.Operation.Tag"),
        ("Operation__JobParam", "Request.Operation.JobParam"),
        ("Operation__QueueId", "Request.Operation.QueueId"),
        ("Operation__Output__Region", "Request.Operation.Output.Region"),
        ("Operation__Output__Bucket", "Request.Operation.Output.Bucket"),
    ],
)
def test_required_node_missing(dotted: str, path: str) -> None:
    assert errors_of(edited(valid(), **{dotted: DELETE})) == [(path, "is required")]


@pytest.mark.parametrize("empty", ["", "   ", None])
@pytest.mark.parametrize(
    ("dotted", "path"),
    [
        ("Name", "Request.Name"),
        ("Type", "Request.Type"),
        ("Operation__Tag", "Request.Operation.Tag"),
        ("Operation__QueueId", "Request.Operation.QueueId"),
        ("Operation__Output__Region", "Request.Operation.Output.Region"),
        ("Operation__Output__Bucket", "Request.Operation.Output.Bucket"),
    ],
)
def test_required_string_empty(dotted: str, path: str, empty: str | None) -> None:
    assert errors_of(edited(valid(), **{dotted: empty})) == [(path, "must not be empty")]


def test_empty_request_reports_every_required_node() -> None:
    assert errors_of({}) == [
        ("Request.Name", "is required"),
        ("Request.Type", "is required"),
        ("Request.Input", "is required"),
        ("Request.Operation", "is required"),
    ]


def test_empty_xml_request_element() -> None:
    assert errors_of(None, xml=b"<Request/>") == [
        ("Request.Name", "is required"),
        ("Request.Type", "is required"),
        ("Request.Input", "is required"),
        ("Request.Operation", "is required"),
    ]


def test_empty_operation_container() -> None:
    assert errors_of(edited(valid(), Operation={})) == [
        ("Request.Operation.Tag", "is required"),
        ("Request.Operation.JobParam", "is required"),
        ("Request.Operation.QueueId", "is required"),
    ]


def test_type_must_be_job() -> None:
    assert errors_of(edited(valid(), Type="Workflow")) == [
        ("Request.Type", "must be Job, not 'Workflow'")
    ]


# -------------------------------------------------------------------------------------- Input


@pytest.mark.parametrize("source", ["Manifest", "UrlFile", "Prefix", "Object"])
def test_input_by_any_one_source(source: str) -> None:
    request = ok(edited(valid(), Input={source: "inventory/manifest.json"}))
    assert request.input.to_tree() == {source: "inventory/manifest.json"}


def test_input_with_several_sources() -> None:
    request = ok(edited(valid(), Input={"Manifest": "m.json", "Prefix": "in/", "Object": "a.mp4"}))
    assert (request.input.manifest, request.input.prefix, request.input.object) == (
        "m.json",
        "in/",
        "a.mp4",
    )


@pytest.mark.parametrize("empty_input", [{}, None, {"Prefix": ""}, {"Object": None}])
def test_input_that_selects_nothing(empty_input: Any) -> None:
    assert errors_of(edited(valid(), Input=empty_input)) == [
        ("Request.Input", "needs one of Manifest, UrlFile, Prefix or Object")
    ]


def test_input_source_of_wrong_type_is_reported_once() -> None:
    assert errors_of(edited(valid(), Input={"Prefix": ["a", "b"]})) == [
        ("Request.Input.Prefix", "expected a string, got a list")
    ]


# --------------------------------------------------------------------------------------- Name


@pytest.mark.parametrize("name", ["a", "demo", "Job_2024-01", "-_", "x" * 128, "0123456789"])
def test_good_names(name: str) -> None:
    assert ok(edited(valid(), Name=name)).name == name


def test_name_too_long() -> None:
    assert errors_of(edited(valid(), Name="x" * 129)) == [
        ("Request.Name", "is 129 characters long; at most 128 are allowed")
    ]


@pytest.mark.parametrize("name", ["a b", "a.b", "a/b", "naïve", "名字", "a*b", "a\tb"])
def test_name_with_other_characters(name: str) -> None:
    assert errors_of(edited(valid(), Name=name)) == [
        (
            "Request.Name",
            f"may contain only letters, digits, hyphens and underscores, not {name!r}",
        )
    ]


def test_name_is_stripped_like_xml_text() -> None:
    assert ok(edited(valid(), Name="  demo\n")).name == "demo"


# ------------------------------------------------------------------------------------- Output


@pytest.mark.parametrize("tag", sorted(set(TAGS) - TAGS_WITHOUT_OUTPUT))
def test_output_required_for_tag(tag: str) -> None:
    tree = edited(valid(tag), Operation__Output=DELETE, Operation__JobParam={"TemplateId": "t1"})
    assert errors_of(tree) == [("Request.Operation.Output", f"is required for Tag {tag}")]


@pytest.mark.parametrize("tag", sorted(TAGS_WITHOUT_OUTPUT))
def test_output_optional_for_tag(tag: str) -> None:
    request = ok(edited(valid(tag), Operation__Output=DELETE))
    assert request.operation.output is None
    assert "Output" not in request.to_tree()["Operation"]


def test_output_required_for_an_alias_names_the_canonical_tag() -> None:
    tree = edited(valid(), Operation__Tag="VoiceSpearte", Operation__Output=DELETE)
    assert errors_of(tree) == [("Request.Operation.Output", "is required for Tag VoiceSeparate")]


@pytest.mark.parametrize("tag", sorted(set(TAGS) - {"Snapshot", "VoiceSeparate", "StreamExtract"}))
def test_output_object_required_for_tag(tag: str) -> None:
    tree = edited(valid(tag), Operation__Output__Object=DELETE)
    assert errors_of(tree) == [("Request.Operation.Output.Object", f"is required for Tag {tag}")]


def test_output_object_empty_counts_as_missing() -> None:
    assert errors_of(edited(valid(), Operation__Output__Object="")) == [
        ("Request.Operation.Output.Object", "is required for Tag Transcode")
    ]


def test_output_without_object_for_stream_extract() -> None:
    request = ok(edited(valid("StreamExtract"), Operation__Output__Object=DELETE))
    assert request.operation.output is not None
    assert request.operation.output.object is None


def test_voice_separate_with_au_object_only() -> None:
    tree = edited(
        valid("VoiceSeparate"),
        Operation__Output__Object=DELETE,
        Operation__Output__AuObject="a.mp3",
    )
    output = ok(tree).operation.output
    assert output is not None
    assert (output.object, output.au_object) == (None, "a.mp3")


def test_voice_separate_with_both_objects() -> None:
    output = ok(
        edited(valid("VoiceSeparate"), Operation__Output__AuObject="a.mp3")
    ).operation.output
    assert output is not None
    assert output.au_object == "a.mp3"


@pytest.mark.parametrize("tag", ["VoiceSeparate", "VoiceSpearte"])
def test_voice_separate_needs_object_or_au_object(tag: str) -> None:
    tree = edited(valid(), Operation__Tag=tag, Operation__Output__Object=DELETE)
    assert errors_of(tree) == [
        (
            "Request.Operation.Output.Object",
            "is required for Tag VoiceSeparate unless AuObject is given",
        )
    ]


def test_snapshot_with_sprite_object_only() -> None:
    tree = edited(
        valid("Snapshot"),
        Operation__Output__Object=DELETE,
        Operation__Output__SpriteObject="sprite.jpg",
    )
    output = ok(tree).operation.output
    assert output is not None
    assert output.sprite_object == "sprite.jpg"


def test_snapshot_needs_object_or_sprite_object() -> None:
    tree = edited(valid("Snapshot"), Operation__Output__Object="")
    assert errors_of(tree) == [
        (
            "Request.Operation.Output.Object",
            "is required for Tag Snapshot unless SpriteObject is given",
        )
    ]


@pytest.mark.parametrize("sprite", ["sprite.jpg", "dir/Sprite.JPG", "s-${Number}.jpg"])
def test_sprite_object_jpg(sprite: str) -> None:
    output = ok(edited(valid("Snapshot"), Operation__Output__SpriteObject=sprite)).operation.output
    assert output is not None
    assert output.sprite_object == sprite


@pytest.mark.parametrize("sprite", ["sprite.png", "sprite.jpeg", "sprite", "sprite.jpg.gif"])
def test_sprite_object_must_be_jpg(sprite: str) -> None:
    assert errors_of(edited(valid("Snapshot"), Operation__Output__SpriteObject=sprite)) == [
        ("Request.Operation.Output.SpriteObject", "must name a .jpg file (only jpg is supported)")
    ]


# ------------------------------------------------------------------------------- ${Number}


@pytest.mark.parametrize("count", ["2", 2, "10", "1.5"])
def test_smart_cover_count_above_one_needs_number_in_object(count: Any) -> None:
    tree = edited(
        valid("SmartCover"),
        Operation__JobParam={"SmartCover": {"Format": "jpg", "Count": count}},
        Operation__Output__Object="cover.jpg",
    )
    assert errors_of(tree) == [
        (
            "Request.Operation.Output.Object",
            f"must contain ${{Number}} because JobParam.SmartCover.Count is {count}",
        )
    ]


@pytest.mark.parametrize(
    ("count", "obj"),
    [("2", "cover-${Number}.jpg"), ("1", "cover.jpg"), ("0", "cover.jpg"), ("many", "c.jpg")],
)
def test_smart_cover_objects_that_pass(count: str, obj: str) -> None:
    tree = edited(
        valid("SmartCover"),
        Operation__JobParam={"SmartCover": {"Count": count}},
        Operation__Output__Object=obj,
    )
    assert ok(tree).operation.job_param.containers["SmartCover"] == {"Count": count}


def test_number_rule_needs_the_container_to_know_the_count() -> None:
    assert ok(edited(valid("SmartCover"), Operation__Output__Object="cover.jpg"))


def test_smart_cover_count_only_matters_for_tag_smart_cover() -> None:
    tree = edited(
        valid("Transcode"),
        Operation__JobParam={"TemplateId": "t1", "SmartCover": {"Count": "5"}},
        Operation__Output__Object="out.mp4",
    )
    assert ok(tree).tag == "Transcode"


def test_snapshot_count_above_one_needs_number_in_object_and_sprite_object() -> None:
    tree = edited(
        valid("Snapshot"),
        Operation__JobParam={"Snapshot": {"Mode": "Interval", "Count": "3"}},
        Operation__Output__Object="snap.jpg",
        Operation__Output__SpriteObject="sprite.jpg",
    )
    message = "must contain ${Number} because JobParam.Snapshot.Count is 3"
    assert errors_of(tree) == [
        ("Request.Operation.Output.Object", message),
        ("Request.Operation.Output.SpriteObject", message),
    ]


def test_snapshot_count_above_one_with_number_everywhere() -> None:
    tree = edited(
        valid("Snapshot"),
        Operation__JobParam={"Snapshot": {"Count": "3"}},
        Operation__Output__Object="snap-${Number}.jpg",
        Operation__Output__SpriteObject="sprite-${Number}.jpg",
    )
    assert ok(tree).tag == "Snapshot"


def test_snapshot_count_above_one_sprite_only() -> None:
    tree = edited(
        valid("Snapshot"),
        Operation__JobParam={"Snapshot": {"Count": "3"}},
        Operation__Output__Object=DELETE,
        Operation__Output__SpriteObject="sprite.jpg",
    )
    assert errors_of(tree) == [
        (
            "Request.Operation.Output.SpriteObject",
            "must contain ${Number} because JobParam.Snapshot.Count is 3",
        )
    ]


# --------------------------------------------------------------------------- StreamExtract


def test_stream_extract_requires_output_stream_extract() -> None:
    tree = edited(valid("StreamExtract"), Operation__Output__StreamExtract=DELETE)
    assert errors_of(tree) == [
        ("Request.Operation.Output.StreamExtract", "is required for Tag StreamExtract")
    ]


def test_stream_extract_empty_list_is_missing() -> None:
    tree = edited(valid("StreamExtract"), Operation__Output__StreamExtract=[])
    assert errors_of(tree) == [
        ("Request.Operation.Output.StreamExtract", "is required for Tag StreamExtract")
    ]


def test_stream_extract_several_and_single() -> None:
    streams = [{"Index": "0", "Object": "v.mp4"}, {"Index": "1", "Object": "a.aac"}]
    output = ok(
        edited(valid("StreamExtract"), Operation__Output__StreamExtract=streams)
    ).operation.output
    assert output is not None
    assert [(s.index, s.object) for s in output.stream_extract] == [("0", "v.mp4"), ("1", "a.aac")]
    single = edited(valid("StreamExtract"), Operation__Output__StreamExtract=streams[0])
    output = ok(single).operation.output
    assert output is not None
    assert [(s.index, s.object) for s in output.stream_extract] == [("0", "v.mp4")]


def test_stream_extract_items_need_index_and_object() -> None:
    streams = [{"Index": "0"}, {"Object": "a.aac"}, {"Index": "x", "Object": "b"}, "text"]
    tree = edited(valid("StreamExtract"), Operation__Output__StreamExtract=streams)
    assert errors_of(tree) == [
        ("Request.Operation.Output.StreamExtract[0].Object", "is required"),
        ("Request.Operation.Output.StreamExtract[1].Index", "is required"),
        ("Request.Operation.Output.StreamExtract[2].Index", "must be a stream number, not 'x'"),
        ("Request.Operation.Output.StreamExtract[3]", "expected a container, got a string"),
    ]


def test_stream_extract_with_only_bad_items_is_not_also_missing() -> None:
    tree = edited(valid("StreamExtract"), Operation__Output__StreamExtract=["a", "b"])
    assert errors_of(tree) == [
        ("Request.Operation.Output.StreamExtract[0]", "expected a container, got a string"),
        ("Request.Operation.Output.StreamExtract[1]", "expected a container, got a string"),
    ]


def test_input_with_only_a_bad_source_is_not_also_empty() -> None:
    assert errors_of(edited(valid(), Input={"Prefix": "a\x02"})) == [
        ("Request.Input.Prefix", "contains U+0002, which XML cannot carry")
    ]


def test_stream_extract_single_item_path_has_no_index() -> None:
    tree = edited(valid("StreamExtract"), Operation__Output__StreamExtract={"Index": "0"})
    assert errors_of(tree) == [("Request.Operation.Output.StreamExtract.Object", "is required")]


def test_stream_extract_items_are_checked_for_other_tags_too() -> None:
    tree = edited(valid(), Operation__Output__StreamExtract=[{"Index": "0", "Object": ""}])
    assert errors_of(tree) == [
        ("Request.Operation.Output.StreamExtract[0].Object", "must not be empty")
    ]


def test_stream_extract_repeated_in_xml() -> None:
    xml = (
        b"<Request><Name>n</Name><Type>Job</Type><Input><Object>in.mxf</Object></Input>"
        b"<Operation><Tag>StreamExtract</Tag><QueueId>q</QueueId><JobParam/>"
        b"<Output><Region>ap-guangzhou</Region><Bucket>b-1</Bucket>"
        b"<StreamExtract><Index>0</Index><Object>v.mxf</Object></StreamExtract>"
        b"<StreamExtract><Index>1</Index><Object>a.aac</Object></StreamExtract>"
        b"</Output></Operation></Request>"
    )
    output = parse_request(xml).operation.output
    assert output is not None
    assert [s.index for s in output.stream_extract] == ["0", "1"]


# ----------------------------------------------------------------------------------- JobParam


@pytest.mark.parametrize(("tag", "container"), sorted(TAG_CONTAINERS.items()))
def test_job_param_needs_template_id_or_the_tag_container(tag: str, container: str) -> None:
    tree = edited(valid(tag), Operation__JobParam={})
    assert errors_of(tree) == [
        ("Request.Operation.JobParam", f"needs TemplateId or {container} for Tag {tag}")
    ]


@pytest.mark.parametrize(("tag", "container"), sorted(TAG_CONTAINERS.items()))
def test_job_param_by_the_tag_container(tag: str, container: str) -> None:
    body = (
        {"Message": "abc", "Type": "Text", "Version": "V1"}
        if container == "DigitalWatermark"
        else {"Mode": "x"}
    )
    request = ok(edited(valid(tag), Operation__JobParam={container: body}))
    assert request.operation.job_param.template_id is None
    assert request.operation.job_param.to_tree() == {container: body}


def test_job_param_alias_tag_uses_the_canonical_container() -> None:
    tree = edited(valid(), Operation__Tag="Animatin", Operation__JobParam={"Animation": {}})
    assert ok(tree).operation.job_param.containers == {"Animation": {}}
    tree = edited(valid(), Operation__Tag="SDR2HDR", Operation__JobParam={"Transcode": {}})
    assert errors_of(tree) == [
        ("Request.Operation.JobParam", "needs TemplateId or SDRtoHDR for Tag SDRtoHDR")
    ]


@pytest.mark.parametrize("tag", sorted(set(TAGS) - set(TAG_CONTAINERS)))
def test_tags_without_a_container_accept_an_empty_job_param(tag: str) -> None:
    assert ok(edited(valid(tag), Operation__JobParam=None)).operation.job_param.to_tree() == {}


def test_job_param_containers_of_other_tags_pass_through() -> None:
    param = {
        "TemplateId": "t1",
        "TranscodeTemplateId": "t2",
        "Watermark": [{"Type": "Text"}, {"Type": "Image"}],
        "WatermarkTemplateId": ["w1", "w2"],
        "RemoveWatermark": {"Dx": "150", "Dy": "150", "Width": "75", "Height": "75"},
    }
    job_param = ok(edited(valid(), Operation__JobParam=param)).operation.job_param
    assert job_param.transcode_template_id == "t2"
    assert job_param.watermark_template_ids == ("w1", "w2")
    assert job_param.containers == {
        "Watermark": [{"Type": "Text"}, {"Type": "Image"}],
        "RemoveWatermark": {"Dx": "150", "Dy": "150", "Width": "75", "Height": "75"},
    }


def test_watermark_template_id_may_be_one_string() -> None:
    param = {"TemplateId": "t1", "WatermarkTemplateId": "w1"}
    assert ok(
        edited(valid(), Operation__JobParam=param)
    ).operation.job_param.watermark_template_ids == ("w1",)


def test_watermark_template_id_items_must_not_be_empty() -> None:
    param = {"TemplateId": "t1", "WatermarkTemplateId": ["w1", ""]}
    assert errors_of(edited(valid(), Operation__JobParam=param)) == [
        ("Request.Operation.JobParam.WatermarkTemplateId[1]", "must not be empty")
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("text", "expected a container, got a string"),
        (["a"], "expected a container, got a list"),
        ([{"Mode": "a"}, {"Mode": "b"}], "expected a container, got a list"),
        (3, "expected a container, got a number"),
    ],
)
def test_per_tag_containers_must_be_containers(value: Any, message: str) -> None:
    tree = edited(valid("Snapshot"), Operation__JobParam={"Snapshot": value})
    assert errors_of(tree) == [("Request.Operation.JobParam.Snapshot", message)]


def test_watermark_items_must_be_containers() -> None:
    tree = edited(valid(), Operation__JobParam={"TemplateId": "t", "Watermark": [{}, "x"]})
    assert errors_of(tree) == [
        ("Request.Operation.JobParam.Watermark[1]", "expected a container, got a string")
    ]


def test_job_param_as_a_string() -> None:
    assert errors_of(edited(valid(), Operation__JobParam="t1")) == [
        ("Request.Operation.JobParam", "expected a container, got a string")
    ]


def test_template_id_of_wrong_type_is_reported_once() -> None:
    assert errors_of(edited(valid(), Operation__JobParam={"TemplateId": 5})) == [
        ("Request.Operation.JobParam.TemplateId", "expected a string, got a number")
    ]


@pytest.mark.parametrize(
    ("inner", "path", "message"),
    [
        ({"a b": "1"}, "Snapshot.a b", "is not a valid XML element name"),
        ({"1st": "1"}, "Snapshot.1st", "is not a valid XML element name"),
        ({"<x>": "1"}, "Snapshot.<x>", "is not a valid XML element name"),
        ({"@Mode": "1"}, "Snapshot.@Mode", "XML attributes are not accepted"),
        (
            {"#text": "t", "Mode": "1"},
            "Snapshot.#text",
            "text beside child elements is not accepted",
        ),
        ({"Mode": []}, "Snapshot.Mode", "must not be an empty list"),
        ({"Mode": [["a"], "b"]}, "Snapshot.Mode[0]", "a list cannot directly hold a list in XML"),
        ({"Mode": float("nan")}, "Snapshot.Mode", "must be a finite number, not nan"),
        ({"Mode": "a\x00b"}, "Snapshot.Mode", "contains U+0000, which XML cannot carry"),
        ({"Mode": {1, 2}}, "Snapshot.Mode", "expected a JSON value, got a set"),
    ],
)
def test_per_tag_container_trees_must_be_expressible_in_xml(
    inner: dict[str, Any], path: str, message: str
) -> None:
    tree = edited(valid("Snapshot"), Operation__JobParam={"Snapshot": inner})
    assert errors_of(tree) == [(f"Request.Operation.JobParam.{path}", message)]


def test_per_tag_container_depth_is_bounded() -> None:
    inner: dict[str, Any] = {"Leaf": "x"}
    for _ in range(70):
        inner = {"Level": inner}
    tree = edited(valid("Snapshot"), Operation__JobParam={"Snapshot": inner})
    [(path, message)] = errors_of(tree)
    assert path == "Request.Operation.JobParam.Snapshot" + ".Level" * 65
    assert message == "nests deeper than 64 levels"


# --------------------------------------------------------------------------- DigitalWatermark


def watermark(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"Message": "abc_-*123", "Type": "Text", "Version": "V1"}
    body.update(fields)
    return edited(valid("DigitalWatermark"), Operation__JobParam={"DigitalWatermark": body})


@pytest.mark.parametrize("ignore", [None, "true", "false"])
def test_digital_watermark_valid(ignore: str | None) -> None:
    tree = watermark() if ignore is None else watermark(IgnoreError=ignore)
    mark = ok(tree).operation.job_param.digital_watermark
    assert mark is not None
    assert (mark.message, mark.type, mark.version) == ("abc_-*123", "Text", "V1")
    assert mark.ignore_error == {None: None, "true": True, "false": False}[ignore]


def test_digital_watermark_message_of_64() -> None:
    assert ok(watermark(Message="m" * 64))


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"Message": "m" * 65}, "Message", "is 65 characters long; at most 64 are allowed"),
        ({"Message": "a b"}, "Message", "may contain only letters, digits, _, - and *, not 'a b'"),
        ({"Message": "a.b"}, "Message", "may contain only letters, digits, _, - and *, not 'a.b'"),
        ({"Type": "Image"}, "Type", "must be Text, not 'Image'"),
        ({"Version": "V2"}, "Version", "must be V1, not 'V2'"),
        ({"IgnoreError": "yes"}, "IgnoreError", "must be true or false, not 'yes'"),
        ({"IgnoreError": True}, "IgnoreError", "expected a string, got a boolean"),
        ({"Message": DELETE}, "Message", "is required"),
        ({"Type": DELETE}, "Type", "is required"),
        ({"Version": DELETE}, "Version", "is required"),
        ({"Extra": "x"}, "Extra", "unknown field"),
    ],
)
def test_digital_watermark_invalid(fields: dict[str, Any], path: str, message: str) -> None:
    body: dict[str, Any] = {"Message": "abc", "Type": "Text", "Version": "V1"}
    for key, value in fields.items():
        if value is DELETE:
            del body[key]
        else:
            body[key] = value
    tree = edited(
        valid("Transcode"), Operation__JobParam={"TemplateId": "t", "DigitalWatermark": body}
    )
    assert errors_of(tree) == [(f"Request.Operation.JobParam.DigitalWatermark.{path}", message)]


# ----------------------------------------------------------------------------------- JobLevel


@pytest.mark.parametrize(("given", "level"), [("0", 0), ("1", 1), ("2", 2), (0, 0), (1, 1), (2, 2)])
def test_job_level(given: Any, level: int) -> None:
    request = ok(edited(valid(), Operation__JobLevel=given))
    assert request.job_level == level
    assert request.to_tree()["Operation"]["JobLevel"] == str(level)


def test_job_level_default() -> None:
    request = ok(valid())
    assert request.job_level == 0
    assert request.operation.job_level is None
    assert "JobLevel" not in request.to_tree()["Operation"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("3", "must be 0, 1 or 2, not '3'"),
        ("-1", "must be 0, 1 or 2, not '-1'"),
        ("01", "must be 0, 1 or 2, not '01'"),
        ("high", "must be 0, 1 or 2, not 'high'"),
        (3, "must be 0, 1 or 2, not 3"),
        (1.5, "must be 0, 1 or 2, not 1.5"),
        (1.0, "must be 0, 1 or 2, not 1.0"),
        (True, "must be 0, 1 or 2, not true"),
        (["1"], "expected a string, got a list"),
        ({"Level": "1"}, "expected a string, got a container"),
    ],
)
def test_job_level_invalid(given: Any, message: str) -> None:
    assert errors_of(edited(valid(), Operation__JobLevel=given)) == [
        ("Request.Operation.JobLevel", message)
    ]


# ---------------------------------------------------------------------------------- callbacks


@pytest.mark.parametrize("fmt", ["JSON", "XML"])
def test_callback_format(fmt: str) -> None:
    assert ok(edited(valid(), Operation__CallBackFormat=fmt)).operation.callback_format == fmt


@pytest.mark.parametrize("fmt", ["json", "Xml", "YAML"])
def test_callback_format_invalid(fmt: str) -> None:
    assert errors_of(edited(valid(), Operation__CallBackFormat=fmt)) == [
        ("Request.Operation.CallBackFormat", f"must be JSON or XML, not {fmt!r}")
    ]


def test_callback_type_url() -> None:
    request = ok(edited(valid(), Operation__CallBackType="Url", Operation__CallBack="https://h/cb"))
    assert (request.operation.callback_type, request.operation.callback) == ("Url", "https://h/cb")


@pytest.mark.parametrize("kind", ["url", "Pulsar", "tdmq"])
def test_callback_type_invalid(kind: str) -> None:
    assert errors_of(edited(valid(), Operation__CallBackType=kind)) == [
        ("Request.Operation.CallBackType", f"must be Url or TDMQ, not {kind!r}")
    ]


def test_callback_no_turns_callbacks_off_and_is_kept() -> None:
    assert ok(edited(valid(), Operation__CallBack="no")).operation.callback == "no"


MQ = {"MqRegion": "gz", "MqMode": "Queue", "MqName": "ci-events"}


@pytest.mark.parametrize("region", ["sh", "bj", "gz", "cd", "hk"])
@pytest.mark.parametrize("mode", ["Queue", "Topic"])
def test_tdmq_callback(region: str, mode: str) -> None:
    mq = {"MqRegion": region, "MqMode": mode, "MqName": "topic-1"}
    tree = edited(valid(), Operation__CallBackType="TDMQ", Operation__CallBackMqConfig=mq)
    config = ok(tree).operation.callback_mq_config
    assert config is not None
    assert (config.mq_region, config.mq_mode, config.mq_name) == (region, mode, "topic-1")


def test_tdmq_needs_mq_config() -> None:
    assert errors_of(edited(valid(), Operation__CallBackType="TDMQ")) == [
        ("Request.Operation.CallBackMqConfig", "is required when CallBackType is TDMQ")
    ]


def test_tdmq_with_mq_config_of_wrong_type_is_reported_once() -> None:
    tree = edited(valid(), Operation__CallBackType="TDMQ", Operation__CallBackMqConfig="gz")
    assert errors_of(tree) == [
        ("Request.Operation.CallBackMqConfig", "expected a container, got a string")
    ]


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"MqRegion": "sz"}, "MqRegion", "must be sh, bj, gz, cd or hk, not 'sz'"),
        (
            {"MqRegion": "ap-guangzhou"},
            "MqRegion",
            "must be sh, bj, gz, cd or hk, not 'ap-guangzhou'",
        ),
        ({"MqMode": "queue"}, "MqMode", "must be Queue or Topic, not 'queue'"),
        ({"MqName": ""}, "MqName", "must not be empty"),
        ({"MqName": None}, "MqName", "must not be empty"),
        ({"MqRegion": DELETE}, "MqRegion", "is required"),
        ({"MqMode": DELETE}, "MqMode", "is required"),
        ({"MqName": DELETE}, "MqName", "is required"),
        ({"MqTopic": "x"}, "MqTopic", "unknown field"),
    ],
)
def test_mq_config_invalid(change: dict[str, Any], path: str, message: str) -> None:
    mq: dict[str, Any] = dict(MQ)
    for key, value in change.items():
        if value is DELETE:
            del mq[key]
        else:
            mq[key] = value
    tree = edited(valid(), Operation__CallBackType="TDMQ", Operation__CallBackMqConfig=mq)
    assert errors_of(tree) == [(f"Request.Operation.CallBackMqConfig.{path}", message)]


def test_mq_config_is_checked_even_without_tdmq() -> None:
    tree = edited(valid(), Operation__CallBackMqConfig={**MQ, "MqRegion": "xx"})
    assert errors_of(tree) == [
        ("Request.Operation.CallBackMqConfig.MqRegion", "must be sh, bj, gz, cd or hk, not 'xx'")
    ]


# ------------------------------------------------------------------------------- TimeInterval


@pytest.mark.parametrize(
    "interval",
    [
        {"Start": "2022-02-01T12:00:00+0800", "End": "2022-05-01T12:00:00+0800"},
        {"Start": "2022-02-01T12:00:00+0800"},
        {"End": "2022-05-01T23:59:59-0130"},
        {"Start": "2022-02-01T12:00:00+0800", "End": "2022-02-01T04:00:00+0000"},
        {},
    ],
)
def test_time_interval_valid(interval: dict[str, str]) -> None:
    request = ok(edited(valid(), Operation__TimeInterval=interval))
    assert request.operation.time_interval is not None
    assert request.operation.time_interval.to_tree() == interval


@pytest.mark.parametrize(
    "when",
    [
        "2022-02-01 12:00:00+0800",
        "2022-02-01T12:00:00+08:00",
        "2022-02-01T12:00:00Z",
        "2022-02-01T12:00:00",
        "2022-13-01T12:00:00+0800",
        "2022-02-30T12:00:00+0800",
        "2022-02-01T24:00:00+0800",
        "2022-02-01T12:60:00+0800",
        "2022-02-01T12:00:60+0800",
        "2022-02-01T12:00:00+0860",
        "2022-02-01T12:00:00+2400",
        "２０２２-02-01T12:00:00+0800",
        "1643688000",
        "0",
    ],
)
@pytest.mark.parametrize("node", ["Start", "End"])
def test_time_interval_format(node: str, when: str) -> None:
    assert errors_of(edited(valid(), **{f"Operation__TimeInterval__{node}": when})) == [
        (
            f"Request.Operation.TimeInterval.{node}",
            f"must be a time as %Y-%m-%dT%H:%M:%S%z (e.g. 2022-02-01T12:00:00+0800), not {when!r}",
        )
    ]


def test_time_interval_end_before_start() -> None:
    interval = {"Start": "2022-05-01T12:00:00+0800", "End": "2022-05-01T03:59:59+0000"}
    assert errors_of(edited(valid(), Operation__TimeInterval=interval)) == [
        ("Request.Operation.TimeInterval.End", "is earlier than Start")
    ]


# ------------------------------------------------------------------------ unknown nodes, types


@pytest.mark.parametrize(
    ("dotted", "path"),
    [
        ("Extra", "Request.Extra"),
        ("Input__Bucket", "Request.Input.Bucket"),
        ("Operation__TemplateId", "Request.Operation.TemplateId"),
        ("Operation__TimeInterval__Begin", "Request.Operation.TimeInterval.Begin"),
        ("Operation__Output__Key", "Request.Operation.Output.Key"),
        ("Operation__JobParam__Transcoding", "Request.Operation.JobParam.Transcoding"),
        ("Operation__JobParam__SDR2HDR", "Request.Operation.JobParam.SDR2HDR"),
    ],
)
def test_unknown_nodes(dotted: str, path: str) -> None:
    assert errors_of(edited(valid(), **{dotted: "x"})) == [(path, "unknown field")]


def test_unknown_node_in_stream_extract_item() -> None:
    tree = edited(
        valid("StreamExtract"),
        Operation__Output__StreamExtract=[{"Index": "0", "Object": "v", "Codec": "h264"}],
    )
    assert errors_of(tree) == [("Request.Operation.Output.StreamExtract[0].Codec", "unknown field")]


def test_unknown_node_with_a_case_hint() -> None:
    tree = edited(valid(), Operation__QueueId=DELETE, Operation__queueId="q")
    assert errors_of(tree) == [
        ("Request.Operation.queueId", "unknown field; did you mean QueueId?"),
        ("Request.Operation.QueueId", "is required"),
    ]


def test_unprintable_unknown_key_is_shown_safely() -> None:
    tree = edited(valid(), **{"Operation__\x07bell" + "x" * 80: "v"})
    [(path, message)] = errors_of(tree)
    assert path == "Request.Operation.?bell" + "x" * 59 + "…"
    assert message == "unknown field"


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("Name", 5, "expected a string, got a number"),
        ("Name", ["a", "b"], "expected a string, got a list"),
        ("Name", {"First": "a"}, "expected a string, got a container"),
        ("Name", True, "expected a string, got a boolean"),
        ("Input", "input/", "expected a container, got a string"),
        ("Input", [{"Prefix": "a"}], "expected a container, got a list"),
        ("Operation__Tag", ["Transcode"], "expected a string, got a list"),
        ("Operation__QueueId", 12, "expected a string, got a number"),
        ("Operation__Output", "bucket", "expected a container, got a string"),
        ("Operation__Output__Object", 1, "expected a string, got a number"),
        ("Operation__TimeInterval", "2022", "expected a container, got a string"),
        ("Operation__UserData", {"a": "b"}, "expected a string, got a container"),
        ("Operation__CallBackMqConfig", ["gz"], "expected a container, got a list"),
    ],
)
def test_wrong_types(dotted: str, value: Any, message: str) -> None:
    path = "Request." + dotted.replace("__", ".")
    assert errors_of(edited(valid(), **{dotted: value})) == [(path, message)]


@pytest.mark.parametrize(
    ("tree", "kind"), [([], "a list"), ("Request", "a string"), (5, "a number")]
)
def test_request_itself_must_be_a_container(tree: Any, kind: str) -> None:
    assert errors_of(tree) == [("Request", f"expected a container, got {kind}")]


def test_wrapped_request_tree() -> None:
    assert request_from_tree({"Request": valid()}) == request_from_tree(valid())


@pytest.mark.parametrize(
    ("value", "code"),
    [("a\x01b", "U+0001"), ("a\x1fb", "U+001F"), ("\ud800", "U+D800"), ("\uffff", "U+FFFF")],
)
def test_text_xml_cannot_carry(value: str, code: str) -> None:
    assert errors_of(edited(valid(), Operation__UserData=value)) == [
        ("Request.Operation.UserData", f"contains {code}, which XML cannot carry")
    ]


def test_optional_empty_and_null_strings_are_absent() -> None:
    tree = edited(valid(), Operation__UserData="", Operation__CallBack=None)
    operation = ok(tree).to_tree()["Operation"]
    assert "UserData" not in operation
    assert "CallBack" not in operation


# ------------------------------------------------------------------------------- XML specifics

XML_BASE = (
    "<Request><Name>demo</Name><Type>Job</Type><Input><Prefix>in</Prefix></Input>"
    "<Operation><Tag>Transcode</Tag><QueueId>q1</QueueId>"
    "<JobParam><TemplateId>t1</TemplateId>{param}</JobParam>"
    "<Output><Region>ap-chongqing</Region><Bucket>b-1</Bucket><Object>o.mp4</Object>{output}"
    "</Output>{operation}</Operation>{request}</Request>"
)


def xml(param: str = "", output: str = "", operation: str = "", request: str = "") -> bytes:
    filled = XML_BASE.format(param=param, output=output, operation=operation, request=request)
    return filled.encode()


def test_xml_base_is_valid() -> None:
    assert parse_request(xml()).name == "demo"


@pytest.mark.parametrize(
    ("parts", "path"),
    [
        ({"request": "<Name>other</Name>"}, "Request.Name"),
        ({"request": "<Input><Prefix>x</Prefix></Input>"}, "Request.Input"),
        ({"operation": "<Tag>Snapshot</Tag>"}, "Request.Operation.Tag"),
        ({"operation": "<QueueId>q2</QueueId>"}, "Request.Operation.QueueId"),
        (
            {"operation": "<JobLevel>1</JobLevel><JobLevel>2</JobLevel>"},
            "Request.Operation.JobLevel",
        ),
        (
            {"operation": "<JobParam><TemplateId>x</TemplateId></JobParam>"},
            "Request.Operation.JobParam",
        ),
        ({"output": "<Object>p.mp4</Object>"}, "Request.Operation.Output.Object"),
        ({"param": "<TemplateId>t2</TemplateId>"}, "Request.Operation.JobParam.TemplateId"),
        ({"param": "<Snapshot/><Snapshot/>"}, "Request.Operation.JobParam.Snapshot"),
    ],
)
def test_xml_repeated_element_where_one_is_expected(parts: dict[str, str], path: str) -> None:
    assert errors_of(None, xml=xml(**parts)) == [
        (path, "is repeated (2 elements); expected a single element")
    ]


def test_xml_repeated_elements_where_many_are_allowed() -> None:
    param = (
        "<Watermark><Type>Text</Type></Watermark><Watermark><Type>Image</Type></Watermark>"
        "<WatermarkTemplateId>w1</WatermarkTemplateId><WatermarkTemplateId>w2</WatermarkTemplateId>"
    )
    job_param = parse_request(xml(param=param)).operation.job_param
    assert job_param.containers["Watermark"] == [{"Type": "Text"}, {"Type": "Image"}]
    assert job_param.watermark_template_ids == ("w1", "w2")


def test_xml_attributes_are_refused() -> None:
    body = xml().replace(b"<Operation>", b'<Operation priority="1">')
    assert errors_of(None, xml=body) == [
        ("Request.Operation.@priority", "XML attributes are not accepted")
    ]


def test_xml_attribute_on_a_string_node() -> None:
    body = xml().replace(b"<Name>demo</Name>", b'<Name lang="en">demo</Name>')
    assert errors_of(None, xml=body) == [("Request.Name", "expected a string, got a container")]


def test_xml_text_beside_elements() -> None:
    body = xml().replace(b"<Input>", b"<Input>stray")
    assert errors_of(None, xml=body) == [
        ("Request.Input.#text", "text beside child elements is not accepted")
    ]


def test_xml_container_given_as_text() -> None:
    body = xml().replace(b"<Input><Prefix>in</Prefix></Input>", b"<Input>in</Input>")
    assert errors_of(None, xml=body) == [("Request.Input", "expected a container, got a string")]


def test_xml_empty_elements() -> None:
    body = xml(operation="<UserData/><CallBack></CallBack>")
    request = parse_request(body)
    assert (request.operation.user_data, request.operation.callback) == (None, None)
    assert errors_of(None, xml=xml().replace(b"<Type>Job</Type>", b"<Type/>")) == [
        ("Request.Type", "must not be empty")
    ]


# ------------------------------------------------------------------------- all errors at once


def test_all_errors_of_a_document_are_reported_together() -> None:
    tree = {
        "Name": "bad name",
        "Type": "job",
        "Input": {"Bucket": "b"},
        "Operation": {
            "Tag": "Snapshot",
            "JobParam": {"Snapshot": {"Count": "4"}},
            "Output": {"Region": "ap-chongqing", "Object": "s.jpg", "SpriteObject": "s.png"},
            "JobLevel": 7,
            "CallBackFormat": "json",
            "CallBackType": "TDMQ",
            "TimeInterval": {"Start": "2022-02-01T12:00:00+0800", "End": "yesterday"},
        },
    }
    assert errors_of(tree) == [
        (
            "Request.Name",
            "may contain only letters, digits, hyphens and underscores, not 'bad name'",
        ),
        ("Request.Type", "must be Job, not 'job'"),
        ("Request.Input.Bucket", "unknown field"),
        ("Request.Operation.Output.SpriteObject", "must name a .jpg file (only jpg is supported)"),
        ("Request.Operation.Output.Bucket", "is required"),
        ("Request.Operation.JobLevel", "must be 0, 1 or 2, not 7"),
        ("Request.Operation.CallBackFormat", "must be JSON or XML, not 'json'"),
        (
            "Request.Operation.TimeInterval.End",
            "must be a time as %Y-%m-%dT%H:%M:%S%z (e.g. 2022-02-01T12:00:00+0800), "
            "not 'yesterday'",
        ),
        ("Request.Operation.QueueId", "is required"),
        ("Request.Input", "needs one of Manifest, UrlFile, Prefix or Object"),
        ("Request.Operation.CallBackMqConfig", "is required when CallBackType is TDMQ"),
        (
            "Request.Operation.Output.Object",
            "must contain ${Number} because JobParam.Snapshot.Count is 4",
        ),
    ]


def test_error_objects() -> None:
    with pytest.raises(RequestInvalid) as caught:
        request_from_tree(edited(valid(), Name=DELETE, Type="x"))
    error = caught.value
    assert error.errors == (
        FieldError("Request.Type", "must be Job, not 'x'"),
        FieldError("Request.Name", "is required"),
    )
    assert [e.as_dict() for e in error.errors] == [
        {"path": "Request.Type", "message": "must be Job, not 'x'"},
        {"path": "Request.Name", "message": "is required"},
    ]
    assert str(error) == "Request.Type: must be Job, not 'x'; Request.Name: is required"
