"""Hardened parsing of untrusted XML and JSON documents into plain trees.

Both CI callbacks and intake requests come from outside. Expat never fetches external entities, but
it does expand internal ones (billion laughs), so any DOCTYPE is refused. Depth is bounded so that a
deeply nested document cannot exhaust the stack or memory.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Collection
from typing import Any, NoReturn
from xml.parsers.expat import ExpatError, ParserCreate

import orjson
import xmltodict
from lxml import etree

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

    Elements become keys, repeated elements lists, attributes ``@name``, text beside children or
    attributes ``#text``; text is stripped and empty text is ``None``. Names in ``force_list``
    are always lists. The tests hold both readers below to the tree xmltodict builds, and to
    each other.

    Most documents take the fast reader: libxml2 (lxml) builds the element tree in C, never
    resolving an entity, loading a DTD or touching the network, and one Python pass turns it
    into the dict tree, bounding depth as it goes. It only takes a document in which a byte
    search is as good as a parser at finding a DOCTYPE (an ASCII-compatible encoding that expat
    reads too), with no DOCTYPE and no namespaces (which lxml would rewrite as ``{uri}name``).
    Anything else, any refusal and any mixed content (text beside child elements, where dropped
    blank text could matter) go to the strict reader: its answers and refusals are the
    reference.
    """
    if not body or body.isspace():
        raise DocumentError("empty", "empty body")
    listed = force_list if isinstance(force_list, frozenset) else frozenset(force_list)
    start = _fast_xml_start(body) if 0 < max_depth <= _FAST_MAX_DEPTH else -1
    if start >= 0:
        try:
            return _parse_xml_fast(body, listed, max_depth, body.find(b"=", start) >= 0)
        except etree.LxmlError:
            pass  # the strict reader says precisely why
        except _Mixed:
            pass  # the strict reader keeps all of mixed content's text
    return _parse_xml_strict(body, listed, max_depth)


# Depth is bounded by recursion in the fast reader; deeper limits go to the strict one.
_FAST_MAX_DEPTH = 128
# Encodings in which every ASCII character is its own byte and which expat and libxml2 read.
_BYTE_SEARCHABLE = frozenset({b"utf-8", b"utf8", b"us-ascii", b"ascii", b"iso-8859-1", b"latin1"})
_DECLARED_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]*)["']""")
_UTF8_BOM = b"\xef\xbb\xbf"


def _fast_xml_start(body: bytes) -> int:
    """Where the document's content starts (after its declaration) when the fast reader may
    take it, else -1."""
    start = 3 if body.startswith(_UTF8_BOM) else 0
    # "<" then a byte that is not NUL: not UTF-16/32 (XML spec appendix F), so ASCII is bytes...
    if body[start : start + 1] != b"<" or body[start + 1 : start + 2] in (b"", b"\x00"):
        return -1
    # ... unless a declaration names another encoding, which the parser would then switch to.
    if body.startswith(b"<?xml", start):
        end = body.find(b"?>", start)
        if end < 0:
            return -1
        declaration = body[start:end]
        if b"encoding" in declaration:
            named = _DECLARED_ENCODING.search(declaration)
            if named is None or named.group(1).lower() not in _BYTE_SEARCHABLE:
                return -1
        start = end + 2
    if b"<!DOCTYPE" in body:
        return -1
    # One search for both namespace spellings (xmlns, xml:lang and the like).
    if body.find(b"xml", start) >= 0 and (b"xmlns" in body or b"xml:" in body):
        return -1
    return start


class _Parsers(threading.local):
    # An lxml parser is not to be shared between threads; one per thread, reused.
    def __init__(self) -> None:
        self.parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
            # Blank text between elements is dropped (fewer strings to make); it only mattered
            # in mixed content, which goes to the strict reader.
            remove_blank_text=True,
        )


_PARSERS = _Parsers()


class _TooDeep(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


class _Mixed(Exception):
    pass


def _parse_xml_fast(
    body: bytes, listed: frozenset[str], max_depth: int, attributes: bool
) -> dict[str, Any]:
    """``attributes``: whether the document can have any (an ``=`` past its declaration);
    reading an element's attributes costs lxml an object each."""
    root = etree.fromstring(body, _PARSERS.parser)
    # The byte search above keeps DOCTYPEs out; this says so from what libxml2 itself read.
    if root.getroottree().docinfo.doctype:
        raise DocumentError("doctype", "DOCTYPE and entity declarations are not accepted")
    tag = root.tag
    value: Any
    try:
        if len(root):
            value = _element_value(root, listed, attributes, max_depth - 1)
        elif attributes and len(root.attrib):
            value = _leaf_with_attributes(root)
        else:
            text = root.text
            value = None if text is None else text.strip() or None
    except _TooDeep as exc:
        message = f"XML nests deeper than {max_depth} levels at <{exc.name}>"
        raise DocumentError("too_deep", message) from None
    return {tag: [value] if tag in listed else value}


def _element_value(
    element: etree._Element, listed: frozenset[str], attributes: bool, depth_left: int
) -> dict[str, Any]:
    """An element with children as a dict (see ``parse_xml``)."""
    if depth_left <= 0:
        raise _TooDeep(element[0].tag)
    item: dict[str, Any] = (
        {"@" + key: value for key, value in element.items()} if attributes else {}
    )
    text = element.text
    for child in element:
        name = child.tag
        if len(child):
            value: Any = _element_value(child, listed, attributes, depth_left - 1)
        elif attributes and len(child.attrib):
            value = _leaf_with_attributes(child)
        else:
            value = child.text
            if value is not None:
                value = value.strip() or None
        tail = child.tail
        if tail is not None:
            text = tail if text is None else text + tail
        existing = item.get(name, item)
        if existing is item:
            item[name] = [value] if name in listed else value
        elif type(existing) is list:
            existing.append(value)
        else:
            item[name] = [existing, value]
    if text is not None and not text.isspace():
        raise _Mixed
    return item


def _leaf_with_attributes(element: etree._Element) -> dict[str, Any]:
    item: dict[str, Any] = {"@" + key: value for key, value in element.items()}
    text = element.text
    if text is not None:
        text = text.strip()
        if text:
            item["#text"] = text
    return item


def _parse_xml_strict(body: bytes, listed: frozenset[str], max_depth: int) -> dict[str, Any]:
    """The reference reader: expat with a Python handler per node, refusing any DOCTYPE from
    inside the parser whatever the document's encoding, and bounding depth as it reads."""
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
    escapes, numbers too long to read, too-deeply nested documents and, with ``refuse_nul``, NUL
    characters in strings. Object members named in ``force_list`` are made lists (a one-element
    list unless already a list), as ``parse_xml`` does.

    orjson reads it first. Where orjson refuses, or where it read a float (which may stand for
    an integer too large for 64 bits, that orjson rounds), the standard library reads it again:
    its values are exact and its refusals are the reference.
    """
    if not body or body.isspace():
        raise DocumentError("empty", "empty body")
    listed = force_list if isinstance(force_list, frozenset) else frozenset(force_list)
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = _parse_json_exact(body, max_depth)
        _check_json_tree(value, max_depth, listed)
    else:
        if _check_json_tree(value, max_depth, listed):
            value = _parse_json_exact(body, max_depth)
            _check_json_tree(value, max_depth, listed)
    # A NUL is written \u0000 (or, in UTF-16/32, is among the body's NUL bytes): walk the tree
    # only when one may be there.
    if refuse_nul and (_NUL_ESCAPE.encode() in body or b"\x00" in body) and _has_nul(value):
        raise DocumentError("malformed_json", "JSON has a NUL character (\\u0000) in a string")
    return value


def _parse_json_exact(body: bytes, max_depth: int) -> Any:
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
    except ValueError as exc:
        # int() refuses a literal of more than sys.get_int_max_str_digits() digits.
        raise DocumentError("malformed_json", f"unreadable JSON number: {exc}") from None
    if _SURROGATE_ESCAPE.search(body) is not None:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise DocumentError("malformed_json", "JSON has an unpaired surrogate escape") from None
    return value


def _refuse_constant(name: str) -> NoReturn:
    # json.loads accepts NaN and Infinity, which are not JSON and which json.dumps would write back.
    raise DocumentError("malformed_json", f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _check_json_tree(value: Any, max_depth: int, listed: frozenset[str]) -> bool:
    """Bound the depth of the tree as parsed and wrap the ``listed`` members (a wrapper list
    adds no depth); True when the tree holds a float. One walk, depth first with an explicit
    stack (no recursion)."""
    if type(value) is not dict and type(value) is not list:
        return type(value) is float
    floats = False
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
                kind = type(child)
                if kind is dict or kind is list:
                    push((child, depth))
                elif kind is float:
                    floats = True
        else:
            for child in node:
                kind = type(child)
                if kind is dict or kind is list:
                    push((child, depth))
                elif kind is float:
                    floats = True
    return floats


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
