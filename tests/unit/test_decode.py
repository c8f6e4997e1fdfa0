"""Decoding: both input forms, every reject reason, generated garbage, fast path == slow path.

The fields of issue 17 (account, stp, cancel_all) have their own rules in test_decode_accounts.py;
the generated inputs here carry them too."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shard.decode import decode_fields, decode_json, validate
from shard.messages import STP_MODES, Amend, Cancel, CancelAll, Invalid, Order

from ..seed import SEED as SEED_MESSAGES

SEED = SEED_MESSAGES[0]


def flat(msg: dict) -> dict[bytes, bytes]:
    """The flat stream form of a message: every value as decimal ASCII bytes."""
    return {k.encode(): str(v).encode() for k, v in msg.items()}


def both_forms(msg: dict, default_ts: int | None = None):
    """Decode a message given as JSON, as a data field and as flat fields; all must agree."""
    as_json = decode_json(json.dumps(msg).encode(), default_ts)
    as_data = decode_fields({b"data": json.dumps(msg).encode()}, default_ts)
    as_flat = decode_fields(flat(msg), default_ts)
    assert as_json == as_data
    if isinstance(as_json, Invalid):
        assert isinstance(as_flat, Invalid) and as_flat.reason == as_json.reason
    else:
        assert as_flat == as_json
    return as_json


def test_seed_order_in_every_form() -> None:
    assert both_forms(SEED) == Order("order1", "buy", 10, 1000000000, "limit", 1678886400000)


def test_cancel_and_amend() -> None:
    assert both_forms({"type": "cancel", "order_id": "x", "timestamp": 5}) == Cancel("x", 5)
    assert both_forms({"type": "amend", "order_id": "x", "timestamp": 5, "price": 0}) == Amend(
        "x", None, 0, 5
    )


def test_every_order_type() -> None:
    for kind in ("limit", "ioc", "fok", "post_only"):
        assert both_forms({**SEED, "order_type": kind}).order_type == kind
    market = {k: v for k, v in SEED.items() if k != "price"} | {"order_type": "market"}
    assert both_forms(market) == Order("order1", "buy", 10, None, "market", 1678886400000)


def test_timestamp_defaults_to_entry_time() -> None:
    msg = {k: v for k, v in SEED.items() if k != "timestamp"}
    assert both_forms(msg, default_ts=42).timestamp == 42
    missing = both_forms(msg)
    assert (missing.reason, missing.order_id) == ("missing_field", "order1")


def test_unknown_field_names_are_ignored() -> None:
    assert both_forms({**SEED, "client_tag": "abc"}) == both_forms(SEED)


def test_null_counts_as_absent() -> None:
    assert decode_json(json.dumps({**SEED, "timestamp": None}).encode(), 9).timestamp == 9


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        ({"quantity": "10.5"}, "invalid_field", ["quantity", "10.5"]),
        ({"quantity": "1e9"}, "invalid_field", ["quantity", "1e9"]),
        ({"quantity": 10.5}, "invalid_field", ["quantity", "10.5"]),
        ({"quantity": 0}, "invalid_field", ["quantity", "0"]),
        ({"quantity": -3}, "invalid_field", ["quantity", "-3"]),
        ({"quantity": " 3"}, "invalid_field", ["quantity"]),
        ({"quantity": "+3"}, "invalid_field", ["quantity", "+3"]),
        ({"quantity": "1_000"}, "invalid_field", ["quantity", "1_000"]),
        ({"quantity": "٣"}, "invalid_field", ["quantity"]),
        ({"quantity": True}, "invalid_field", ["quantity", "true"]),
        ({"quantity": 2**63}, "invalid_field", ["quantity", "64-bit", "9223372036854775808"]),
        ({"price": -1}, "invalid_field", ["price", "-1"]),
        ({"price": str(2**64)}, "invalid_field", ["price", "64-bit"]),
        ({"timestamp": "soon"}, "invalid_field", ["timestamp", "soon"]),
        ({"side": "BUY"}, "invalid_field", ["side", "BUY"]),
        ({"side": 1}, "invalid_field", ["side", "1"]),
        ({"order_type": "stop"}, "invalid_field", ["order_type", "stop"]),
        ({"order_type": "market"}, "invalid_field", ["market", "price", "1000000000"]),
        ({"type": "modify"}, "unknown_type", ["type", "modify"]),
        ({"type": 7}, "invalid_field", ["type", "7"]),
        ({"order_id": ""}, "invalid_field", ["order_id", "empty"]),
        ({"order_id": "x" * 65}, "invalid_field", ["order_id", "64 bytes", "65"]),
        ({"order_id": "é" * 33}, "invalid_field", ["order_id", "64 bytes", "66"]),
        ({"order_id": 5}, "invalid_field", ["order_id", "5"]),
        ({"side": None}, "missing_field", ["side"]),
        ({"quantity": None}, "missing_field", ["quantity"]),
        ({"price": None}, "missing_field", ["price", "limit"]),
        ({"order_id": None}, "missing_field", ["order_id"]),
        ({"type": None}, "missing_field", ["type"]),
    ],
)
def test_order_rejections(change: dict, reason: str, words: list[str]) -> None:
    msg = {k: v for k, v in {**SEED, **change}.items() if v is not None}
    got = decode_json(json.dumps(msg).encode())
    assert isinstance(got, Invalid), got
    assert got.reason == reason, got
    for word in words:
        assert word in got.detail, (word, got.detail)


def test_field_that_does_not_apply() -> None:
    for msg in (
        {"type": "cancel", "order_id": "a", "timestamp": 1, "price": 5},
        {"type": "amend", "order_id": "a", "timestamp": 1, "side": "buy", "quantity": 1},
    ):
        got = both_forms(msg)
        assert got.reason == "invalid_field" and "does not apply" in got.detail


def test_amend_needs_quantity_or_price() -> None:
    got = both_forms({"type": "amend", "order_id": "a", "timestamp": 1})
    assert (got.reason, got.order_id) == ("missing_field", "a")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"not json", ["not valid JSON", "not json"]),
        (b"[1, 2]", ["JSON object", "[1,2]"]),
        (b'"order"', ["JSON object"]),
        (b"", ["not valid JSON"]),
        (b'{"order_id": "a", "type": "order"', ["not valid JSON"]),
        (b'{"side": "buy\xff"}', ["not valid UTF-8"]),
        (b"[" * 100_000, ["nested too deeply"]),
        (b'{"a":' * 100_000, ["nested too deeply"]),
        (b'{"type": "order", "quantity": 1e999', ["not valid JSON"]),
        (b"\xef\xbb\xbf{}", ["not valid JSON"]),
        (b'{"colour": "blue"}', ["no field the shard knows", "colour"]),
        (b"{}", ["no field the shard knows"]),
    ],
)
def test_malformed_json(data: bytes, words: list[str]) -> None:
    got = decode_json(data)
    assert got.reason == "malformed", got
    for word in words:
        assert word in got.detail, (word, got.detail)


def test_flat_form_oddities() -> None:
    bad_utf8 = decode_fields({**flat(SEED), b"order_id": b"\xffabc"}, None)
    assert (bad_utf8.reason, bad_utf8.order_id) == ("invalid_field", None)
    assert "UTF-8" in bad_utf8.detail and "xff" in bad_utf8.detail
    unreadable_name = decode_fields({**flat(SEED), b"\xff": b"1"}, None)
    assert isinstance(unreadable_name, Order)
    both = decode_fields({b"data": json.dumps(SEED).encode(), b"order_id": b"order1"}, None)
    assert (both.reason, both.order_id) == ("malformed", "order1")
    nothing = decode_fields({}, None)
    assert nothing.reason == "malformed"
    assert decode_fields({k.decode(): v.decode() for k, v in flat(SEED).items()}, None) == (
        decode_fields(flat(SEED), None)
    )


def test_details_are_short() -> None:
    got = decode_json(json.dumps({**SEED, "quantity": "9" * 5000}).encode())
    assert got.reason == "invalid_field" and len(got.detail) < 200


# -- generated garbage ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
field_names = st.sampled_from(
    ["type", "order_id", "timestamp", "side", "order_type", "price", "quantity", "account", "stp",
     "data", "x"]
)  # fmt: skip
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["order", "cancel", "amend", "cancel_all", "other", ""])
        | json_values,
        "order_id": st.text(max_size=70) | json_values,
        "timestamp": st.integers(-5, 2**64) | json_values,
        "side": st.sampled_from(["buy", "sell", "Buy"]) | json_values,
        "order_type": st.sampled_from(["limit", "market", "ioc", "fok", "post_only", "x"]),
        "price": st.integers(-5, 2**64) | st.text(max_size=6) | json_values,
        "quantity": st.integers(-5, 2**64) | st.text(max_size=6) | json_values,
        "account": st.sampled_from(["a", "alice", "x" * 64, "x" * 65, "é" * 32, "é" * 33, ""])
        | st.text(max_size=70)
        | json_values,
        "stp": st.sampled_from([*STP_MODES, "x", ""]) | json_values,
    },
)


@settings(max_examples=400)
@given(near_valid, st.data())
def test_corrupted_json_never_raises(msg: dict, data: st.DataObject) -> None:
    """Valid-looking JSON with a few bytes overwritten by arbitrary ones."""
    raw = bytearray(msgspec.json.encode(msg))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    got = decode_json(bytes(raw), 1)
    assert isinstance(got, Order | Cancel | Amend | CancelAll | Invalid)
    if isinstance(got, Invalid):
        assert got.reason and got.detail


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_garbage_bytes_never_raise(data: bytes) -> None:
    assert isinstance(decode_json(data, 1), Order | Cancel | Amend | CancelAll | Invalid)
    assert isinstance(
        decode_fields({b"data": data}, 1), Order | Cancel | Amend | CancelAll | Invalid
    )


@settings(max_examples=400)
@given(
    st.dictionaries(
        st.binary(max_size=10) | field_names.map(str.encode), st.binary(max_size=30), max_size=8
    )
)
def test_garbage_flat_entries_never_raise(fields: dict[bytes, bytes]) -> None:
    got = decode_fields(fields, 1)
    assert isinstance(got, Order | Cancel | Amend | CancelAll | Invalid)
    if isinstance(got, Invalid):
        assert got.reason and got.detail


@settings(max_examples=1000)
@given(near_valid)
def test_fast_path_agrees_with_validator(msg: dict) -> None:
    """Whatever the typed decoder accepts, the hand-written rules accept identically."""
    data = msgspec.json.encode(msg)
    got = decode_json(data, 3)
    assert got == validate(msgspec.json.decode(data), 3)  # (inf and nan encode as null)
    if not isinstance(got, Invalid):
        assert decode_fields(flat({k: v for k, v in msg.items() if v is not None}), 3) == got


flat_values = st.one_of(
    st.sampled_from(
        [
            b"order",
            b"cancel",
            b"amend",
            b"cancel_all",
            b"cancel_taker",
            b"decrement",
            b"none",
            b"buy",
            b"sell",
            b"limit",
            b"market",
            b"ioc",
            b"fok",
            b"post_only",
            b"0",
            b"1",
            b"007",
            b"-1",
            b"-0",
            b"+0",
            b"",
            b"9" * 18,
            b"9" * 19,
            b"\xc3\xa9",
            b"x" * 64,
            b"x" * 65,
            b"1.5",
            b" 1",
        ]
    ),
    st.integers(0, 2**64).map(lambda n: str(n).encode()),
    st.binary(max_size=6),
)
flat_names = st.sampled_from(
    [b"type", b"order_id", b"timestamp", b"side", b"order_type", b"price", b"quantity",
     b"account", b"stp", b"other"]
)  # fmt: skip
flat_entries = st.dictionaries(flat_names, flat_values, max_size=10)


@settings(max_examples=3000)
@given(flat_entries, st.sampled_from([None, 0, 17]))
def test_flat_fast_path_agrees_with_validator(fields: dict[bytes, bytes], ts: int | None) -> None:
    from shard.decode import _fast_pairs, decode_entry

    pairs = [x for kv in fields.items() for x in kv]
    fast = _fast_pairs(pairs, ts)
    slow = validate({k.decode(): v for k, v in fields.items()}, ts)
    if fast is not None:
        assert fast == slow
    assert decode_fields(fields, ts) == (fast or slow)
    if ts is not None:  # an entry ID always gives a default
        assert decode_entry(f"{ts}-0", pairs, 1 << 20) == decode_fields(fields, ts)


@pytest.mark.parametrize("name", [b"timestamp", b"price", b"quantity"])
@pytest.mark.parametrize(
    "value",
    [b"0", b"007", b"9" * 18, b"9" * 19, str(2**63 - 1).encode(), str(2**63).encode(),
     b"-1", b"+1", b"-0", b"+0", b"-007", b" 1", b"1_0", b"1.0", b"\xd9\xa1", b""],
)  # fmt: skip
@pytest.mark.parametrize("kind", [b"order", b"amend"])
@pytest.mark.parametrize("owner", [{}, {b"account": b"a1"}, {b"stp": b"none", b"account": b"a1"}])
def test_integer_bounds_decode_alike_on_both_paths(
    kind: bytes, name: bytes, value: bytes, owner: dict[bytes, bytes]
) -> None:
    """Each integer field at and past its bounds, in an otherwise canonical entry (with an
    account and stp too: the owned fast path)."""
    from shard.decode import _fast_pairs, decode_entry

    fields = {b"type": kind, b"order_id": b"o1", **owner, b"timestamp": b"5", b"price": b"100"}
    fields |= {b"side": b"buy", b"quantity": b"3"} if kind == b"order" else {}
    fields[name] = value
    pairs = [x for kv in fields.items() for x in kv]
    slow = validate({k.decode(): v for k, v in fields.items()}, None)
    assert decode_entry("1-0", pairs, 1 << 20) == slow  # the timestamp field is present
    fast = _fast_pairs(pairs, None)
    assert fast is None or fast == slow


def _entry_reference(entry_id: str, pairs: list[bytes], max_bytes: int) -> object:
    """The daemon's rule spelled out the slow way: measure, refuse a repeated name, then decode
    with the ID's time."""
    size = sum(map(len, pairs))
    if size > max_bytes:
        return ("oversize", size)
    names = pairs[0 : len(pairs) & ~1 : 2]
    repeated = [name for i, name in enumerate(names) if name in names[:i]]  # seen again
    if repeated:
        return ("malformed", repeated[0])
    return decode_fields(dict(zip(names, pairs[1::2], strict=True)), int(entry_id.split("-")[0]))


@settings(max_examples=3000)
@given(
    st.lists(st.tuples(flat_names, flat_values), max_size=9),
    st.sampled_from([b"", b"x" * 300]),
    st.sampled_from([0, 1, -1]),
    st.sampled_from([16, 200, 256, 16_384]),
)
def test_decode_entry_measures_and_decodes_like_the_slow_way(
    items: list[tuple[bytes, bytes]], padding: bytes, where: int, max_bytes: int
) -> None:
    """Names may repeat and values may be long; the fast path must never let an oversize entry
    through, nor decode differently."""
    from shard.decode import decode_entry

    pairs = [x for kv in items for x in kv]
    if padding and pairs:
        pairs[where] += padding  # a name or a value, maybe one a repeated name overrides
    got = decode_entry("1700000000123-4", pairs, max_bytes)
    want = _entry_reference("1700000000123-4", pairs, max_bytes)
    if isinstance(want, tuple) and want[0] == "oversize":
        assert isinstance(got, Invalid) and got.reason == "oversize"
        assert f"is {want[1]} bytes" in got.detail and str(max_bytes) in got.detail
    elif isinstance(want, tuple):
        assert isinstance(got, Invalid) and got.reason == "malformed"
        name = want[1].decode()
        shown = name if name != "other" else repr(name)  # known names bare, others quoted
        assert f"field {shown} appears" in got.detail
    else:
        assert got == want


def test_a_repeated_name_cannot_smuggle_an_oversize_entry_through_the_fast_path() -> None:
    from shard.decode import decode_entry

    pairs = [b"type", b"x" * 20_000, b"type", b"cancel", b"order_id", b"o1"]
    got = decode_entry("5-0", pairs, 16_384)
    assert isinstance(got, Invalid) and got.reason == "oversize"
    assert decode_entry("5-0", pairs[2:], 16_384) == Cancel("o1", 5)


LARGEST_CANONICAL = {
    b"type": b"order",
    b"order_id": b"x" * 64,
    b"timestamp": str(2**63 - 1).encode(),
    b"side": b"sell",
    b"order_type": b"post_only",
    b"price": str(2**63 - 1).encode(),
    b"quantity": str(2**63 - 1).encode(),
}
"""The largest entry of the canonical layout: every value at its longest."""


def test_the_largest_canonical_entry_fits_the_fast_path_bound() -> None:
    from shard.decode import FAST_MAX_BYTES, _fast_pairs

    fields = dict(LARGEST_CANONICAL)
    assert _fast_pairs([x for kv in fields.items() for x in kv], None) is not None
    assert sum(len(k) + len(v) for k, v in fields.items()) <= FAST_MAX_BYTES
    fields[b"order_id"] += b"x"  # one byte more: no longer the fast path's
    assert _fast_pairs([x for kv in fields.items() for x in kv], None) is None


def test_only_known_names_are_remembered_as_layouts() -> None:
    """Hostile field names must not grow the layout cache: only orders of known names (a
    bounded set) are kept, and an entry with others still decodes the slow way (where a
    repeated name is refused)."""
    from shard.decode import _LAYOUTS, decode_entry

    assert decode_entry("5-0", [b"type", b"cancel", b"order_id", b"o1"], 16_384) == Cancel("o1", 5)
    before = len(_LAYOUTS)  # that order of names is remembered; the slow path below meets it
    for i in range(1000):
        pairs = [b"type", b"cancel", b"order_id", b"o1", f"x{i}".encode(), b"1"]
        assert decode_entry("5-0", pairs, 16_384) == Cancel("o1", 5)
        repeated = [b"type", b"cancel", b"order_id", b"o1"] + [b"type", b"cancel"] * (i + 1)
        got = decode_entry("5-0", repeated, 16_384)
        assert isinstance(got, Invalid) and got.reason == "malformed"
    assert len(_LAYOUTS) == before
    swapped = [b"order_id", b"o1", b"type", b"cancel", b"timestamp", b"7"]
    assert decode_entry("5-0", swapped, 16_384) == Cancel("o1", 7)
    assert tuple(swapped[::2]) in _LAYOUTS
