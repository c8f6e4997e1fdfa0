"""Accounts and trading terms through a real server: the fields on the streams, order events,
cancel_all on a large book, and terms that change at a start, never mid-stream."""

from __future__ import annotations

import redis

from shard.batch import apply_entries
from shard.checkpoint import parse_id
from shard.config import Config, Keys
from shard.engine import Engine
from shard.messages import Event, Trade
from shard.server import LocalServer
from shard.terms import Terms
from shard.workload import standard_mix

from .helpers import PAIR, publish, read_outputs, run_until_idle


def oracle(
    ids: list[str], messages: list[dict], runs: list[tuple[int, Terms]]
) -> tuple[list[Trade], list[Event]]:
    """What an uninterrupted engine publishes for these inputs when ``runs`` say which terms
    apply from which input on (index, terms), by the daemon's own path."""
    entries = [
        (i, [x for k, v in m.items() for x in (k.encode(), str(v).encode())])
        for i, m in zip(ids, messages, strict=True)
    ]
    engine, trades, events = Engine(), [], []
    limit = Config(pair=PAIR).max_entry_bytes
    bounds = [start for start, _ in runs[1:]] + [len(entries)]
    for (start, terms), end in zip(runs, bounds, strict=True):
        engine.adopt(terms)
        apply_entries(engine, entries[start:end], limit, trades, events)
    return trades, events


def test_fees_take_effect_at_the_next_start_after_a_snapshot(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    messages = list(standard_mix(900, seed=41))
    ids = publish(r, messages[:400])
    run_until_idle(server.url, batch_size=25)
    more = publish(r, messages[400:])
    fees = Terms("cancel_taker", -100, 250)
    run_until_idle(server.url, batch_size=25, maker_fee_ppm=-100, taker_fee_ppm=250)
    trades, events = read_outputs(r, keys)
    assert (trades, events) == oracle(ids + more, messages, [(0, Terms()), (400, fees)])
    last = parse_id(ids[-1])
    before = [t for t in trades if parse_id(t.input_id or "") <= last]
    after = trades[len(before) :]
    assert before and after
    assert all(t.maker_fee is None and t.taker_fee is None for t in before)
    assert all(t.taker_fee is not None and t.taker_fee > 0 for t in after)
    raw = r.xrange(keys.trades, count=1)[0][1]
    assert b"maker_fee" not in raw  # a trade of a pair without fees has no fee fields
    # The change was made safe first: a snapshot at the checkpoint of the last old input.
    assert r.hget(keys.snapshot, "input_id") == ids[-1].encode()
    assert r.hget(keys.checkpoint, "terms") == b"cancel_taker -100 250"


def test_a_restart_with_the_same_terms_takes_no_snapshot(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    publish(r, list(standard_mix(300, seed=42)))
    run_until_idle(server.url, taker_fee_ppm=10)  # a new pair: its first terms, no snapshot
    assert not r.exists(keys.snapshot)
    run_until_idle(server.url, taker_fee_ppm=10)
    assert not r.exists(keys.snapshot)
    assert r.hget(keys.checkpoint, "terms") == b"cancel_taker 0 10"
