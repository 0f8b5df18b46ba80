"""CI's answers: `<Response>` documents and `<Error>` documents, each with `x-ci-request-id`."""

from __future__ import annotations

import base64
import os
import time
from typing import Any

from aiohttp import web

from service.xmlsafe import unparse_xml

XML = "application/xml"


class CIError(Exception):
    """An answer CI gives as an error document: HTTP status, stable Code, human Message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def new_request_id() -> str:
    # CI's request ids are base64 of `<hex time>_<hex>_<hex>_<n>`; clients treat them as opaque.
    raw = f"{int(time.time()):08x}_{os.urandom(4).hex()}_{os.urandom(2).hex()}_1a"
    return base64.b64encode(raw.encode()).decode()


def new_trace_id() -> str:
    return base64.b64encode(os.urandom(48)).decode()


def headers(request_id: str) -> dict[str, str]:
    return {"Server": "tencent-ci", "x-ci-request-id": request_id}


def xml_answer(body: dict[str, Any], request_id: str) -> web.Response:
    """200 with `<Response><RequestId/>…body…</Response>`."""
    document = unparse_xml({"Response": {"RequestId": request_id, **body}})
    return web.Response(body=document, content_type=XML, headers=headers(request_id))


def empty_answer(request_id: str) -> web.Response:
    return web.Response(status=200, headers=headers(request_id))


def error_answer(error: CIError, request_id: str) -> web.Response:
    document = unparse_xml(
        {
            "Error": {
                "Code": error.code,
                "Message": error.message,
                "RequestId": request_id,
                "TraceId": new_trace_id(),
            }
        }
    )
    return web.Response(
        status=error.status, body=document, content_type=XML, headers=headers(request_id)
    )
