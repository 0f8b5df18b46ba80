"""The CI ``inventorytriggerjob`` Request: typed model, validation, JSON/XML parsing, XML output."""

from service.request.codec import parse_request
from service.request.model import (
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
from service.request.validate import request_from_tree

__all__ = [
    "TAGS",
    "TAGS_WITHOUT_OUTPUT",
    "TAG_ALIASES",
    "TAG_CONTAINERS",
    "BatchRequest",
    "CallBackMqConfig",
    "DigitalWatermark",
    "FieldError",
    "JobParam",
    "Operation",
    "Output",
    "RequestInput",
    "RequestInvalid",
    "StreamExtract",
    "TimeInterval",
    "parse_request",
    "request_from_tree",
]
