"""The typed model of a CI ``inventorytriggerjob`` Request, rendered back to CI's own trees.

Instances are made by ``request_from_tree`` / ``parse_request``, which apply every rule of the seed
document; the dataclasses themselves do not re-check what they are given. Node names, element
order and the tags below follow CI's API document, ``inventorytriggerjob.txt``.

Accepted ``Request.Operation.Tag`` spellings. The seed's tag table has typos; the documented
spellings are accepted and the canonical one (first column) is stored and sent to CI. "JobParam
alternative" is the container that may stand in for ``TemplateId``; where the seed names none
("-"), JobParam may be empty.

======================= ============ ======================= ======== =====================
canonical tag           also accepts JobParam alternative    Output   Output.Object
======================= ============ ======================= ======== =====================
Animation               Animatin     Animation               required required
SmartCover                           SmartCover              required required [1]
Transcode                            Transcode               required required
Snapshot                             Snapshot                required or SpriteObject [2]
SpeechRecognition                    SpeechRecognition       required required
Concat                               ConcatTemplate          required required
VoiceSeparate           VoiceSpearte VoiceSeparate           required or AuObject
VideoMontage                         VideoMontage            required required
SDRtoHDR                SDR2HDR      SDRtoHDR                required required
VideoProcess                         VideoProcess            required required
SuperResolution                      SuperResolution         required required
Segment                              Segment                 required required
VideoTag                             VideoTag                optional required [3]
PicProcess                           -                       required required
DigitalWatermark                     DigitalWatermark        required required
ExtractDigitalWatermark              ExtractDigitalWatermark optional required [3]
MediaInfo                            -                       optional required [3]
StreamExtract                        -                       required optional [4]
Tts                                  TtsTpl                  required required
NoiseReduction                       -                       required required
QualityEstimate                      -                       optional required [3]
======================= ============ ======================= ======== =====================

[1] must contain ``${Number}`` when ``JobParam.SmartCover.Count`` > 1.
[2] Object and SpriteObject cannot both be empty; each one given must contain ``${Number}`` when
    ``JobParam.Snapshot.Count`` > 1 (Count is only known when the Snapshot container is given).
[3] only when an Output is given at all (the seed's Object rule makes no exception for these).
[4] ``Output.StreamExtract`` (one or more, each with Index and Object) is required instead.

The seed's AuObject description says "VideoSeParete": read as VoiceSeparate, not a tag spelling.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol

from service.xmlsafe import unparse_xml

TAGS: Final[tuple[str, ...]] = (
    "Animation",
    "SmartCover",
    "Transcode",
    "Snapshot",
    "SpeechRecognition",
    "Concat",
    "VoiceSeparate",
    "VideoMontage",
    "SDRtoHDR",
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

TAG_ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {"Animatin": "Animation", "VoiceSpearte": "VoiceSeparate", "SDR2HDR": "SDRtoHDR"}
)

TAGS_WITHOUT_OUTPUT: Final[frozenset[str]] = frozenset(
    {"VideoTag", "ExtractDigitalWatermark", "MediaInfo", "QualityEstimate"}
)

# The JobParam node that can stand in for TemplateId, per tag ("TemplateId is used first. If
# TemplateId is unavailable, the corresponding job type parameter is used."). Tags the seed gives
# no container for are absent.
TAG_CONTAINERS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "Animation": "Animation",
        "SmartCover": "SmartCover",
        "Transcode": "Transcode",
        "Snapshot": "Snapshot",
        "SpeechRecognition": "SpeechRecognition",
        "Concat": "ConcatTemplate",
        "VoiceSeparate": "VoiceSeparate",
        "VideoMontage": "VideoMontage",
        "SDRtoHDR": "SDRtoHDR",
        "VideoProcess": "VideoProcess",
        "SuperResolution": "SuperResolution",
        "Segment": "Segment",
        "VideoTag": "VideoTag",
        "DigitalWatermark": "DigitalWatermark",
        "ExtractDigitalWatermark": "ExtractDigitalWatermark",
        "Tts": "TtsTpl",
    }
)

# JobParam children in the seed's table order, which is also the rendering order.
JOB_PARAM_NODES: Final[tuple[str, ...]] = (
    "TemplateId",
    "TranscodeTemplateId",
    "Animation",
    "Transcode",
    "SmartCover",
    "DigitalWatermark",
    "Watermark",
    "RemoveWatermark",
    "WatermarkTemplateId",
    "Snapshot",
    "SpeechRecognition",
    "ConcatTemplate",
    "VoiceSeparate",
    "VideoMontage",
    "SDRtoHDR",
    "VideoProcess",
    "SuperResolution",
    "Segment",
    "ExtractDigitalWatermark",
    "VideoTag",
    "TtsTpl",
)

# JobParam's per-tag containers whose inner fields other CI documents define: kept as opaque
# trees. Everything in JobParam but the template ids and DigitalWatermark (which the seed defines).
# Watermark may repeat (the transcoding API allows several watermarks).
OPAQUE_CONTAINERS: Final[tuple[str, ...]] = tuple(
    name
    for name in JOB_PARAM_NODES
    if name not in ("TemplateId", "TranscodeTemplateId", "DigitalWatermark", "WatermarkTemplateId")
)


@dataclass(frozen=True)
class FieldError:
    """One violated rule: the node's full path from ``Request`` and what is wrong with it."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class RequestInvalid(Exception):
    """The document is well-formed but breaks rules; ``errors`` holds every one of them."""

    errors: tuple[FieldError, ...]

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(f"{e.path}: {e.message}" for e in self.errors))


def _tree(*pairs: tuple[str, Any]) -> dict[str, Any]:
    """A CI node from (name, value) pairs in order, leaving out absent (None) values."""
    return {name: value for name, value in pairs if value is not None}


class _Node(Protocol):
    def to_tree(self) -> dict[str, Any]: ...


def _node(node: _Node | None) -> dict[str, Any] | None:
    return None if node is None else node.to_tree()


@dataclass(frozen=True)
class RequestInput:
    manifest: str | None = None
    url_file: str | None = None
    prefix: str | None = None
    object: str | None = None

    def to_tree(self) -> dict[str, Any]:
        return _tree(
            ("Manifest", self.manifest),
            ("UrlFile", self.url_file),
            ("Prefix", self.prefix),
            ("Object", self.object),
        )


@dataclass(frozen=True)
class TimeInterval:
    """Bounds as CI writes them (``%Y-%m-%dT%H:%M:%S%z``, e.g. 2022-02-01T12:00:00+0800)."""

    start: str | None = None
    end: str | None = None

    def to_tree(self) -> dict[str, Any]:
        return _tree(("Start", self.start), ("End", self.end))


@dataclass(frozen=True)
class StreamExtract:
    index: str
    object: str

    def to_tree(self) -> dict[str, Any]:
        return {"Index": self.index, "Object": self.object}


@dataclass(frozen=True)
class Output:
    region: str
    bucket: str
    object: str | None = None
    au_object: str | None = None
    sprite_object: str | None = None
    stream_extract: tuple[StreamExtract, ...] = ()

    def to_tree(self) -> dict[str, Any]:
        streams = [s.to_tree() for s in self.stream_extract] or None
        return _tree(
            ("Region", self.region),
            ("Bucket", self.bucket),
            ("Object", self.object),
            ("AuObject", self.au_object),
            ("SpriteObject", self.sprite_object),
            ("StreamExtract", streams),
        )


@dataclass(frozen=True)
class DigitalWatermark:
    message: str
    type: str = "Text"
    version: str = "V1"
    ignore_error: bool | None = None

    def to_tree(self) -> dict[str, Any]:
        ignore = None if self.ignore_error is None else ("true" if self.ignore_error else "false")
        return _tree(
            ("Message", self.message),
            ("Type", self.type),
            ("Version", self.version),
            ("IgnoreError", ignore),
        )


@dataclass(frozen=True)
class JobParam:
    """``containers`` maps per-tag container names (see OPAQUE_CONTAINERS) to their trees.

    Those trees are in the shape XML gives: string leaves ("" for an empty element), nested
    mappings, and lists only for repeated elements (two or more items).
    """

    template_id: str | None = None
    containers: Mapping[str, Any] = field(default_factory=dict, hash=False)
    digital_watermark: DigitalWatermark | None = None
    transcode_template_id: str | None = None
    watermark_template_ids: tuple[str, ...] = ()

    def to_tree(self) -> dict[str, Any]:
        nodes: dict[str, Any] = {
            "TemplateId": self.template_id,
            "TranscodeTemplateId": self.transcode_template_id,
            "DigitalWatermark": _node(self.digital_watermark),
            "WatermarkTemplateId": list(self.watermark_template_ids) or None,
        }
        # Deep copies: a caller editing the tree must not reach into this frozen model.
        nodes.update({name: copy.deepcopy(tree) for name, tree in self.containers.items()})
        return _tree(*((name, nodes.get(name)) for name in JOB_PARAM_NODES))


@dataclass(frozen=True)
class CallBackMqConfig:
    mq_region: str
    mq_mode: str
    mq_name: str

    def to_tree(self) -> dict[str, Any]:
        return {"MqRegion": self.mq_region, "MqMode": self.mq_mode, "MqName": self.mq_name}


@dataclass(frozen=True, kw_only=True)
class Operation:
    tag: str
    job_param: JobParam
    queue_id: str
    time_interval: TimeInterval | None = None
    output: Output | None = None
    user_data: str | None = None
    job_level: int | None = None
    callback: str | None = None
    callback_format: str | None = None
    callback_type: str | None = None
    callback_mq_config: CallBackMqConfig | None = None

    def to_tree(self) -> dict[str, Any]:
        # The seed's sample order; the CallBack* nodes it does not show follow CallBack.
        return _tree(
            ("TimeInterval", _node(self.time_interval)),
            ("QueueId", self.queue_id),
            ("UserData", self.user_data),
            ("CallBack", self.callback),
            ("CallBackFormat", self.callback_format),
            ("CallBackType", self.callback_type),
            ("CallBackMqConfig", _node(self.callback_mq_config)),
            ("Tag", self.tag),
            ("JobParam", self.job_param.to_tree()),
            ("Output", _node(self.output)),
            ("JobLevel", None if self.job_level is None else str(self.job_level)),
        )


@dataclass(frozen=True)
class BatchRequest:
    """A validated ``inventorytriggerjob`` Request."""

    name: str
    type: str
    input: RequestInput
    operation: Operation

    @property
    def tag(self) -> str:
        return self.operation.tag

    @property
    def job_level(self) -> int:
        return 0 if self.operation.job_level is None else self.operation.job_level

    def to_tree(self) -> dict[str, Any]:
        """The inner Request with CI's node names, all values strings, absent nodes left out."""
        return {
            "Name": self.name,
            "Type": self.type,
            "Input": self.input.to_tree(),
            "Operation": self.operation.to_tree(),
        }

    def to_xml(self) -> bytes:
        """The body CI expects for ``POST /inventorytriggerjob``."""
        return unparse_xml({"Request": self.to_tree()})
