"""Validate an ``inventorytriggerjob`` Request tree against every rule of the seed document.

The walk is driven by two tables: ``_SPECS`` (each container's children and their kinds) and
``_RULES`` (rules on single values); ``_cross_check`` holds the rules that tie nodes together.
Trees are CI's own: xmltodict output (strings, mappings, lists for repeated elements, None for
empty elements) or its JSON equivalent (strings; only JobLevel may be a number). Every error is
collected with its full node path, so one RequestInvalid reports the whole document.

Normalisation, so that JSON and XML give equal models and every model renders to XML that parses
back to itself:

- text is stripped and its line ends made LF, as an XML parser delivers it; characters XML 1.0
  cannot carry are errors;
- an empty optional string is the same as an absent one (an empty required one is an error);
- inside the opaque per-tag containers, numbers and booleans become strings (``"true"`` /
  ``"false"``), empty values become ``""``, and one-item lists become the item.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum, auto
from typing import Any, Final

from service.request.model import (
    JOB_PARAM_NODES,
    OPAQUE_CONTAINERS,
    TAG_ALIASES,
    TAG_CONTAINERS,
    TAGS,
    TAGS_WITHOUT_OUTPUT,
    BatchRequest,
    CallBackMqConfig,
    DigitalWatermark,
    FieldError,
    JobParam,
    Operation,
    Output,
    RequestInput,
    RequestInvalid,
    StreamExtract,
    TimeInterval,
)


class _Kind(Enum):
    TEXT = auto()  # one string
    LEVEL = auto()  # JobLevel: a string, or a JSON integer
    NODE = auto()  # one container, described by its own spec
    NODES = auto()  # one or more containers (repeated elements), each described by a spec
    TEXTS = auto()  # one or more strings (repeated elements)
    OPAQUE = auto()  # one container whose inside other CI documents define
    OPAQUES = auto()  # one or more such containers


@dataclass(frozen=True)
class _Spec:
    children: Mapping[str, _Kind]
    required: tuple[str, ...] = ()  # in the order they are reported when missing


_T, _N = _Kind.TEXT, _Kind.NODE

_JOB_PARAM_KINDS: Final[dict[str, _Kind]] = {
    # The seed types Transcode as String, yet gives it sub-nodes ("same as
    # Request.Operation.Transcode"): it is a container like the other per-tag ones.
    **{name: _Kind.OPAQUE for name in OPAQUE_CONTAINERS},
    # Watermark repeats in CI's transcoding API (several watermarks per job).
    "Watermark": _Kind.OPAQUES,
    "TemplateId": _T,
    # The seed types TranscodeTemplateId and WatermarkTemplateId as Container, but describes them
    # as template IDs and gives them no sub-nodes; CI's transcoding API and the official Go SDK
    # (InventoryTriggerJobOperationJobParam) carry a string and a repeatable string.
    "TranscodeTemplateId": _T,
    "WatermarkTemplateId": _Kind.TEXTS,
    "DigitalWatermark": _N,
}

_SPECS: Final[Mapping[str, _Spec]] = {
    "Request": _Spec(
        {"Name": _T, "Type": _T, "Input": _N, "Operation": _N},
        ("Name", "Type", "Input", "Operation"),
    ),
    "Request.Input": _Spec({"Manifest": _T, "UrlFile": _T, "Prefix": _T, "Object": _T}),
    "Request.Operation": _Spec(
        {
            "TimeInterval": _N,
            "Tag": _T,
            "Output": _N,
            "JobParam": _N,
            "QueueId": _T,
            "UserData": _T,
            "JobLevel": _Kind.LEVEL,
            "CallBackFormat": _T,
            "CallBackType": _T,
            "CallBack": _T,
            "CallBackMqConfig": _N,
        },
        ("Tag", "JobParam", "QueueId"),
    ),
    "Request.Operation.TimeInterval": _Spec({"Start": _T, "End": _T}),
    "Request.Operation.Output": _Spec(
        {
            "Region": _T,
            "Bucket": _T,
            "Object": _T,
            "AuObject": _T,
            "SpriteObject": _T,
            "StreamExtract": _Kind.NODES,
        },
        ("Region", "Bucket"),
    ),
    "Request.Operation.Output.StreamExtract": _Spec(
        {"Index": _T, "Object": _T}, ("Index", "Object")
    ),
    "Request.Operation.JobParam": _Spec({name: _JOB_PARAM_KINDS[name] for name in JOB_PARAM_NODES}),
    "Request.Operation.JobParam.DigitalWatermark": _Spec(
        {"Message": _T, "Type": _T, "Version": _T, "IgnoreError": _T},
        ("Message", "Type", "Version"),
    ),
    # MqMode is "Required: Yes" in the seed although it also names a default (Queue); required
    # wins, since CI may reject a config without it.
    "Request.Operation.CallBackMqConfig": _Spec(
        {"MqRegion": _T, "MqMode": _T, "MqName": _T},
        ("MqRegion", "MqMode", "MqName"),
    ),
}

_Rule = Callable[[str], str | None]

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_WATERMARK_MESSAGE = re.compile(r"[A-Za-z0-9_*-]+")
_DIGITS = re.compile(r"[0-9]+")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# The seed writes %Y-%m-%dT%H:%m:%S%z: %m for minutes is a typo for %M. Its samples (and CI's
# answers) use a colon-less offset, so exactly that shape is accepted.
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})([+-])([0-9]{2})([0-9]{2})"
)
_ELEMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_MAX_OPAQUE_DEPTH = 64


def _quote(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "…")


def _choices(options: tuple[str, ...]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def _one_of(*allowed: str) -> _Rule:
    def rule(value: str) -> str | None:
        return None if value in allowed else f"must be {_choices(allowed)}, not {_quote(value)}"

    return rule


def _name(value: str) -> str | None:
    if len(value) > 128:
        return f"is {len(value)} characters long; at most 128 are allowed"
    if not _NAME.fullmatch(value):
        return f"may contain only letters, digits, hyphens and underscores, not {_quote(value)}"
    return None


def _tag(value: str) -> str | None:
    if value in TAGS or value in TAG_ALIASES:
        return None
    near = [t for t in (*TAGS, *TAG_ALIASES) if t.casefold() == value.casefold()]
    hint = f"; did you mean {near[0]}?" if near else f"; expected one of {', '.join(TAGS)}"
    return f"{_quote(value)} is not a CI job tag{hint}"


def _parse_time(value: str) -> datetime | None:
    # A hand parse of exactly _TIME_FORMAT: datetime.strptime costs ten times as much.
    match = _TIME.fullmatch(value)
    if not match:
        return None
    year, month, day, hour, minute, second, sign, off_h, off_m = match.groups()
    if int(off_m) > 59:
        return None
    offset = timedelta(hours=int(off_h), minutes=int(off_m))
    try:
        return datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=timezone(-offset if sign == "-" else offset),
        )
    except ValueError:  # right shape, impossible values (month 13, 25:00, offset +2400, ...)
        return None


def _time(value: str) -> str | None:
    if _parse_time(value) is None:
        return (
            f"must be a time as {_TIME_FORMAT} (e.g. 2022-02-01T12:00:00+0800), not {_quote(value)}"
        )
    return None


def _jpg(value: str) -> str | None:
    return (
        None if value.lower().endswith(".jpg") else "must name a .jpg file (only jpg is supported)"
    )


def _stream_index(value: str) -> str | None:
    return None if _DIGITS.fullmatch(value) else f"must be a stream number, not {_quote(value)}"


def _watermark_message(value: str) -> str | None:
    if len(value) > 64:
        return f"is {len(value)} characters long; at most 64 are allowed"
    if not _WATERMARK_MESSAGE.fullmatch(value):
        return f"may contain only letters, digits, _, - and *, not {_quote(value)}"
    return None


_RULES: Final[Mapping[str, _Rule]] = {
    "Request.Name": _name,
    "Request.Type": _one_of("Job"),
    "Request.Operation.Tag": _tag,
    "Request.Operation.CallBackFormat": _one_of("JSON", "XML"),
    "Request.Operation.CallBackType": _one_of("Url", "TDMQ"),
    "Request.Operation.TimeInterval.Start": _time,
    "Request.Operation.TimeInterval.End": _time,
    "Request.Operation.Output.SpriteObject": _jpg,
    "Request.Operation.Output.StreamExtract.Index": _stream_index,
    "Request.Operation.JobParam.DigitalWatermark.Message": _watermark_message,
    "Request.Operation.JobParam.DigitalWatermark.Type": _one_of("Text"),
    "Request.Operation.JobParam.DigitalWatermark.Version": _one_of("V1"),
    "Request.Operation.JobParam.DigitalWatermark.IgnoreError": _one_of("true", "false"),
    "Request.Operation.CallBackMqConfig.MqRegion": _one_of("sh", "bj", "gz", "cd", "hk"),
    "Request.Operation.CallBackMqConfig.MqMode": _one_of("Queue", "Topic"),
}


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a container"
    return f"a {type(value).__name__}"


def _shown(key: Any) -> str:
    """A key as it may appear in a path: bounded, and printable whatever the input held."""
    text = str(key)
    text = "".join(c if c.isprintable() else "?" for c in text[:64])
    return text + ("…" if len(str(key)) > 64 else "")


class _Walk:
    """One validation pass: the errors found so far and the paths they were found at."""

    def __init__(self, *, from_xml: bool) -> None:
        self.from_xml = from_xml
        self.errors: list[FieldError] = []
        self.failed: set[str] = set()

    def fail(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))
        self.failed.add(path)

    def failed_at(self, path: str) -> bool:
        """Whether the node at ``path``, or anything inside it, already has an error."""
        inside = (f"{path}.", f"{path}[")
        return any(p == path or p.startswith(inside) for p in self.failed)

    def wrong_type(self, path: str, expected: str, value: Any) -> None:
        if isinstance(value, list) and self.from_xml:
            self.fail(path, f"is repeated ({len(value)} elements); expected a single element")
        else:
            self.fail(path, f"expected {expected}, got {_describe(value)}")

    def container(self, spec_path: str, path: str, value: Any) -> dict[str, Any] | None:
        """The container's children, checked and normalised; None if it is not a container."""
        if value is None:  # an empty element
            value = {}
        if not isinstance(value, Mapping):
            self.wrong_type(path, "a container", value)
            return None
        spec = _SPECS[spec_path]
        clean: dict[str, Any] = {}
        for key, child in value.items():
            kind = spec.children.get(key) if isinstance(key, str) else None
            if kind is None:
                self.fail(f"{path}.{_shown(key)}", _unknown(key, spec))
                continue
            result = self.child(kind, f"{spec_path}.{key}", f"{path}.{key}", child)
            if result == "" and key in spec.required:
                self.fail(f"{path}.{key}", "must not be empty")
            elif result is not None and result != "":
                clean[key] = result
        for key in spec.required:
            if key not in value:
                self.fail(f"{path}.{key}", "is required")
        return clean

    def child(self, kind: _Kind, spec_path: str, path: str, value: Any) -> Any:
        """A checked child value; "" for empty text, None when left out (absent or invalid)."""
        if kind is _Kind.TEXT:
            return self.text(spec_path, path, value)
        if kind is _Kind.LEVEL:
            return self.level(path, value)
        if kind is _Kind.NODE:
            if isinstance(value, list):
                self.wrong_type(path, "a container", value)
                return None
            return self.container(spec_path, path, value)
        if kind is _Kind.OPAQUE:
            if value is None:
                return {}
            if not isinstance(value, Mapping):
                self.wrong_type(path, "a container", value)
                return None
            return self.opaque(path, value, 0)
        items = value if isinstance(value, list) else [value]
        paths = [f"{path}[{i}]" for i in range(len(items))] if isinstance(value, list) else [path]
        if kind is _Kind.NODES:
            nodes = [
                self.container(spec_path, p, item) for p, item in zip(paths, items, strict=True)
            ]
            return [node for node in nodes if node is not None] or None
        if kind is _Kind.TEXTS:
            texts = [self.text(spec_path, p, item) for p, item in zip(paths, items, strict=True)]
            for p, text in zip(paths, texts, strict=True):
                if text == "" and len(items) > 1:
                    self.fail(p, "must not be empty")
            return [text for text in texts if text] or None
        # _Kind.OPAQUES
        trees = []
        for p, item in zip(paths, items, strict=True):
            if item is not None and not isinstance(item, Mapping):
                self.wrong_type(p, "a container", item)
            else:
                trees.append(self.opaque(p, item or {}, 0))
        return trees[0] if len(trees) == 1 else (trees or None)

    def text(self, spec_path: str, path: str, value: Any) -> str | None:
        if value is None:
            return ""
        if not isinstance(value, str):
            self.wrong_type(path, "a string", value)
            return None
        text = self.clean_text(path, value)
        if text:
            rule = _RULES.get(spec_path)
            problem = rule(text) if rule else None
            if problem:
                self.fail(path, problem)
                return None
        return text

    def clean_text(self, path: str, value: str) -> str | None:
        bad = _NOT_XML.search(value)
        if bad:
            self.fail(path, f"contains U+{ord(bad.group()):04X}, which XML cannot carry")
            return None
        return value.replace("\r\n", "\n").replace("\r", "\n").strip()

    def level(self, path: str, value: Any) -> int | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str) and value.strip() in ("0", "1", "2"):
            return int(value)
        if type(value) is int and 0 <= value <= 2:
            return value
        if isinstance(value, list | Mapping):
            self.wrong_type(path, "a string", value)
        else:
            shown = _quote(value) if isinstance(value, str) else json.dumps(value, default=repr)
            self.fail(path, f"must be 0, 1 or 2, not {shown}")
        return None

    def opaque(self, path: str, value: Any, depth: int) -> Any:
        """A tree other documents define, in the shape XML gives it (see the module docstring)."""
        if depth > _MAX_OPAQUE_DEPTH:
            self.fail(path, f"nests deeper than {_MAX_OPAQUE_DEPTH} levels")
            return None
        if value is None:
            return ""
        if isinstance(value, str):
            return self.clean_text(path, value)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            if math.isfinite(value):
                return repr(value)
            self.fail(path, f"must be a finite number, not {value!r}")
            return None
        if isinstance(value, Mapping):
            tree: dict[str, Any] = {}
            for key, child in value.items():
                problem = _element_name_problem(key)
                if problem:
                    self.fail(f"{path}.{_shown(key)}", problem)
                    continue
                result = self.opaque(f"{path}.{key}", child, depth + 1)
                if result is not None:
                    tree[key] = result
            # Below the container itself an empty mapping is an empty element, which XML
            # gives back as "".
            return tree if tree or depth == 0 else ""
        if isinstance(value, list):
            if not value:
                self.fail(path, "must not be an empty list")
                return None
            items = []
            for i, item in enumerate(value):
                if isinstance(item, list):
                    self.fail(f"{path}[{i}]", "a list cannot directly hold a list in XML")
                    continue
                items.append(self.opaque(f"{path}[{i}]", item, depth + 1))
            return items[0] if len(items) == 1 else items
        self.fail(path, f"expected a JSON value, got {_describe(value)}")
        return None


def _xml_artifact(key: str) -> str | None:
    """What xmltodict's ``@attr`` and ``#text`` keys stand for; CI documents use neither."""
    if key.startswith("@"):
        return "XML attributes are not accepted"
    if key == "#text":
        return "text beside child elements is not accepted"
    return None


def _unknown(key: Any, spec: _Spec) -> str:
    if not isinstance(key, str):
        return "unknown field"
    near = [name for name in spec.children if name.casefold() == key.casefold()]
    hint = f"; did you mean {near[0]}?" if near else ""
    return _xml_artifact(key) or "unknown field" + hint


def _element_name_problem(key: Any) -> str | None:
    if not isinstance(key, str):
        return "element names must be strings"
    if _ELEMENT_NAME.fullmatch(key):
        return None
    return _xml_artifact(key) or "is not a valid XML element name"


def _cross_check(request: Mapping[str, Any], walk: _Walk) -> None:
    """The seed's rules that involve more than one node."""
    sources = ("Manifest", "UrlFile", "Prefix", "Object")
    source = request.get("Input")
    # The seed marks all four optional, but a batch job with none of them selects no media.
    if (
        source is not None
        and not any(name in source for name in sources)
        and not any(walk.failed_at(f"Request.Input.{name}") for name in sources)
    ):
        walk.fail("Request.Input", "needs one of Manifest, UrlFile, Prefix or Object")
    operation = request.get("Operation")
    if operation is None:
        return
    if (
        operation.get("CallBackType") == "TDMQ"
        and "CallBackMqConfig" not in operation
        and not walk.failed_at("Request.Operation.CallBackMqConfig")
    ):
        walk.fail("Request.Operation.CallBackMqConfig", "is required when CallBackType is TDMQ")
    interval = operation.get("TimeInterval") or {}
    if "Start" in interval and "End" in interval:
        start, end = _parse_time(interval["Start"]), _parse_time(interval["End"])
        if start is not None and end is not None and end < start:
            walk.fail("Request.Operation.TimeInterval.End", "is earlier than Start")
    if "Tag" in operation:
        tag = TAG_ALIASES.get(operation["Tag"], operation["Tag"])
        _check_output(tag, operation, walk)
        _check_job_param(tag, operation.get("JobParam"), walk)


def _check_output(tag: str, operation: Mapping[str, Any], walk: _Walk) -> None:
    base = "Request.Operation.Output"
    output = operation.get("Output")
    if output is None:
        if tag not in TAGS_WITHOUT_OUTPUT and not walk.failed_at(base):
            walk.fail(base, f"is required for Tag {tag}")
        return

    def missing(name: str) -> bool:
        return name not in output and not walk.failed_at(f"{base}.{name}")

    partner = {"VoiceSeparate": "AuObject", "Snapshot": "SpriteObject"}.get(tag)
    if tag == "StreamExtract":
        if missing("StreamExtract"):
            walk.fail(f"{base}.StreamExtract", "is required for Tag StreamExtract")
    elif partner is not None:
        if missing("Object") and missing(partner):
            walk.fail(f"{base}.Object", f"is required for Tag {tag} unless {partner} is given")
    elif missing("Object"):
        walk.fail(f"{base}.Object", f"is required for Tag {tag}")

    numbered = {"SmartCover": ("Object",), "Snapshot": ("Object", "SpriteObject")}.get(tag, ())
    count = _count((operation.get("JobParam") or {}).get(tag))
    if count is not None and float(count) > 1:
        for name in numbered:
            if name in output and "${Number}" not in output[name]:
                walk.fail(
                    f"{base}.{name}",
                    f"must contain ${{Number}} because JobParam.{tag}.Count is {count}",
                )


def _count(container: Any) -> str | None:
    """Count from a SmartCover or Snapshot container, if it is given as a plain number."""
    if not isinstance(container, Mapping):
        return None
    count = container.get("Count")
    return count if isinstance(count, str) and _NUMBER.fullmatch(count) else None


def _check_job_param(tag: str, job_param: Mapping[str, Any] | None, walk: _Walk) -> None:
    alternative = TAG_CONTAINERS.get(tag)
    if job_param is None or alternative is None:
        return
    base = "Request.Operation.JobParam"
    given = {name for name in ("TemplateId", alternative) if name in job_param}
    tried = {name for name in ("TemplateId", alternative) if walk.failed_at(f"{base}.{name}")}
    if not given and not tried:
        walk.fail(base, f"needs TemplateId or {alternative} for Tag {tag}")


def _build(request: Mapping[str, Any]) -> BatchRequest:
    source, operation = request["Input"], request["Operation"]
    interval = operation.get("TimeInterval")
    output = operation.get("Output")
    mq = operation.get("CallBackMqConfig")
    return BatchRequest(
        name=request["Name"],
        type=request["Type"],
        input=RequestInput(
            manifest=source.get("Manifest"),
            url_file=source.get("UrlFile"),
            prefix=source.get("Prefix"),
            object=source.get("Object"),
        ),
        operation=Operation(
            tag=TAG_ALIASES.get(operation["Tag"], operation["Tag"]),
            job_param=_build_job_param(operation["JobParam"]),
            queue_id=operation["QueueId"],
            time_interval=(
                None
                if interval is None
                else TimeInterval(interval.get("Start"), interval.get("End"))
            ),
            output=None if output is None else _build_output(output),
            user_data=operation.get("UserData"),
            job_level=operation.get("JobLevel"),
            callback=operation.get("CallBack"),
            callback_format=operation.get("CallBackFormat"),
            callback_type=operation.get("CallBackType"),
            callback_mq_config=(
                None if mq is None else CallBackMqConfig(mq["MqRegion"], mq["MqMode"], mq["MqName"])
            ),
        ),
    )


def _build_output(output: Mapping[str, Any]) -> Output:
    return Output(
        region=output["Region"],
        bucket=output["Bucket"],
        object=output.get("Object"),
        au_object=output.get("AuObject"),
        sprite_object=output.get("SpriteObject"),
        stream_extract=tuple(
            StreamExtract(item["Index"], item["Object"]) for item in output.get("StreamExtract", ())
        ),
    )


def _build_job_param(job_param: Mapping[str, Any]) -> JobParam:
    watermark = job_param.get("DigitalWatermark")
    return JobParam(
        template_id=job_param.get("TemplateId"),
        containers={name: job_param[name] for name in OPAQUE_CONTAINERS if name in job_param},
        digital_watermark=(
            None
            if watermark is None
            else DigitalWatermark(
                message=watermark["Message"],
                type=watermark["Type"],
                version=watermark["Version"],
                ignore_error=(
                    None if "IgnoreError" not in watermark else watermark["IgnoreError"] == "true"
                ),
            )
        ),
        transcode_template_id=job_param.get("TranscodeTemplateId"),
        watermark_template_ids=tuple(job_param.get("WatermarkTemplateId", ())),
    )


def request_from_tree(tree: Any, *, from_xml: bool = False) -> BatchRequest:
    """Validate a Request tree (the inner Request, or ``{"Request": {...}}``) into the model.

    Raises RequestInvalid carrying every error of the document. ``from_xml`` only words the
    errors for XML (a list there is a repeated element).
    """
    if isinstance(tree, Mapping) and len(tree) == 1 and "Request" in tree:
        tree = tree["Request"]
    walk = _Walk(from_xml=from_xml)
    request = walk.container("Request", "Request", tree)
    if request is not None:
        _cross_check(request, walk)
    if walk.errors or request is None:
        raise RequestInvalid(walk.errors)
    return _build(request)
