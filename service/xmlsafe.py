"""Hardened parsing of untrusted XML and JSON documents into plain trees.

Both CI callbacks and intake requests come from outside. Expat never fetches external entities, but
it does expand internal ones (billion laughs), so any DOCTYPE is refused. Depth is bounded so that a
deeply nested document cannot exhaust the stack or memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any, NoReturn
from xml.parsers.expat import ExpatError, ParserCreate

import xmltodict

# A \uD800-\uDFFF escape: json.loads turns an unpaired one into a str that cannot be encoded.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
# A NUL character can only reach a JSON string as this escape (a raw one is malformed JSON).
_NUL_ESCAPE = "\\u0000"


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
    """Parse ``body`` into xmltodict's tree shape; refuse DTDs, too-deep nesting, malformed input.

    A small expat tree builder rather than xmltodict itself: it builds the same tree (the tests
    hold the two to that) at about a third of the cost, bounds depth as it goes, and refuses any
    DOCTYPE from inside the parser, whatever the document's encoding. Elements become keys,
    repeated elements lists, attributes ``@name``, text beside children or attributes ``#text``;
    text is stripped and empty text is ``None``. Names in ``force_list`` are always lists.
    """
    if not body or body.isspace():
        raise DocumentError("empty", "empty body")
    listed = frozenset(force_list)
    stack: list[tuple[Any, str | None]] = []
    item: Any = None
    data: str | None = None

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal item, data
        stack.append((item, data))
        if len(stack) > max_depth:
            raise DocumentError("too_deep", f"XML nests deeper than {max_depth} levels at <{name}>")
        item = {"@" + key: value for key, value in attrs.items()} if attrs else None
        data = None

    def characters(text: str) -> None:
        nonlocal data
        data = text if data is None else data + text

    def end(name: str) -> None:
        nonlocal item, data
        value = item
        text = data
        item, data = stack.pop()
        if text is not None:
            text = text.strip() or None
        if value is None:
            value = text
        elif text is not None:
            value["#text"] = text
        if item is None:
            item = {name: [value] if name in listed else value}
            return
        existing = item.get(name, item)
        if existing is item:
            item[name] = [value] if name in listed else value
        elif type(existing) is list:
            existing.append(value)
        else:
            item[name] = [existing, value]

    parser = ParserCreate()
    parser.buffer_text = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    # Refusing the DOCTYPE itself stops entity declarations (billion laughs, external entities)
    # before expat reads them; a byte search for "<!DOCTYPE" would miss UTF-16 documents.
    parser.StartDoctypeDeclHandler = _refuse_doctype
    try:
        parser.Parse(body, True)
    except DocumentError:
        raise
    except ExpatError as exc:
        raise DocumentError("malformed_xml", f"malformed XML: {exc}") from None
    except ValueError as exc:  # expat's answer to an encoding it cannot read (GBK, Shift_JIS, …)
        raise DocumentError("malformed_xml", f"unreadable XML: {exc}") from None
    tree: dict[str, Any] = item
    return tree


def _refuse_doctype(*_: object) -> NoReturn:
    raise DocumentError("doctype", "DOCTYPE and entity declarations are not accepted")


def parse_json(
    body: bytes,
    *,
    force_list: Collection[str] = (),
    max_depth: int = 64,
    refuse_nul: bool = False,
) -> Any:
    """Parse a JSON body, refusing empty, malformed, non-JSON constants, unpaired surrogate
    escapes, too-deeply nested documents and, with ``refuse_nul``, NUL characters in strings.
    Object members named in ``force_list`` are made lists (a one-element list unless already a
    list), as ``parse_xml`` does."""
    if not body or body.isspace():
        raise DocumentError("empty", "empty body")
    try:
        # What json.loads(body, parse_constant=…) does, without building a decoder per call.
        text = body.decode(json.detect_encoding(body), "surrogatepass")
        value = _DECODER.decode(text)
    except UnicodeDecodeError:
        raise DocumentError("malformed_json", "JSON body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DocumentError("malformed_json", f"malformed JSON: {exc}") from None
    except RecursionError:
        raise DocumentError("too_deep", f"JSON nests deeper than {max_depth} levels") from None
    if _SURROGATE_ESCAPE.search(body) is not None:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise DocumentError("malformed_json", "JSON has an unpaired surrogate escape") from None
    _check_json_tree(value, max_depth, frozenset(force_list))
    if refuse_nul and _NUL_ESCAPE in text and _has_nul(value):
        raise DocumentError("malformed_json", "JSON has a NUL character (\\u0000) in a string")
    return value


def _refuse_constant(name: str) -> NoReturn:
    # json.loads accepts NaN and Infinity, which are not JSON and which json.dumps would write back.
    raise DocumentError("malformed_json", f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _check_json_tree(value: Any, max_depth: int, listed: frozenset[str]) -> None:
    # One walk, depth first with an explicit stack (no recursion): bound the depth of the tree
    # as parsed and wrap the ``listed`` members; a wrapper list adds no depth.
    if type(value) is not dict and type(value) is not list:
        return
    pending: list[tuple[Any, int]] = [(value, 0)]
    pop = pending.pop
    push = pending.append
    while pending:
        node, depth = pop()
        if depth >= max_depth:
            raise DocumentError("too_deep", f"JSON nests deeper than {max_depth} levels")
        depth += 1
        if type(node) is dict:
            for key, child in node.items():
                if key in listed and type(child) is not list:
                    node[key] = [child]
                if type(child) is dict or type(child) is list:
                    push((child, depth))
        else:
            for child in node:
                if type(child) is dict or type(child) is list:
                    push((child, depth))


def _has_nul(value: Any) -> bool:
    """Whether a NUL is in any string (key or value) of a parsed JSON tree."""
    pending = [value]
    while pending:
        node = pending.pop()
        if type(node) is str:
            if "\x00" in node:
                return True
        elif type(node) is dict:
            pending.extend(node.keys())
            pending.extend(node.values())
        elif type(node) is list:
            pending.extend(node)
    return False


def unparse_xml(tree: dict[str, Any]) -> bytes:
    """Render an xmltodict tree as a UTF-8 XML document with a declaration."""
    text: str = xmltodict.unparse(tree, full_document=True, encoding="utf-8")
    return text.encode("utf-8")
