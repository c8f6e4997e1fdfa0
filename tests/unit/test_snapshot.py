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
