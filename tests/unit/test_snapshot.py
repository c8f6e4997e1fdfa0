"""Snapshot/restore: a restored engine continues exactly like the original, with or without
accounts; a sliced snapshot is the whole one; the format of a book without accounts."""

from __future__ import annotations

import random
from itertools import pairwise

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shard.decode import decode_json
from shard.engine import Engine
from shard.fees import Fees
from shard.messages import INT64_MAX, STP_MODES, Input, Invalid, Order, Trade
from shard.workload import resting_orders, standard_mix

ACCOUNTS = 3
FEES = Fees(-50, 200)
WITH_AND_WITHOUT = pytest.mark.parametrize("accounts", [False, True], ids=["plain", "accounts"])


def mix(n: int, seed: int, accounts: bool = False) -> list[Input]:
    """The standard mix of ``n`` messages, decoded. With ``accounts``: its accounts (three, on
    half the orders, some with an stp mode; cancels and amends name the owner), except one
    cancel or amend in ten, which names a random account (mostly another: unknown_order), and
    about one input in thirty more, a cancel_all of an account (of one side, half the time)."""
    if not accounts:
        return [decode_json(msgspec.json.encode(m)) for m in standard_mix(n, seed)]
    rng = random.Random(seed)
    out: list[Input] = []
    for m in standard_mix(n, seed, accounts=ACCOUNTS):
        if m["type"] != "order" and rng.random() < 0.1:
            m["account"] = f"acct{rng.randrange(ACCOUNTS)}"
        out.append(decode_json(msgspec.json.encode(m)))
        if rng.random() < 1 / 30:
            mass = {"type": "cancel_all", "account": f"acct{rng.randrange(ACCOUNTS)}"}
            if rng.random() < 0.5:
                mass["side"] = rng.choice(("buy", "sell"))
            mass["timestamp"] = m["timestamp"]
            out.append(decode_json(msgspec.json.encode(mass)))
    assert not any(type(msg) is Invalid for msg in out), "the generator makes only valid inputs"
    return out


def engine_for(accounts: bool, seed: int, snapshot: bytes | None = None) -> Engine:
    """A new (or restored) engine; with accounts, under fees and an stp_default the seed picks."""
    fees, stp_default = (FEES, STP_MODES[seed % 5]) if accounts else (None, "cancel_taker")
    if snapshot is None:
        return Engine(fees=fees, stp_default=stp_default)
    return Engine.restore(snapshot, fees=fees, stp_default=stp_default)


def run(engine: Engine, msgs: list[Input], start: int = 0) -> bytes:
    """Apply messages; everything published (trades, order events, the input's own event),
    encoded, as one byte string."""
    out: list[object] = []
    for n, msg in enumerate(msgs, start):
        trades: list[Trade] = []
        event = engine.apply(msg, f"7-{n}", trades)
        out.extend(trades)
        out.extend(engine.order_events)
        engine.order_events.clear()
        out.append(event)
    return msgspec.json.encode(out)


def owners(engine: Engine) -> tuple[object, ...]:
    """The account index as state: who owns what, the modes given, each account's orders."""
    index = engine.book.owners
    return (
        {o: a.name for o, a in index.of.items()},
        {o: index.mode_of(o) for o in index.of},
        {name: set(a.orders) for name, a in index.accounts.items()},
    )


@WITH_AND_WITHOUT
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(0, 600), cut=st.floats(0, 1))
def test_restored_engine_continues_identically(
    accounts: bool, seed: int, n: int, cut: float
) -> None:
    msgs = mix(n, seed, accounts)
    at = int(cut * len(msgs))
    original = engine_for(accounts, seed)
    run(original, msgs[:at])
    restored = engine_for(accounts, seed, original.snapshot())
    restored.book.check()
    assert restored.digest() == original.digest()
    assert restored.snapshot() == original.snapshot()
    assert owners(restored) == owners(original)
    assert run(restored, msgs[at:], at) == run(original, msgs[at:], at)
    assert restored.snapshot() == original.snapshot()
    assert owners(restored) == owners(original)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_restored_engine_with_accounts_continues_identically_on_a_long_stream(seed: int) -> None:
    """Hypothesis draws mostly short streams: here 3000 inputs, restored at four points, each
    restored engine continuing to the end exactly like the original."""
    msgs = mix(3000, seed, accounts=True)
    original = engine_for(True, seed)
    cuts = [0, 500, 1500, 2900, len(msgs)]
    published = [msgspec.json.decode(run(original, msgs[a:b], a)) for a, b in pairwise(cuts)]
    for i, at in enumerate(cuts[1:-1], 1):
        before = engine_for(True, seed)
        run(before, msgs[:at])
        restored = engine_for(True, seed, before.snapshot())
        assert owners(restored) == owners(before)
        after = msgspec.json.decode(run(restored, msgs[at:], at))
        assert after == [x for part in published[i:] for x in part]
        assert restored.snapshot() == original.snapshot()


def test_the_stream_with_accounts_meets_every_rule() -> None:
    """The generated stream is not vacuous: prevention, its order events, cancel_all, ownership
    rejections, fees and restored accounts are all in it."""
    engine = Engine(fees=FEES, stp_default="decrement")
    msgs = mix(3000, 11, accounts=True)
    out = msgspec.json.decode(run(engine, msgs))
    reasons = {(o.get("status"), o.get("reason"), "resting_order" in o) for o in out}
    for wanted in [
        ("cancelled", "self_trade_prevented", True),
        ("reduced", "self_trade_prevented", True),
        ("cancelled", "cancel_all", True),
        ("rejected", "unknown_order", False),
    ]:
        assert wanted in reasons
    assert any(o.get("cancelled_orders") for o in out)
    assert any("maker_fee" in o and o.get("maker_account") for o in out)
    assert engine.book.owners.given and engine.book.owners.of


def test_digest_tells_books_apart() -> None:
    a, b = Engine(), Engine()
    msgs = mix(500, 3)
    run(a, msgs)
    run(b, msgs[:-1])
    assert a.digest() != b.digest() or a.snapshot() == b.snapshot()
    run(b, msgs[-1:])
    assert a.digest() == b.digest()


@WITH_AND_WITHOUT
def test_large_book_round_trip(accounts: bool) -> None:
    engine = Engine()
    orders = resting_orders(20_000, levels=300, accounts=ACCOUNTS if accounts else 0)
    run(engine, [decode_json(msgspec.json.encode(m)) for m in orders])
    restored = Engine.restore(engine.snapshot())
    restored.book.check()
    assert len(restored.book) == 20_000
    assert restored.snapshot() == engine.snapshot()
    assert owners(restored) == owners(engine)
    assert len(restored.book.owners.of) == (20_000 if accounts else 0)


def test_wrong_version_is_refused() -> None:
    state = _generic(Engine().snapshot())
    state[0] = 99  # type: ignore[index]
    with pytest.raises(ValueError, match="version 99"):
        Engine.restore(msgspec.msgpack.encode(state))


def _levels(engine: Engine) -> list[object]:
    book = engine.book
    return [lv for side in (book.bids, book.asks) for lv in side]


@WITH_AND_WITHOUT
@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    before=st.integers(0, 400),
    steps=st.lists(st.tuples(st.integers(1, 60), st.integers(0, 40)), max_size=40),
)
def test_a_sliced_snapshot_is_the_snapshot_at_its_opening(
    accounts: bool, seed: int, before: int, steps: list[tuple[int, int]]
) -> None:
    """Inputs applied between slices (trades, cancels, amends, new and emptied levels; with
    accounts, prevention, cancel_all and rejected cancels of other accounts too) change nothing
    in the bytes; the engine behaves exactly as one without a writer; once done, the book is
    released."""
    total = before + sum(k for _, k in steps) + 200
    msgs = mix(total, seed, accounts)
    engine, control = engine_for(accounts, seed), engine_for(accounts, seed)
    assert run(engine, msgs[:before]) == run(control, msgs[:before])
    expected = engine.snapshot()
    writer = engine.snapshot_writer()
    parts, at = [], before
    for budget, inputs in steps:
        if writer.done:
            break
        parts.append(writer.step(budget))
        assert run(engine, msgs[at : at + inputs], at) == run(control, msgs[at : at + inputs], at)
        at += inputs
    while not writer.done:
        parts.append(writer.step(1))
    assert b"".join(parts) == expected
    assert engine.book.cut is None
    assert not any(level.held for level in _levels(engine))  # type: ignore[attr-defined]
    engine.book.check()
    assert run(engine, msgs[at:], at) == run(control, msgs[at:], at)
    assert engine.snapshot() == control.snapshot()
    assert owners(engine) == owners(control)


def test_a_sliced_snapshot_of_accounts_under_every_change() -> None:
    """Each kind of change to levels not yet encoded, on orders with accounts and modes: a
    cancel naming its owner, a cancel_all of one side, prevention cancelling a maker (under
    cancel_maker, the pair's default) and reducing one (decrement), trades that empty a level,
    an amend that reduces and one that re-enters, a cancel of another account's order. The
    slices are still the snapshot at the opening, which restores the accounts as they were."""
    engine = Engine(stp_default="cancel_maker")
    for i, (side, price, account, stp) in enumerate(
        [
            ("buy", 90, "alice", "decrement"),
            ("buy", 90, "bob", None),
            ("buy", 90, None, None),
            ("buy", 89, "alice", None),
            ("buy", 88, "carol", "none"),
            ("sell", 110, "alice", None),
            ("sell", 110, "bob", "cancel_both"),
            ("sell", 111, "carol", None),
            ("sell", 112, "bob", "decrement"),
        ]
    ):
        engine.apply(Order(f"o{i}", side, 5, price, "limit", 1, account, stp), None, [])
    expected = engine.snapshot()
    at_opening = owners(engine)
    writer = engine.snapshot_writer()
    parts = [writer.step(0)]  # the framing only: every level is still held
    changes: list[Input] = [
        decode_json(b'{"type":"cancel","order_id":"o1","account":"bob","timestamp":2}'),
        decode_json(b'{"type":"cancel_all","account":"carol","side":"sell","timestamp":2}'),
        Order("t1", "buy", 7, 110, "limit", 2, "alice", "decrement"),  # o5 off, o6 trades 2
        Order("t2", "sell", 3, 89, "ioc", 2, "alice"),  # o0 cancelled, o2 trades 3
        Order("t3", "sell", 2, 89, "limit", 2, "alice", "decrement"),  # o2's 2: 90 emptied
        Order("t4", "sell", 2, 89, "limit", 2, "alice", "decrement"),  # o3 reduced to 3
        decode_json(b'{"type":"amend","order_id":"o4","quantity":2,"timestamp":2}'),
        decode_json(b'{"type":"amend","order_id":"o8","price":113,"timestamp":2}'),
        decode_json(b'{"type":"cancel","order_id":"o3","account":"bob","timestamp":2}'),
    ]
    side_effects = []
    for msg in changes:
        engine.apply(msg, None, [])
        side_effects += [(e.order_id, e.status, e.reason) for e in engine.order_events]
        engine.order_events.clear()
    assert side_effects == [
        ("o7", "cancelled", "cancel_all"),
        ("o5", "cancelled", "self_trade_prevented"),
        ("o0", "cancelled", "self_trade_prevented"),
        ("o3", "reduced", "self_trade_prevented"),
    ]
    assert engine.book.get("o8") == ("sell", 113, 5) and engine.book.get("o3") == ("buy", 89, 3)
    while not writer.done:
        parts.append(writer.step(1))
    assert b"".join(parts) == expected
    assert owners(Engine.restore(expected)) == at_opening
    engine.book.check()


def _generic(snapshot: bytes) -> list[object]:
    """A snapshot as plain msgpack values: what a reader without our types sees."""
    decoded = msgspec.msgpack.decode(snapshot)
    assert isinstance(decoded, list)
    return decoded


def _a_book(accounts: bool) -> Engine:
    """Bids at 99 and 98 without accounts; with ``accounts``, asks at 101 (one with an
    account, none with a mode) and 102 (a mode)."""
    engine = Engine()
    engine.apply(Order("b1", "buy", 5, 99), None, [])
    engine.apply(Order("b2", "buy", 3, 98), None, [])
    engine.apply(Order("s0", "sell", 1, 99), None, [])  # a trade: totals and last_trade
    if accounts:
        engine.apply(Order("a1", "sell", 2, 101, account="alice"), None, [])
        engine.apply(Order("a2", "sell", 2, 101), None, [])
        engine.apply(Order("a3", "sell", 4, 102, account="bob", stp="decrement"), None, [])
    return engine


def test_a_snapshot_holds_accounts_and_modes_per_level() -> None:
    """Version 4; a level's accounts are '' for an order without one, its modes '' for an
    order that gave none; no accounts or modes where no order of the level has one; the totals
    as decimal strings."""
    version, next_trade_id, bids, asks, *totals = _generic(_a_book(True).snapshot())
    assert (version, next_trade_id) == (4, 2)
    assert bids == [[99, ["b1"], [4]], [98, ["b2"], [3]]]
    assert asks == [
        [101, ["a1", "a2"], [2, 2], ["alice", ""]],
        [102, ["a3"], [4], ["bob"], ["decrement"]],
    ]
    assert totals[:2] == ["1", "99"]
    assert totals[3] is None  # the pair charges no fees


def test_a_version_2_snapshot_restores_and_continues() -> None:
    """A snapshot written before accounts (version 2: levels of three fields) restores to the
    same book, which continues as the one it was taken from."""
    msgs = mix(2000, 5)
    original = Engine()
    run(original, msgs[:1500])
    state = _generic(original.snapshot())
    volume, notional, last_trade, _ = state[4:]  # type: ignore[misc]
    version_2 = [2, state[1], *state[2:4], int(volume), int(notional), last_trade]  # type: ignore[call-overload]
    restored = Engine.restore(msgspec.msgpack.encode(version_2))
    restored.book.check()
    assert restored.snapshot() == original.snapshot()
    assert restored.digest() == original.digest()
    assert not restored.book.owners.of
    assert run(restored, msgs[1500:], 1500) == run(original, msgs[1500:], 1500)


def test_a_version_3_snapshot_restores_and_continues() -> None:
    """Version 3 wrote the totals and the last trade's fees as msgpack integers, and every
    level with two trailing nils where it had no accounts."""
    msgs = mix(2000, 5, accounts=True)
    original = engine_for(True, 5)
    run(original, msgs[:1500])
    state = _generic(original.snapshot())
    volume, notional, last_trade, fees = state[4:]  # type: ignore[misc]
    assert isinstance(last_trade, dict) and fees is not None
    last_trade.update(maker_fee=int(fees[0]), taker_fee=int(fees[1]))
    levels = [[[*lv, None, None][:5] for lv in side] for side in state[2:4]]  # type: ignore[attr-defined]
    version_3 = [3, state[1], *levels, int(volume), int(notional), last_trade]
    restored = engine_for(True, 5, msgspec.msgpack.encode(version_3))
    restored.book.check()
    assert restored.snapshot() == original.snapshot()
    assert restored.ticker() == original.ticker()
    assert owners(restored) == owners(original)
    assert run(restored, msgs[1500:], 1500) == run(original, msgs[1500:], 1500)


def test_a_snapshot_holds_totals_beyond_64_bits() -> None:
    """Realistic values overflow: a price of 100,000.00 (x 10^8) times 2,000,000 lots is a
    notional of 2 x 10^19 after one trade."""
    engine = Engine(fees=Fees(0, 1_000_000))
    engine.apply(Order("s", "sell", 2_000_000, 10**13), None, [])
    engine.apply(Order("b", "buy", 2_000_000, 10**13), None, [])
    assert engine.book.notional == 2 * 10**19
    restored = Engine.restore(engine.snapshot(), fees=Fees(0, 1_000_000))
    assert restored.ticker() == engine.ticker()


def test_a_book_holding_more_than_64_bits_of_quantity_has_a_digest_and_a_snapshot() -> None:
    """A quantity is at most 2**63 - 1, but a level's and a side's totals are sums: three
    orders at the limit pass msgpack's 64 bits. The digest (taken after every batch) and the
    snapshot must still be made, and tell the books apart."""
    engine, smaller = Engine(track_depth=True), Engine()
    for n in range(3):
        engine.apply(Order(f"b{n}", "buy", INT64_MAX, 100), None, [])
        smaller.apply(Order(f"b{n}", "buy", INT64_MAX - (n == 2), 100), None, [])
    assert engine.digest() != smaller.digest()
    restored = Engine.restore(engine.snapshot())
    assert restored.digest() == engine.digest()
    depth = engine.take_depth()
    assert depth is not None and depth.best_bid == (100, 3 * INT64_MAX, 3)


def test_a_closed_writer_releases_the_book() -> None:
    engine = Engine()
    run(engine, [decode_json(msgspec.json.encode(m)) for m in resting_orders(2_000, levels=50)])
    writer = engine.snapshot_writer()
    writer.step(100)
    assert any(level.held for level in _levels(engine))  # type: ignore[attr-defined]
    writer.close()
    assert engine.book.cut is None
    assert not any(level.held for level in _levels(engine))  # type: ignore[attr-defined]
    again = engine.snapshot_writer()  # a new one may open
    assert again.step(10**9) == engine.snapshot() and again.done


@WITH_AND_WITHOUT
def test_a_large_book_in_slices(accounts: bool) -> None:
    engine = Engine()
    orders = resting_orders(20_000, levels=300, accounts=ACCOUNTS if accounts else 0)
    run(engine, [decode_json(msgspec.json.encode(m)) for m in orders])
    writer = engine.snapshot_writer()
    parts = []
    while not writer.done:
        parts.append(writer.step(1_000))
    assert len(parts) > 10
    assert b"".join(parts) == engine.snapshot()
