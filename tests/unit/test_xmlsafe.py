from __future__ import annotations

import pytest

from service.xmlsafe import DocumentError, parse_json, parse_xml, sniff_format, unparse_xml

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<Request><Name>&lol2;</Name></Request>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><Request><Name>&xxe;</Name></Request>"""


def test_parses_and_forces_lists() -> None:
    tree = parse_xml(b"<R><A>1</A><B>x</B><B>y</B></R>", force_list=("A",))
    assert tree == {"R": {"A": ["1"], "B": ["x", "y"]}}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (BILLION_LAUGHS, "doctype"),
        (EXTERNAL_ENTITY, "doctype"),
        (b"<Request><Name>demo</Name>", "malformed_xml"),
        (b"not xml at all", "malformed_xml"),
        (b"<a>&undefined;</a>", "malformed_xml"),
        (b"<a>" * 100 + b"</a>" * 100, "too_deep"),
    ],
)
def test_refuses_hostile_xml(body: bytes, reason: str) -> None:
    with pytest.raises(DocumentError) as info:
        parse_xml(body, max_depth=32)
    assert info.value.reason == reason


def test_depth_limit_is_exact() -> None:
    ok = b"<a>" * 32 + b"</a>" * 32
    parse_xml(ok, max_depth=32)
    with pytest.raises(DocumentError):
        parse_xml(b"<a>" + ok + b"</a>", max_depth=32)


def test_self_closing_elements_do_not_count_as_depth() -> None:
    body = b"<r>" + b"<e/>" * 200 + b"</r>"
    assert parse_xml(body, max_depth=4)["r"]["e"] == [None] * 200


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b'{"a": ', "malformed_json"),
        (b"\xff\xfe{}", "malformed_json"),
        (b"[" * 100 + b"]" * 100, "too_deep"),
    ],
)
def test_refuses_hostile_json(body: bytes, reason: str) -> None:
    with pytest.raises(DocumentError) as info:
        parse_json(body, max_depth=32)
    assert info.value.reason == reason


def test_json_depth_ignores_brackets_inside_strings() -> None:
    body = b'{"a": "' + b"[" * 100 + b'"}'
    assert parse_json(body, max_depth=4) == {"a": "[" * 100}


@pytest.mark.parametrize(
    ("body", "ctype", "fmt"),
    [
        (b"{}", "", "json"),
        (b"  [1]", "", "json"),
        (b"<a/>", "", "xml"),
        (b"{}", "application/xml", "xml"),
        (b"<a/>", "application/json; charset=utf-8", "json"),
        (b"<a/>", "text/xml", "xml"),
    ],
)
def test_sniff_format(body: bytes, ctype: str, fmt: str) -> None:
    assert sniff_format(body, ctype) == fmt


def test_unparse_round_trip_escapes() -> None:
    tree = {"Request": {"Name": "a<b & c", "Tags": {"Tag": ["x", "y"]}}}
    assert parse_xml(unparse_xml(tree)) == tree


def test_json_force_list_wraps_named_keys_at_every_depth() -> None:
    body = b'{"R": {"A": {"B": 1}, "L": [{"A": 2}], "C": "x"}, "A": [3]}'
    assert parse_json(body, force_list=("A",)) == {
        "R": {"A": [{"B": 1}], "L": [{"A": [2]}], "C": "x"},
        "A": [3],
    }


@pytest.mark.parametrize(
    "body",
    [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": "\\ud800"}'],
    ids=["nan", "inf", "surrogate"],
)
def test_json_refuses_what_json_cannot_carry(body: bytes) -> None:
    with pytest.raises(DocumentError) as info:
        parse_json(body)
    assert info.value.reason == "malformed_json"


@pytest.mark.parametrize(
    "body",
    [b'{"a": ["x\\u0000"]}', b'{"a\\u0000": 1}', '{"a": "\\u0000"}'.encode("utf-16")],
    ids=["in_a_value", "in_a_key", "utf16"],
)
def test_json_refuses_a_nul_when_asked(body: bytes) -> None:
    parse_json(body)  # a NUL is JSON
    with pytest.raises(DocumentError) as info:
        parse_json(body, refuse_nul=True)
    assert info.value.reason == "malformed_json"


def test_json_keeps_a_backslash_written_before_u0000() -> None:
    # An escaped backslash followed by "u0000" is six ordinary characters, not a NUL.
    assert parse_json(b'{"a": "\\\\u0000"}', refuse_nul=True) == {"a": "\\u0000"}
