from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import xmlsafe
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


# --- properties: any bytes get a tree or a documented refusal ------------------------------------

XML_REASONS = {"empty", "malformed_xml", "doctype", "too_deep"}
JSON_REASONS = {"empty", "malformed_json", "too_deep"}

# Documents built from the parts that make XML readers differ: repeated and always-list names,
# attributes, mixed content, blank text, comments, CDATA, entities and character references.
_NAMES = st.sampled_from(["A", "B", "ObjectName", "Tasks"])
_TEXT = st.sampled_from(
    ["", " ", "\n  ", "x", " y ", "&amp;", "&#20013;", "<![CDATA[ c&d ]]>", "<!-- n -->", "悯"]
)


@st.composite
def _xml_elements(draw: st.DrawFn, depth: int = 0) -> str:
    name = draw(_NAMES)
    attributes = "".join(
        f' a{index}="{value}"'
        for index, value in enumerate(draw(st.lists(_TEXT, max_size=2)))
        if "<" not in value
    )
    parts = [draw(_TEXT)]
    if depth < 4:
        for child in draw(st.lists(_xml_elements(depth + 1), max_size=3)):
            parts += [child, draw(_TEXT)]
    return f"<{name}{attributes}>{''.join(parts)}</{name}>"


def _outcome(read: Any) -> tuple[str, Any]:
    try:
        return "read", read()
    except DocumentError as exc:
        return "refused", exc.reason


@settings(max_examples=400, deadline=None)
@given(
    st.builds(
        lambda prolog, element, depth: (prolog + element, depth),
        st.sampled_from(["", '<?xml version="1.0" encoding="utf-8"?>', "<?xml version='1.0'?>\n"]),
        _xml_elements(),
        st.integers(min_value=1, max_value=6),
    )
)
def test_both_xml_readers_build_the_same_tree(document: tuple[str, int]) -> None:
    text, depth = document
    body = text.encode()
    listed = frozenset({"ObjectName", "Tasks"})

    fast = _outcome(lambda: parse_xml(body, force_list=listed, max_depth=depth))
    strict = _outcome(lambda: xmlsafe._parse_xml_strict(body, listed, depth))

    assert fast == strict


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_parse_as_xml_or_get_a_documented_refusal(body: bytes) -> None:
    outcome, value = _outcome(lambda: parse_xml(body, force_list=("A",), max_depth=8))
    assert type(value) is dict if outcome == "read" else value in XML_REASONS


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["A", "B", "ObjectName"]), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_JSON_VALUES)
def test_json_values_are_read_exactly(value: Any) -> None:
    # Integers past 64 bits and floats included: what the standard library would read.
    body = json.dumps(value).encode()
    assert parse_json(body) == json.loads(body)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_parse_as_json_or_get_a_documented_refusal(body: bytes) -> None:
    outcome, value = _outcome(lambda: parse_json(body, force_list=("A",), max_depth=8))
    assert outcome == "read" or value in JSON_REASONS


@pytest.mark.parametrize("digits", [4301, 100_000])
def test_a_json_number_too_long_to_read_is_refused(digits: int) -> None:
    with pytest.raises(DocumentError) as info:
        parse_json(b'{"JobLevel": ' + b"7" * digits + b"}")
    assert info.value.reason == "malformed_json"
    assert "number" in info.value.message


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'<?xml version="1.0"?>\n<!DOCTYPE r><r/>', "doctype"),
        ("<?xml version='1.0' encoding='UTF-16'?><!DOCTYPE r><r/>".encode("utf-16"), "doctype"),
        (b"\xef\xbb\xbf<!DOCTYPE r [<!ENTITY e 'x'>]><r>&e;</r>", "doctype"),
        # A DOCTYPE no byte search would find, in an encoding expat cannot read: refused.
        (b'<?xml version="1.0" encoding="utf-7"?>+ADw-!DOCTYPE r+AD4-<r/>', "malformed_xml"),
    ],
    ids=["ascii", "utf16", "bom", "utf7"],
)
def test_doctype_is_refused_whatever_reader_takes_the_document(body: bytes, reason: str) -> None:
    assert _outcome(lambda: parse_xml(body)) == ("refused", reason)
