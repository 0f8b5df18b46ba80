"""Hardened parsing of untrusted XML and JSON documents into plain trees.

Both CI callbacks and intake requests come from outside. Expat never fetches external entities, but
it does expand internal ones (billion laughs), so any DOCTYPE is refused before parsing. Depth is
bounded so that a deeply nested document cannot exhaust the stack or memory.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any
from xml.parsers.expat import ExpatError

import xmltodict


class DocumentError(ValueError):
    """The body is not an acceptable document. ``reason`` is a stable short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def sniff_format(body: bytes, content_type: str = "") -> str:
    """``xml`` or ``json``: from the Content-Type when it says, else from the first byte."""
    ctype = content_type.lower()
    if "json" in ctype:
        return "json"
    if "xml" in ctype:
        return "xml"
    head = body.lstrip()[:1]
    return "json" if head in (b"{", b"[") else "xml"


def parse_xml(
    body: bytes, *, force_list: Collection[str] = (), max_depth: int = 64
) -> dict[str, Any]:
    """Parse ``body`` into an xmltodict tree; refuse DTDs, entities, depth and malformed input."""
    if not body.strip():
        raise DocumentError("empty", "empty body")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body or b"<!doctype" in body:
        raise DocumentError("doctype", "DOCTYPE and entity declarations are not accepted")
    _check_xml_depth(body, max_depth)
    try:
        tree = xmltodict.parse(
            body,
            force_list=tuple(force_list) or None,
            disable_entities=True,
        )
    except ExpatError as exc:
        raise DocumentError("malformed_xml", f"malformed XML: {exc}") from None
    except ValueError as exc:  # xmltodict raises this for entity use when disable_entities
        raise DocumentError("doctype", f"entities are not accepted: {exc}") from None
    if not isinstance(tree, dict) or len(tree) != 1:
        raise DocumentError("malformed_xml", "XML document must have exactly one root element")
    return tree


def parse_json(body: bytes, *, max_depth: int = 64) -> Any:
    """Parse a JSON body, refusing empty, malformed and too-deeply nested documents."""
    if not body.strip():
        raise DocumentError("empty", "empty body")
    _check_json_depth(body, max_depth)
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise DocumentError("malformed_json", "JSON body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DocumentError("malformed_json", f"malformed JSON: {exc}") from None
    except RecursionError:
        raise DocumentError("too_deep", "document nests too deeply") from None


def unparse_xml(tree: dict[str, Any]) -> bytes:
    """Render an xmltodict tree as a UTF-8 XML document with a declaration."""
    text: str = xmltodict.unparse(tree, full_document=True, encoding="utf-8")
    return text.encode("utf-8")


def _check_xml_depth(body: bytes, max_depth: int) -> None:
    # A byte scan is far cheaper than a parse and bounds depth before expat builds anything.
    # Comments, CDATA and processing instructions cannot nest, so counting "<x" vs "</" and "/>"
    # over-counts at most by their number, which keeps the check conservative enough.
    if body.count(b"<") <= max_depth:
        return
    depth = 0
    i = body.find(b"<")
    n = len(body)
    while i != -1 and i + 1 < n:
        nxt = body[i + 1 : i + 2]
        if nxt == b"/":
            depth -= 1
        elif nxt not in (b"?", b"!"):
            end = body.find(b">", i)
            if end == -1:
                break
            if body[end - 1 : end] != b"/":
                depth += 1
                if depth > max_depth:
                    raise DocumentError("too_deep", f"XML nests deeper than {max_depth} levels")
            i = end
        i = body.find(b"<", i + 1)


def _check_json_depth(body: bytes, max_depth: int) -> None:
    if body.count(b"{") + body.count(b"[") <= max_depth:
        return
    depth = 0
    in_string = False
    escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):
            depth += 1
            if depth > max_depth:
                raise DocumentError("too_deep", f"JSON nests deeper than {max_depth} levels")
        elif byte in (0x7D, 0x5D):
            depth -= 1
