"""Input strictness (issue 14): repeated names, signs, JSON-level number failures, the lists of
names in a detail. Each rule in both forms; the fast paths held to the slow ones."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shard.decode import decode_entry, decode_fields, decode_json, validate
from shard.messages import STP_MODES, Amend, Cancel, Invalid, Order

ORDER = {"type": "order", "order_id": "o1", "side": "buy", "price": 100, "quantity": 1}


def pairs_of(fields: list[tuple[str, str]]) -> list[bytes]:
    return [x.encode() for kv in fields for x in kv]


def flat_order(**change: str) -> list[tuple[str, str]]:
    fields = {k: str(v) for k, v in ORDER.items()} | {"timestamp": "5"}
    return list((fields | change).items())


def json_forms(text: str, default_ts: int | None = 5) -> list[object]:
    """A JSON message as decode_json (bytes and str) and as a data field decode it."""
    data = text.encode()
    return [
        decode_json(data, default_ts),
        decode_json(text, default_ts),
        decode_fields({b"data": data}, default_ts),
        decode_entry("5-0", [b"data", data], 16_384),
    ]


def rejected(got: object, reason: str, *words: str) -> None:
    assert isinstance(got, Invalid), got
    assert got.reason == reason, got
    for word in words:
        assert word in got.detail, (word, got.detail)


# -- repeated names (D9) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (
            '{"type":"cancel","order_id":"dup","side":"buy","price":100,"quantity":1,'
            '"type":"order"}',
            "type",
        ),
        ('{"type":"order","order_id":"o1","side":"buy","price":1,"quantity":1,"quantity":999}',
         "quantity"),
        ('{"type":"order","order_id":"o1","side":"buy","price":1,"quantity":1,'
         '"qu\\u0061ntity":999}', "quantity"),
        ('{"type":"order","order_id":"o1","side":"buy","price":1,"price":1,"quantity":1}',
         "price"),
        ('{"type":"cancel","order_id":"o1","timestamp":1,"timestamp":1}', "timestamp"),
        ('{"type":"cancel","t\\u0079pe":"cancel","order_id":"o1"}', "type"),
        ('{"type":"order","order_id":"o1","side":"buy","price":1,"quantity":1,'
         '"order_type":"limit","order_type":"limit"}', "order_type"),
        ('{"type":"order","order_id":"o1","side":"buy","price":1,"quantity":1,"x":1,"x":2}',
         "'x'"),
    ],
)  # fmt: skip
def test_a_repeated_json_name_is_malformed(text: str, name: str) -> None:
    for got in json_forms(text):
        rejected(got, "malformed", f"field {name} appears twice", "send each field once")


def _shapes() -> list[dict[str, object]]:
    """Every shape of message the typed decoder accepts: each kind and order type, each
    optional field present or absent."""
    shapes: list[dict[str, object]] = []
    for ts in ({}, {"timestamp": 9}):
        for order_type in (None, "limit", "market", "ioc", "fok", "post_only"):
            msg: dict[str, object] = {"type": "order", "order_id": "o1", "side": "sell"}
            msg |= {"quantity": 2, **ts}
            msg |= {"price": 7} if order_type != "market" else {}
            msg |= {"order_type": order_type} if order_type else {}
            shapes.append(msg)
            shapes.append({**msg, "account": "a1"})
            shapes.append({**msg, "account": "a1", "stp": STP_MODES[len(shapes) % 5]})
        for change in ({"quantity": 2}, {"price": 7}, {"quantity": 2, "price": 7}):
            shapes.append({"type": "amend", "order_id": "o1", **change, **ts})
            shapes.append({"type": "amend", "order_id": "o1", **change, **ts, "account": "a1"})
        shapes.append({"type": "cancel", "order_id": "o1", **ts})
        shapes.append({"type": "cancel", "order_id": "o1", **ts, "account": "a1"})
        for side in ({}, {"side": "buy"}):
            shapes.append({"type": "cancel_all", "account": "a1", **side, **ts})
    return shapes


@pytest.mark.parametrize("msg", _shapes())
def test_any_field_of_any_shape_given_twice_is_malformed(msg: dict[str, object]) -> None:
    """The fast path's count of the fields a message shows, checked for each shape: one name
    more, with the same value, must always be caught."""
    text = json.dumps(msg)
    assert not isinstance(decode_json(text, 5), Invalid)
    for name, value in msg.items():
        twice = text[:-1] + f", {json.dumps(name)}: {json.dumps(value)}}}"
        rejected(decode_json(twice, 5), "malformed", f"field {name} appears twice")
        escaped = text[:-1] + f', "\\u{ord(name[0]):04x}{name[1:]}": {json.dumps(value)}}}'
        rejected(decode_json(escaped, 5), "malformed", f"field {name} appears twice")


def test_a_repeated_json_name_keeps_the_order_id_when_that_is_unambiguous() -> None:
    text = '{"type":"order","order_id":"o1","side":"buy","price":1,"quantity":1,"quantity":2}'
    assert decode_json(text.encode(), 5).order_id == "o1"
    text = '{"type":"cancel","order_id":"a","order_id":"b"}'
    got = decode_json(text.encode(), 5)
    rejected(got, "malformed", "field order_id appears twice")
    assert got.order_id is None


def test_a_name_three_times_and_a_repeat_inside_a_nested_object() -> None:
    thrice = '{"type":"cancel","order_id":"o1","x":1,"x":2,"x":3}'
    rejected(decode_json(thrice, 5), "malformed", "field 'x' appears 3 times")
    nested = '{"type":"cancel","order_id":"o1","x":{"a":1,"a":2}}'
    rejected(decode_json(nested, 5), "malformed", "'a'", "more than once", "nested")
    assert decode_json('{"type":"cancel","order_id":"o1","x":{"a":1,"b":{"a":2}}}', 5) == Cancel(
        "o1", 5
    )


@pytest.mark.parametrize("name", ["quantity", "type", "price", "order_id", "other"])
def test_a_repeated_flat_name_is_malformed(name: str) -> None:
    fields = [*flat_order(), (name, dict(flat_order()).get(name, "1")), ("other", "1")]
    if name != "other":
        fields.append(("other2", "1"))
    pairs = pairs_of(fields)
    shown = name if name != "other" else "'other'"
    got = decode_entry("5-0", pairs, 16_384)
    rejected(got, "malformed", f"field {shown} appears twice", "send each field once")
    assert got.order_id == (None if name == "order_id" else "o1")


def test_a_repeated_flat_name_with_another_value_is_malformed_too() -> None:
    pairs = pairs_of([*flat_order(quantity="1"), ("quantity", "999")])
    rejected(decode_entry("5-0", pairs, 16_384), "malformed", "field quantity appears twice")
    # a repeated name that cannot be read as UTF-8 is shown as its bytes
    pairs = [*pairs_of(flat_order()), b"\xff", b"1", b"\xff", b"2"]
    rejected(decode_entry("5-0", pairs, 16_384), "malformed", "field b'\\xff' appears twice")


def test_oversize_is_decided_before_a_repeated_name() -> None:
    pairs = [*pairs_of(flat_order()), b"x", b"1" * 20_000, b"x", b"1"]
    rejected(decode_entry("5-0", pairs, 16_384), "oversize")


# -- signs (D10) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["price", "timestamp", "quantity"])
@pytest.mark.parametrize("value", ["-0", "+0", "-00", "-5", "+5", "-007"])
def test_a_signed_flat_integer_is_refused(name: str, value: str) -> None:
    for kind in ("order", "amend"):
        fields = flat_order(**{name: value})
        if kind == "amend":
            fields = [(k, "amend" if k == "type" else v) for k, v in fields if k != "side"]
        pairs = pairs_of(fields)
        got = decode_entry("5-0", pairs, 16_384)
        rejected(got, "invalid_field", name, "without a sign", value)


@pytest.mark.parametrize("name", ["price", "timestamp", "quantity"])
def test_minus_zero_in_json_is_refused(name: str) -> None:
    for spacing in ("", " "):
        for msg in (
            {**ORDER, "timestamp": 7},
            {"type": "amend", "order_id": "o1", "price": 3, "quantity": 2, "timestamp": 7},
        ):
            text = json.dumps({**msg, name: "@"}).replace('"@"', f"{spacing}-0{spacing}")
            for got in json_forms(text):
                rejected(got, "invalid_field", name, "without a sign", "-0")
    text = json.dumps({"type": "cancel", "order_id": "o1", "timestamp": "@"}).replace('"@"', "-0")
    for got in json_forms(text):
        rejected(got, "invalid_field", "timestamp", "without a sign", "-0")


def test_the_rules_hold_beside_an_unknown_field() -> None:
    """An unknown field sends a message past the typed decoder: the guards hold there too."""
    for change, reason, words in (
        ('"price":-0', "invalid_field", ["price", "without a sign"]),
        ('"timestamp":-0', "invalid_field", ["timestamp", "without a sign"]),
        ('"quantity":1', "malformed", ["field quantity appears twice"]),
        ('"qu\\u0061ntity":1', "malformed", ["field quantity appears twice"]),
        ('"price":1.0', "invalid_field", ["price", "1.0"]),
        ('"price":' + "9" * 30, "invalid_field", ["price", "64-bit", "9" * 30]),
    ):
        text = json.dumps(ORDER)[:-1].replace('"price": 100, ', "") + f', "note": 1, {change}}}'
        rejected(decode_json(text, 5), reason, *words)


def test_minus_zero_elsewhere_in_json_is_not_a_sign_of_a_field() -> None:
    text = '{"type":"order","order_id":"x-0","side":"buy","price":0,"quantity":1,"note":-0}'
    assert decode_json(text, 5) == Order("x-0", "buy", 1, 0, "limit", 5)
    rejected(decode_json('{"type":"order","order_id":"o","side":-0}', 5), "invalid_field", "side")


def test_a_signed_json_string_is_refused() -> None:
    rejected(decode_json(json.dumps({**ORDER, "price": "-0"}), 5), "invalid_field", "price", "sign")


def test_leading_zeros_are_accepted_in_the_flat_form_only() -> None:
    pairs = pairs_of(flat_order(price="007", quantity="0010", timestamp="000"))
    assert decode_entry("5-0", pairs, 16_384) == Order("o1", "buy", 10, 7, "limit", 0)
    rejected(decode_json('{"type":"cancel","order_id":"o1","timestamp":007}'), "malformed")


# -- number failures in the JSON form name the field (D11) ---------------------------------------


@pytest.mark.parametrize(
    ("literal", "words"),
    [
        ("1e400", ["must be an integer", "1e400"]),
        ("-1e400", ["must be an integer", "-1e400"]),
        ("1E2", ["must be an integer", "1E2"]),
        ("1.0", ["must be an integer", "1.0"]),
        ("-0.0", ["must be an integer", "-0.0"]),
        ("NaN", ["must be an integer", "NaN"]),
        ("Infinity", ["must be an integer", "Infinity"]),
        ("-Infinity", ["must be an integer", "-Infinity"]),
        ("9" * 5000, ["does not fit a signed 64-bit integer", "999"]),
        ("-" + "9" * 5000, ["does not fit a signed 64-bit integer", "-999"]),
        ("9" * 20, ["does not fit a signed 64-bit integer", "9" * 20]),
        (str(2**63), ["does not fit a signed 64-bit integer", str(2**63)]),
    ],
)
@pytest.mark.parametrize("name", ["price", "quantity", "timestamp"])
def test_a_json_number_the_shard_cannot_take_names_its_field(
    literal: str, words: list[str], name: str
) -> None:
    text = json.dumps({**ORDER, "timestamp": 1, name: "@"}).replace('"@"', literal)
    for got in json_forms(text):
        rejected(got, "invalid_field", name, *words)
        assert got.order_id == "o1" and len(got.detail) < 200


def test_a_json_number_in_a_text_field_names_the_field() -> None:
    for name in ("side", "order_type", "type", "order_id"):
        text = json.dumps({**ORDER, name: "@"}).replace('"@"', "NaN")
        rejected(decode_json(text, 5), "invalid_field", name, "must be a string", "NaN")
    text = json.dumps({**ORDER, "order_id": "@"}).replace('"@"', "1e400")
    rejected(decode_json(text, 5), "invalid_field", "order_id", "1e400")


def test_a_number_out_of_range_in_an_unknown_field_is_ignored_but_nan_is_not_json() -> None:
    for literal in ("1e400", "9" * 5000, "-0", "1.5"):
        text = json.dumps({**ORDER, "note": "@"}).replace('"@"', literal)
        assert decode_json(text, 5) == Order("o1", "buy", 1, 100, "limit", 5)
    for literal in ("NaN", "Infinity", "-Infinity"):
        for where in ('{"note": @}', '{"price": [@]}', "[@]"):
            text = json.dumps({**ORDER, "note": "@"}).replace('"@"', where.replace("@", literal))
            rejected(decode_json(text, 5), "malformed", "not valid JSON", literal)
        rejected(decode_json(literal, 5), "malformed", "not valid JSON", literal)


def test_a_lone_surrogate_escape_in_a_known_field_names_it() -> None:
    text = json.dumps({**ORDER, "order_id": "@"}).replace('"@"', '"a\\ud800"')
    got = decode_json(text, 5)
    rejected(got, "invalid_field", "order_id", "not valid UTF-8")
    assert got.order_id is None
    text = json.dumps({**ORDER, "side": "@"}).replace('"@"', '"\\udfff"')
    rejected(decode_json(text, 5), "invalid_field", "side")
    text = json.dumps({**ORDER, "note": "@"}).replace('"@"', '"\\ud800"')
    assert isinstance(decode_json(text, 5), Order)  # an unknown field is ignored


def test_invalid_json_stays_malformed_in_our_own_words() -> None:
    rejected(decode_json(b'{"side": "buy\xff"}'), "malformed", "not valid UTF-8", "byte 13")
    rejected(decode_json(b'{"type": "order",, }'), "malformed", "not valid JSON", "character 17")
    rejected(decode_json(b'{"a": 1} x'), "malformed", "not valid JSON", "character 9")
    rejected(decode_json(b"[" * 100_000), "malformed", "nested too deeply")
    rejected(decode_json(b'{"a":' * 100_000), "malformed", "nested too deeply")
    rejected(decode_json(b"\xef\xbb\xbf{}"), "malformed", "not valid JSON")
    rejected(decode_json(b'{"order_id": "a\x00b"}'), "malformed", "not valid JSON")


# -- the names in a detail (D11's small items) ---------------------------------------------------


def test_an_unreadable_name_is_listed() -> None:
    for got in (
        decode_fields({b"\xff": b"x"}, 5),
        decode_entry("5-0", [b"\xff", b"x"], 16_384),
    ):
        rejected(got, "malformed", "no field the shard knows", "b'\\xff'")
        assert "none" not in got.detail
    rejected(decode_fields({}, 5), "malformed", "(fields: none)")


def test_the_list_of_names_is_bounded() -> None:
    pairs = [x for i in range(1000) for x in (f"name{i:04}".encode(), b"1")]
    for got in (
        decode_entry("5-0", pairs, 1_000_000),
        decode_json(json.dumps({f"name{i:04}": 1 for i in range(1000)}), 5),
    ):
        rejected(got, "malformed", "no field the shard knows", "'name0000'", "992 more")
        assert len(got.detail) < 300, len(got.detail)
    long_name = {b"n" * 5000: b"1"}
    rejected(decode_fields(long_name, 5), "malformed")
    assert len(decode_fields(long_name, 5).detail) < 150


# -- the fast paths against the slow ones --------------------------------------------------------

KNOWN = ["type", "order_id", "timestamp", "side", "order_type", "price", "quantity", "account",
         "stp"]  # fmt: skip
json_names = st.sampled_from([*KNOWN, "x", "data"])
json_literals = st.one_of(
    st.sampled_from(
        ['"order"', '"cancel"', '"amend"', '"buy"', '"sell"', '"limit"', '"market"', '"ioc"',
         '"cancel_all"', '"decrement"', '"none"', '"alice"', '"' + "é" * 33 + '"', '""',
         '"o1"', '"x-0"', '"a:b"', "0", "1", "-0", "-1", "null", "7", "1.5", "NaN", "1e400",
         str(2**63 - 1), str(2**63), '"-0"', '"007"', '"b\\u0075y"', "[1]", '{"a":1,"a":2}']
    ),
    st.integers(0, 2**63 - 1).map(str),
)  # fmt: skip


def _escaped(name: str, escape: bool) -> str:
    """A JSON key; escaped, its first character as a \\u escape (the same key)."""
    if not escape:
        return json.dumps(name)
    return f'"\\u{ord(name[0]):04x}{name[1:]}"'


@st.composite
def json_texts(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    """A JSON object written by hand: names may repeat or be escaped, values may be -0, NaN..."""
    kind = draw(st.sampled_from(["order", "cancel", "amend", "cancel_all"]))
    members = [("type", f'"{kind}"'), ("account" if kind == "cancel_all" else "order_id", '"o1"')]
    members += draw(st.lists(st.tuples(json_names, json_literals), max_size=6))
    members = draw(st.permutations(members))
    space = draw(st.sampled_from(["", " ", "\n"]))
    body = ",".join(
        f"{space}{_escaped(name, draw(st.booleans()))}{space}:{space}{value}"
        for name, value in members
    )
    return "{" + body + "}" + space, members


@settings(max_examples=3000)
@given(json_texts(), st.sampled_from([None, 3]))
def test_json_fast_path_agrees_with_the_slow_path(
    drawn: tuple[str, list[tuple[str, str]]], ts: int | None
) -> None:
    """Repeated names (escaped or not), signs and numbers the shard cannot take: the fast path
    decides nothing the slow path decides otherwise, and both follow the rules."""
    from shard.decode_json import _careful_json

    text, members = drawn
    got = decode_json(text.encode(), ts)
    assert got == _careful_json(text.encode(), ts) == decode_json(text, ts)
    names = [name for name, _ in members]
    repeated = [name for i, name in enumerate(names) if name in names[:i]]  # seen again
    if repeated:
        shown = repeated[0] if repeated[0] in [*KNOWN, "data"] else repr(repeated[0])
        rejected(got, "malformed", f"field {shown} appears")
        return
    bad_known = {
        name: value
        for name, value in members
        if name in KNOWN and value in ("-0", "NaN", "1e400", "1.5", str(2**63), "[1]")
    }
    if any(value == "NaN" for name, value in members if name not in KNOWN) or any(
        "{" in value for _, value in members
    ):
        assert isinstance(got, Invalid) and got.reason == "malformed"
    elif bad_known:
        assert isinstance(got, Invalid), got
    else:
        assert got == validate(json.loads(text), ts)


flat_names = st.sampled_from([n.encode() for n in KNOWN] + [b"other", b"\xff"])
flat_values = st.one_of(
    st.sampled_from(
        [b"order", b"cancel", b"amend", b"cancel_all", b"none", b"decrement", b"buy", b"sell",
         b"limit", b"market", b"0", b"1", b"007",
         b"-0", b"+0", b"-1", b"+1", b"-007", b"", b"9" * 19, b"x" * 64, b"\xff"]
    ),
    st.integers(0, 2**63).map(lambda n: str(n).encode()),
)  # fmt: skip


@settings(max_examples=3000)
@given(st.lists(st.tuples(flat_names, flat_values), max_size=11))
def test_flat_entries_with_repeated_names_and_signs(items: list[tuple[bytes, bytes]]) -> None:
    """The flat rules spelled out: a repeated name is malformed, a sign is an invalid field, and
    otherwise the fast path and the validator agree."""
    pairs = [x for kv in items for x in kv]
    got = decode_entry("1700000000123-4", pairs, 16_384)
    names = [name for name, _ in items]
    if len(set(names)) < len(names):
        rejected(got, "malformed", "appears")
        return
    fields = dict(items)
    assert got == decode_fields(fields, 1700000000123)
    readable = {k.decode(): v for k, v in fields.items() if k != b"\xff"}
    if b"\xff" not in fields or not isinstance(got, Invalid):
        assert got == validate(readable, 1700000000123)
    if not isinstance(got, Invalid):
        integers = ("timestamp", "price", "quantity")
        assert not any(v[:1] in (b"-", b"+") for k, v in readable.items() if k in integers)


def test_typical_messages_still_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guards must not send everyday messages the slow way (a regression here is a
    slowdown, not a wrong answer, so it is checked directly)."""
    import shard.decode_json as decode_json_module

    calls: list[object] = []
    slow = decode_json_module._slow_json

    def counting(data: bytes | str, ts: int | None) -> object:
        calls.append(data)
        return slow(data, ts)

    monkeypatch.setattr(decode_json_module, "_slow_json", counting)
    for msg in (
        {**ORDER, "timestamp": 1678886400000},
        {**ORDER, "price": 0, "order_id": "o-1"},
        {"type": "order", "order_id": "m", "side": "sell", "quantity": 3, "order_type": "market"},
        {"type": "cancel", "order_id": "o1", "timestamp": 0},
        {"type": "amend", "order_id": "o1", "quantity": 3},
    ):
        for text in (json.dumps(msg), json.dumps(msg, separators=(",", ":"))):
            assert not isinstance(decode_json(text.encode(), 5), Invalid)
            assert not isinstance(decode_json(text, 5), Invalid)
    assert decode_json('{"type":"amend","order_id":"o1","price":0}', 5) == Amend("o1", None, 0, 5)
    assert calls == []
