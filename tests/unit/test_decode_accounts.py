"""Decoding the fields of issue 17: ``account`` on order, cancel and amend, an order's ``stp``, and
the ``cancel_all`` type. Each rule in both forms (flat fields and JSON), the fast paths held to
the validator and taken by the common shapes."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shard.decode import decode_entry, decode_fields, decode_json, validate
from shard.input_rules import APPLIES, KNOWN_FIELDS
from shard.messages import STP_MODES, Amend, Cancel, CancelAll, Invalid, Order

from .test_decode import LARGEST_CANONICAL

ORDER = {"type": "order", "order_id": "o1", "side": "buy", "price": 100, "quantity": 3}


def pairs_of(msg: dict[str, object]) -> list[bytes]:
    """The flat form of a message (values as decimal ASCII; bytes kept as they are)."""
    return [x if isinstance(x, bytes) else str(x).encode() for kv in msg.items() for x in kv]


def flat_forms(msg: dict[str, object], ts: int = 5) -> list[object]:
    """A message as flat fields, through each flat entry point; all must agree."""
    pairs = pairs_of(msg)
    fields = dict(zip(pairs[::2], pairs[1::2], strict=True))
    got = [decode_entry(f"{ts}-0", pairs, 16_384), decode_fields(fields, ts)]
    got.append(validate({k.decode(): v for k, v in fields.items()}, ts))
    return got


def json_forms(msg: dict[str, object] | str, ts: int = 5) -> list[object]:
    """A message as JSON, through each JSON entry point; all must agree."""
    text = msg if isinstance(msg, str) else json.dumps(msg)
    return [
        decode_json(text.encode(), ts),
        decode_json(text, ts),
        decode_fields({b"data": text.encode()}, ts),
        decode_entry(f"{ts}-0", [b"data", text.encode()], 16_384),
    ]


def every_form(msg: dict[str, object], ts: int = 5) -> object:
    """The one answer of every entry point in both forms, and of the validator."""
    got = [*flat_forms(msg, ts), *json_forms(msg, ts), validate(msg, ts)]
    assert all(g == got[0] for g in got), got
    return got[0]


def rejected(got: object, reason: str, *words: str) -> Invalid:
    assert isinstance(got, Invalid), got
    assert got.reason == reason, got
    for word in words:
        assert word in got.detail, (word, got.detail)
    return got


# -- the good cases ------------------------------------------------------------------------------


def test_an_order_with_an_account() -> None:
    want = Order("o1", "buy", 3, 100, "limit", 5, "alice")
    assert every_form({**ORDER, "account": "alice"}) == want
    assert every_form({**ORDER, "account": "alice", "timestamp": 9}).timestamp == 9


@pytest.mark.parametrize("mode", STP_MODES)
def test_an_order_with_an_account_and_each_stp_mode(mode: str) -> None:
    msg = {**ORDER, "account": "a1", "stp": mode}
    assert every_form(msg) == Order("o1", "buy", 3, 100, "limit", 5, "a1", mode)
    market = {k: v for k, v in msg.items() if k != "price"} | {"order_type": "market"}
    assert every_form(market) == Order("o1", "buy", 3, None, "market", 5, "a1", mode)


def test_cancel_and_amend_with_an_account() -> None:
    cancel = {"type": "cancel", "order_id": "o1", "account": "bob"}
    assert every_form(cancel) == Cancel("o1", 5, "bob")
    amend = {"type": "amend", "order_id": "o1", "price": 7, "account": "bob", "timestamp": 8}
    assert every_form(amend) == Amend("o1", None, 7, 8, "bob")


def test_an_account_of_64_bytes_of_utf8_is_taken() -> None:
    assert every_form({**ORDER, "account": "x" * 64}).account == "x" * 64
    assert every_form({**ORDER, "account": "é" * 32}).account == "é" * 32
    assert every_form({"type": "cancel_all", "account": "é" * 32}) == CancelAll("é" * 32, None, 5)


def test_cancel_all() -> None:
    assert every_form({"type": "cancel_all", "account": "alice"}) == CancelAll("alice", None, 5)
    for side in ("buy", "sell"):
        msg = {"type": "cancel_all", "account": "alice", "side": side, "timestamp": 11}
        assert every_form(msg) == CancelAll("alice", side, 11)


def test_a_cancel_all_takes_its_timestamp_from_the_entry() -> None:
    pairs = [b"type", b"cancel_all", b"account", b"alice"]
    assert decode_entry("1700000000123-4", pairs, 16_384) == CancelAll("alice", None, 1700000000123)
    got = rejected(decode_json('{"type":"cancel_all","account":"a"}'), "missing_field", "timestamp")
    assert got.order_id is None


def test_an_explicit_null_counts_as_absent() -> None:
    text = json.dumps({**ORDER, "account": None, "stp": None})
    assert decode_json(text, 5) == Order("o1", "buy", 3, 100, "limit", 5)
    assert decode_json(json.dumps({**ORDER, "account": "a", "stp": None}), 5) == Order(
        "o1", "buy", 3, 100, "limit", 5, "a"
    )
    text = json.dumps({"type": "cancel_all", "account": "a", "side": None, "order_id": None})
    assert decode_json(text, 5) == CancelAll("a", None, 5)


# -- account -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base"),
    [
        ORDER,
        {"type": "cancel", "order_id": "o1"},
        {"type": "amend", "order_id": "o1", "quantity": 2},
        {"type": "cancel_all"},
    ],
)
@pytest.mark.parametrize(
    ("account", "words"),
    [
        ("", ["account must not be empty"]),
        ("x" * 65, ["account must be at most 64 bytes", "got 65", "xxx"]),
        ("é" * 33, ["account must be at most 64 bytes", "got 66"]),
    ],
)
def test_a_bad_account_is_refused_in_both_forms(
    base: dict[str, object], account: str, words: list[str]
) -> None:
    got = every_form({**base, "account": account})
    rejected(got, "invalid_field", *words)
    assert got.order_id == (None if base["type"] == "cancel_all" else "o1")


@pytest.mark.parametrize("kind", ["order", "cancel", "amend", "cancel_all"])
def test_an_account_that_is_not_utf8_is_refused(kind: str) -> None:
    msg = {**ORDER, "type": kind} if kind == "order" else {"type": kind, "order_id": "o1"}
    msg |= {"quantity": 2} if kind == "amend" else {}
    if kind == "cancel_all":
        del msg["order_id"]
    for got in flat_forms({**msg, "account": b"ab\xff"}):
        rejected(got, "invalid_field", "account", "not valid UTF-8", "ab\\xff")
    text = json.dumps({**msg, "account": "@"}).replace('"@"', '"a\\ud800"')
    for got in json_forms(text):
        rejected(got, "invalid_field", "account", "not valid UTF-8")


def test_an_account_must_be_a_json_string() -> None:
    for value in (5, True, ["a"], {"a": 1}):
        for got in json_forms({**ORDER, "account": value}):
            rejected(got, "invalid_field", "account must be a string")
    for got in json_forms(json.dumps({**ORDER, "account": "@"}).replace('"@"', "NaN")):
        rejected(got, "invalid_field", "account must be a string", "NaN")


def test_an_account_given_twice_is_malformed() -> None:
    pairs = [*pairs_of({**ORDER, "account": "a"}), b"account", b"a"]
    rejected(decode_entry("5-0", pairs, 16_384), "malformed", "field account appears twice")
    text = json.dumps({**ORDER, "account": "a"})[:-1] + ', "\\u0061ccount": "b"}'
    for got in json_forms(text):
        rejected(got, "malformed", "field account appears twice")


def test_an_account_beside_a_data_field_is_two_forms() -> None:
    fields = {b"data": json.dumps(ORDER).encode(), b"account": b"alice"}
    rejected(decode_fields(fields, 5), "malformed", "both a data field and flat fields", "account")


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        ({**ORDER, "side": "up"}, "invalid_field"),
        ({**ORDER, "quantity": None, "order_type": "limit"}, "missing_field"),
        ({**ORDER, "stp": "sometimes"}, "invalid_field"),
        ({"type": "cancel", "order_id": "o1", "side": "buy"}, "invalid_field"),
        ({"type": "amend", "order_id": "o1"}, "missing_field"),
        ({"type": "cancel_all", "side": "both"}, "invalid_field"),
    ],
)
def test_a_refused_input_keeps_its_valid_account_for_its_event(
    msg: dict[str, object], reason: str
) -> None:
    """So that its owner (a gateway's caller, an account's own feed) sees the refusal."""
    msg = {k: v for k, v in {**msg, "account": "alice"}.items() if v is not None}
    got = every_form(msg)
    assert rejected(got, reason).account == "alice"


def test_a_refused_input_without_a_valid_account_carries_none() -> None:
    for account in ("", "x" * 65):
        got = every_form({**ORDER, "side": "up", "account": account})
        assert rejected(got, "invalid_field", "account").account is None
    assert rejected(every_form({**ORDER, "side": "up"}), "invalid_field").account is None
    for got in json_forms({**ORDER, "account": 5}):
        assert rejected(got, "invalid_field").account is None


def test_a_message_without_a_timestamp_to_take_keeps_its_account() -> None:
    msg = {**ORDER, "account": "alice"}
    for got in (decode_json(json.dumps(msg), None), validate(msg, None)):
        assert rejected(got, "missing_field", "timestamp is missing").account == "alice"


# -- stp -----------------------------------------------------------------------------------------


def test_an_unknown_stp_is_refused_naming_the_modes() -> None:
    for value in ("cancel_oldest", "CANCEL_TAKER", ""):
        got = every_form({**ORDER, "account": "a", "stp": value})
        rejected(got, "invalid_field", "stp must be one of", ", ".join(STP_MODES), repr(value))
        assert got.order_id == "o1"
    for got in flat_forms({**ORDER, "account": "a", "stp": b"\xff"}):
        rejected(got, "invalid_field", "stp", "not valid UTF-8")
    for got in json_forms({**ORDER, "account": "a", "stp": 1}):
        rejected(got, "invalid_field", "stp must be a string")


def test_stp_needs_an_account() -> None:
    for mode in STP_MODES:
        got = every_form({**ORDER, "stp": mode})
        rejected(got, "invalid_field", "stp needs an account", repr(mode))
        assert got.order_id == "o1"


@pytest.mark.parametrize(
    "base",
    [{"type": "cancel", "order_id": "o1"}, {"type": "amend", "order_id": "o1", "quantity": 2}],
)
def test_stp_does_not_apply_to_cancel_and_amend(base: dict[str, object]) -> None:
    for msg in ({**base, "stp": "none"}, {**base, "account": "a", "stp": "none"}):
        rejected(every_form(msg), "invalid_field", f"field stp does not apply to {base['type']}")


# -- cancel_all ----------------------------------------------------------------------------------


def test_cancel_all_needs_an_account() -> None:
    for msg in ({"type": "cancel_all"}, {"type": "cancel_all", "side": "buy", "timestamp": 1}):
        got = rejected(every_form(msg), "missing_field", "account is missing", "cancel_all")
        assert got.order_id is None
    assert decode_json('{"type":"cancel_all","account":null}', 5).reason == "missing_field"


@pytest.mark.parametrize(
    ("field", "value"),
    [("order_id", "o1"), ("price", 100), ("quantity", 3), ("order_type", "limit"), ("stp", "none")],
)
def test_a_field_that_does_not_apply_to_cancel_all(field: str, value: object) -> None:
    msg = {"type": "cancel_all", "account": "alice", field: value}
    got = rejected(every_form(msg), "invalid_field", f"field {field} does not apply to cancel_all")
    assert got.order_id is None


def test_cancel_all_with_a_bad_side() -> None:
    msg = {"type": "cancel_all", "account": "alice", "side": "both"}
    rejected(every_form(msg), "invalid_field", "side must be buy or sell", "'both'")


def test_an_unknown_type_names_cancel_all_among_the_types() -> None:
    got = every_form({"type": "cancel-all", "account": "a"})
    rejected(got, "unknown_type", "order, cancel, amend or cancel_all", "'cancel-all'")


def test_the_invalid_of_a_cancel_all_carries_no_order_id() -> None:
    """Whatever makes a cancel_all fail, its event names no order (it has none)."""
    text = '{"type":"cancel_all","account":"a","order_id":"o1","x":1,"x":2}'
    assert rejected(decode_json(text, 5), "malformed", "field 'x' appears twice").order_id is None
    pairs = [b"type", b"cancel_all", b"account", b"a", b"order_id", b"o1", b"x", b"1", b"x", b"2"]
    assert rejected(decode_entry("5-0", pairs, 16_384), "malformed").order_id is None
    fields = {b"data": b"{}", b"type": b"cancel_all", b"order_id": b"o1"}
    assert rejected(decode_fields(fields, 5), "malformed").order_id is None
    text = '{"type":"cancel_all","account":"a","order_id":"o1","note":NaN}'
    assert rejected(decode_json(text, 5), "malformed", "NaN").order_id is None


# -- the fast paths ------------------------------------------------------------------------------


OWNED = [
    {**ORDER, "account": "alice"},
    {**ORDER, "account": "alice", "stp": "decrement", "timestamp": 7},
    {**ORDER, "stp": "cancel_both", "account": "alice", "order_type": "ioc"},
    {"type": "order", "order_id": "m", "side": "sell", "quantity": 3, "order_type": "market",
     "account": "bob", "stp": "none"},
    {"type": "cancel", "account": "alice", "order_id": "o1"},
    {"type": "amend", "order_id": "o1", "quantity": 3, "account": "alice", "timestamp": 0},
    {"type": "amend", "order_id": "o1", "price": 0, "account": "a-1"},
]  # fmt: skip


@pytest.mark.parametrize("msg", OWNED)
def test_messages_with_an_account_take_the_fast_paths(
    msg: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accounts on half the orders must not send them through the validator (a regression here is
    a slowdown, not a wrong answer, so it is checked directly)."""
    import shard.decode_json as decode_json_module
    from shard.decode import _fast_pairs

    want = validate(msg, 5)
    assert not isinstance(want, Invalid)
    pairs = pairs_of(msg)
    assert _fast_pairs(pairs, 5) == want
    assert decode_entry("5-0", pairs, 16_384) == want

    def no_slow_path(data: bytes | str, ts: int | None) -> object:
        raise AssertionError(data)

    monkeypatch.setattr(decode_json_module, "_slow_json", no_slow_path)
    for text in (json.dumps(msg), json.dumps(msg, separators=(",", ":"))):
        assert decode_json(text.encode(), 5) == want
        assert decode_json(text, 5) == want


def test_the_fast_paths_leave_the_owners_rules_to_the_validator() -> None:
    """What the typed decoder and the flat layouts would take too kindly goes the slow way."""
    from shard.decode import _fast_pairs

    for msg in (
        {**ORDER, "stp": "none"},  # stp without an account
        {**ORDER, "account": "é" * 33},  # 33 characters, 66 bytes
        {**ORDER, "account": "x" * 65},
        {**ORDER, "account": ""},
        {**ORDER, "account": "a", "stp": "sometimes"},
        {"type": "cancel", "order_id": "o1", "stp": "none", "account": "a"},
        {"type": "cancel_all", "account": "a"},
    ):
        want = validate(msg, 5)
        assert decode_json(json.dumps(msg), 5) == want
        assert _fast_pairs(pairs_of(msg), 5) in (None, want)
        assert decode_entry("5-0", pairs_of(msg), 16_384) == want
    assert decode_json('{"type":"order","order_id":"o1","side":"buy","price":1,"quantity":1,'
                       '"account":"a:b"}', 5).account == "a:b"  # fmt: skip


def test_the_largest_owned_entry_fits_the_fast_path_bound() -> None:
    from shard.decode import FAST_MAX_BYTES, _fast_pairs

    fields = {
        **LARGEST_CANONICAL,
        b"account": b"a" * 64,
        b"stp": max(STP_MODES, key=len).encode(),
    }
    pairs = [x for kv in fields.items() for x in kv]
    assert _fast_pairs(pairs, None) is not None
    assert sum(map(len, pairs)) <= FAST_MAX_BYTES
    fields[b"account"] += b"a"  # one byte more: no longer the fast path's
    assert _fast_pairs([x for kv in fields.items() for x in kv], None) is None


def test_the_layouts_of_names_with_an_account_are_bounded() -> None:
    """The layout cache holds a capped number of orders of names with an account: past the cap
    an entry still decodes alike, its layout worked out anew."""
    from shard.decode import _LAYOUTS, _OWNED_NAMES, OWNED_LAYOUTS_MAX

    saved, saved_layouts = set(_OWNED_NAMES), dict(_LAYOUTS)
    try:
        fields = {b"type": b"order", b"order_id": b"o1", b"side": b"sell", b"price": b"9",
                  b"quantity": b"2", b"timestamp": b"7", b"account": b"a"}  # fmt: skip
        want = Order("o1", "sell", 2, 9, "limit", 7, "a")
        for n, names in enumerate(itertools.permutations(fields)):
            if n > OWNED_LAYOUTS_MAX + 100:
                break
            pairs = [x for name in names for x in (name, fields[name])]
            assert decode_entry("5-0", pairs, 16_384) == want
        assert len(_OWNED_NAMES) == OWNED_LAYOUTS_MAX
        owned_names = {names for names in _LAYOUTS if not {b"account", b"stp"}.isdisjoint(names)}
        assert owned_names == _OWNED_NAMES
    finally:
        _OWNED_NAMES.clear()
        _OWNED_NAMES.update(saved)
        _LAYOUTS.clear()
        _LAYOUTS.update(saved_layouts)


_GOOD: dict[str, list[object]] = {
    "order_id": ["o1", "x" * 64, "é"],
    "account": ["a", "x" * 64, "é" * 32, "a:b"],
    "stp": list(STP_MODES),
    "side": ["buy", "sell"],
    "order_type": ["limit", "market", "ioc", "fok", "post_only"],
    "price": [0, 7, 2**63 - 1],
    "quantity": [1, 3],
    "timestamp": [0, 9],
}
_BAD: dict[str, list[object]] = {
    "order_id": ["", "x" * 65],
    "account": ["", "x" * 65, "é" * 33, 5],
    "stp": ["x", "", "NONE"],
    "side": ["x"],
    "order_type": ["stop"],
    "price": [2**63, -1],
    "quantity": [0],
    "timestamp": [-1],
}


@st.composite
def owned_messages(draw: st.DrawFn) -> dict[str, object]:
    """Messages near the owned shapes: the fields of their type each there or not (an account
    mostly there), in any order, a value now and then past its rule, a field now and then that
    does not apply."""
    kind = draw(st.sampled_from(["order", "order", "order", "cancel", "amend", "cancel_all"]))
    names = [n for n in sorted(APPLIES[kind] - {"type"}) if draw(st.integers(0, 9)) < 9]
    if draw(st.integers(0, 9)) == 0:
        names.append(draw(st.sampled_from(sorted(KNOWN_FIELDS - {"type"}))))
    msg: dict[str, object] = {"type": kind}
    for name in draw(st.permutations(names)):
        bad = draw(st.integers(0, 19)) == 0
        msg[name] = draw(st.sampled_from((_BAD if bad else _GOOD)[name]))
    return dict(draw(st.permutations(list(msg.items()))))


@settings(max_examples=2000)
@given(owned_messages(), st.sampled_from([None, 5]))
def test_the_fast_paths_agree_with_the_validator_on_owned_messages(
    msg: dict[str, object], ts: int | None
) -> None:
    from shard.decode import _fast_pairs

    pairs = pairs_of(msg)
    want = validate(dict(zip([p.decode() for p in pairs[::2]], pairs[1::2], strict=True)), ts)
    fast = _fast_pairs(pairs, ts)
    assert fast is None or fast == want
    if ts is not None:  # an entry ID always gives a default
        assert decode_entry(f"{ts}-0", pairs, 16_384) == want
    text = json.dumps(msg)
    want = validate(msg, ts)
    assert decode_json(text, ts) == want
    assert decode_json(text.encode(), ts) == want
