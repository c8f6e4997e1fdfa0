"""Snapshot/restore: a restored engine continues exactly like the original."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shard.decode import decode_json
from shard.engine import Engine
from shard.messages import Trade
from shard.workload import resting_orders, standard_mix


def run(engine: Engine, msgs: list[bytes], start: int = 0) -> bytes:
    """Apply messages; everything published, encoded, as one byte string."""
    out: list[object] = []
    for n, raw in enumerate(msgs, start):
        trades: list[Trade] = []
        event = engine.apply(decode_json(raw), f"7-{n}", trades)
        out.extend(trades)
        out.append(event)
    return msgspec.json.encode(out)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(0, 600), cut=st.floats(0, 1))
def test_restored_engine_continues_identically(seed: int, n: int, cut: float) -> None:
    msgs = [msgspec.json.encode(m) for m in standard_mix(n, seed)]
    at = int(cut * n)
    original = Engine()
    run(original, msgs[:at])
    restored = Engine.restore(original.snapshot())
    restored.book.check()
    assert restored.digest() == original.digest()
    assert restored.snapshot() == original.snapshot()
    assert run(restored, msgs[at:], at) == run(original, msgs[at:], at)
    assert restored.snapshot() == original.snapshot()


def test_digest_tells_books_apart() -> None:
    a, b = Engine(), Engine()
    msgs = [msgspec.json.encode(m) for m in standard_mix(500, 3)]
    run(a, msgs)
    run(b, msgs[:-1])
    assert a.digest() != b.digest() or a.snapshot() == b.snapshot()
    run(b, msgs[-1:])
    assert a.digest() == b.digest()


def test_large_book_round_trip() -> None:
    engine = Engine()
    run(engine, [msgspec.json.encode(m) for m in resting_orders(20_000, levels=300)])
    restored = Engine.restore(engine.snapshot())
    restored.book.check()
    assert len(restored.book) == 20_000
    assert restored.snapshot() == engine.snapshot()


def test_wrong_version_is_refused() -> None:
    state = Engine().state()
    state.version = 99
    with pytest.raises(ValueError, match="version 99"):
        Engine.restore(msgspec.msgpack.encode(state))


def _levels(engine: Engine) -> list[object]:
    book = engine.book
    return [lv for side in (book.bids, book.asks) for lv in side]


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    before=st.integers(0, 400),
    steps=st.lists(st.tuples(st.integers(1, 60), st.integers(0, 40)), max_size=40),
)
def test_a_sliced_snapshot_is_the_snapshot_at_its_opening(
    seed: int, before: int, steps: list[tuple[int, int]]
) -> None:
    """Inputs applied between slices (trades, cancels, amends, new and emptied levels) change
    nothing in the bytes; the engine behaves exactly as one without a writer; once done, the
    book is released."""
    total = before + sum(k for _, k in steps) + 200
    msgs = [msgspec.json.encode(m) for m in standard_mix(total, seed)]
    engine, control = Engine(), Engine()
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


def test_a_closed_writer_releases_the_book() -> None:
    engine = Engine()
    run(engine, [msgspec.json.encode(m) for m in resting_orders(2_000, levels=50)])
    writer = engine.snapshot_writer()
    writer.step(100)
    assert any(level.held for level in _levels(engine))  # type: ignore[attr-defined]
    writer.close()
    assert engine.book.cut is None
    assert not any(level.held for level in _levels(engine))  # type: ignore[attr-defined]
    again = engine.snapshot_writer()  # a new one may open
    assert again.step(10**9) == engine.snapshot() and again.done


def test_a_large_book_in_slices() -> None:
    engine = Engine()
    run(engine, [msgspec.json.encode(m) for m in resting_orders(20_000, levels=300)])
    writer = engine.snapshot_writer()
    parts = []
    while not writer.done:
        parts.append(writer.step(1_000))
    assert len(parts) > 10
    assert b"".join(parts) == engine.snapshot()
