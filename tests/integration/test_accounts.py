"""Accounts and trading terms through a real server: the fields on the streams, order events,
cancel_all on a large book, and terms that change at a start, never mid-stream."""

from __future__ import annotations

import random
import signal
import time

import pytest
import redis

from shard.batch import apply_entries
from shard.checkpoint import parse_id
from shard.config import Config, Keys
from shard.engine import Engine
from shard.messages import Event, Trade
from shard.server import LocalServer
from shard.terms import Terms
from shard.workload import standard_mix

from .helpers import (
    PAIR,
    assert_market_data,
    finish_daemon,
    publish,
    read_outputs,
    run_until_idle,
    start_daemon,
    stop_daemon,
    wait_events,
)
from .test_faults import entries_of


def oracle(
    ids: list[str], messages: list[dict], runs: list[tuple[int, Terms]]
) -> tuple[list[Trade], list[Event]]:
    """What an uninterrupted engine publishes for these inputs when ``runs`` say which terms
    apply from which input on (index, terms), by the daemon's own path."""
    entries = [(i, [x for kv in f.items() for x in kv]) for i, f in entries_of(None, ids, messages)]
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


def flat(msg: dict) -> dict[str, str]:
    return {k: str(v) for k, v in msg.items()}


def test_accounts_order_events_and_cancel_all_on_the_streams(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    messages = [
        {"type": "order", "order_id": "a1", "side": "sell", "price": 100, "quantity": 4,
         "account": "alice"},
        {"type": "order", "order_id": "c1", "side": "sell", "price": 100, "quantity": 3,
         "account": "carol"},
        {"type": "order", "order_id": "a2", "side": "buy", "price": 90, "quantity": 2,
         "account": "alice"},
        {"type": "order", "order_id": "t1", "side": "buy", "price": 100, "quantity": 5,
         "account": "alice", "stp": "cancel_maker"},
        {"type": "cancel_all", "account": "alice"},
        {"type": "cancel", "order_id": "c1", "account": "bob"},
        {"type": "order", "order_id": "b1", "side": "up", "price": 1, "quantity": 1,
         "account": "bob"},
    ]  # fmt: skip
    ids = publish(r, messages)
    run_until_idle(server.url, batch_size=50, taker_fee_ppm=1000)
    raw_trades = [f for _, f in r.xrange(keys.trades)]
    assert raw_trades == [
        {b"trade_id": b"1", b"taker_order_id": b"t1", b"maker_order_id": b"c1", b"price": b"100",
         b"quantity": b"3", b"timestamp": raw_trades[0][b"timestamp"], b"taker_side": b"buy",
         b"input_id": ids[3].encode(), b"maker_account": b"carol", b"taker_account": b"alice",
         b"maker_fee": b"0", b"taker_fee": b"1"},
    ]  # fmt: skip
    events = [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrange(keys.events)]
    by_input = [[e for e in events if e["input_id"] == i] for i in ids]
    assert [len(x) for x in by_input] == [1, 1, 1, 2, 3, 1, 1]
    prevented, own = by_input[3]
    assert prevented == {
        "input_id": ids[3], "order_id": "a1", "status": "cancelled", "remaining_quantity": "0",
        "cancelled_quantity": "4", "reason": "self_trade_prevented",
        "detail": prevented["detail"], "account": "alice", "resting_order": "1",
    }  # fmt: skip
    assert own["order_id"] == "t1" and own["status"] == "partially_filled"
    assert "resting_order" not in own and own["account"] == "alice"
    *cancelled, summary = by_input[4]  # t1 (2 left resting at 100) and a2 (at 90)
    assert [(e["order_id"], e["reason"]) for e in cancelled] == [
        ("t1", "cancel_all"),
        ("a2", "cancel_all"),
    ]
    assert (summary["status"], summary["cancelled_orders"], summary["cancelled_quantity"]) == (
        "cancelled",
        "2",
        "4",
    )
    assert "order_id" not in summary
    assert (by_input[5][0]["status"], by_input[5][0]["reason"]) == ("rejected", "unknown_order")
    refused = by_input[6][0]  # a refused input keeps its account, for its owner's feed
    assert (refused["reason"], refused["account"]) == ("invalid_field", "bob")
    # The market data shows the book as the engine holds it: c1 traded away, alice's gone.
    assert {k: v for k, v in r.hgetall(keys.book).items() if k[1:2] == b":"} == {}


def test_cancel_all_of_an_account_with_100k_orders(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    from shard.workload import resting_orders

    mine = [dict(m, account="big") for m in resting_orders(100_000, seed=3)]
    others = list(resting_orders(500, seed=4, prefix="x"))
    ids = publish(r, [*others, *mine, {"type": "cancel_all", "account": "big"}])
    run_until_idle(server.url)
    ((_, last),) = r.xrevrange(keys.events, count=1)
    assert last[b"input_id"] == ids[-1].encode() and last[b"cancelled_orders"] == b"100000"
    assert int(last[b"cancelled_quantity"]) == sum(m["quantity"] for m in mine)
    assert r.xlen(keys.events) == len(ids) + 100_000  # an order event for each
    book = {k: v for k, v in r.hgetall(keys.book).items() if k[1:2] == b":"}
    assert sum(int(v.split(b":")[1]) for v in book.values()) == 500  # only the others rest


def test_a_changed_stp_default_never_reaches_inputs_applied_before_it(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """The stp default changes the book. Inputs between the last snapshot and the checkpoint
    are replayed at the next start: under the terms they were applied under (the checkpoint's),
    not the new configuration's, or the book would not be the one the outputs describe."""
    messages = list(standard_mix(1500, seed=43, accounts=2))
    ids = publish(r, messages[:1000])
    run_until_idle(server.url, batch_size=20, snapshot_every_inputs=300, trim_inputs=False)
    snapshot = r.hget(keys.snapshot, "input_id")
    assert snapshot is not None and snapshot.decode() != ids[-1]  # inputs after it replay
    more = publish(r, messages[1000:])
    run_until_idle(server.url, batch_size=20, stp_default="none", trim_inputs=False)
    trades, events = read_outputs(r, keys)
    window = ids[ids.index(snapshot.decode()) + 1 :]
    assert any(e.reason == "self_trade_prevented" for e in events if e.input_id in window), (
        "the replayed inputs must include a prevention that the new default would not make"
    )
    want = oracle(ids + more, messages, [(0, Terms()), (1000, Terms("none"))])
    assert (trades, events) == want
    assert r.hget(keys.checkpoint, "terms") == b"none 0 0"


@pytest.mark.slow
def test_sigkill_with_accounts_fees_and_cancel_all_is_exactly_once(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """The fault test of test_faults.py on a stream with accounts, prevention in every mode,
    a cancel_all every 500 inputs and fees: outputs and market data as an uninterrupted run's."""
    messages = list(standard_mix(20_000, seed=44, accounts=3))
    for i in range(500, len(messages), 500):
        messages[i] = {"type": "cancel_all", "account": f"acct{i % 3}"}
    ids = publish(r, messages)
    env = {
        "SHARD_BATCH_SIZE": "10", "SHARD_SNAPSHOT_EVERY_INPUTS": "3000",
        "SHARD_MAKER_FEE_PPM": "-50", "SHARD_TAKER_FEE_PPM": "200",
    }  # fmt: skip
    rng = random.Random(8)
    kills = 0
    while (done := r.xlen(keys.events)) < len(messages) and kills < 20:
        proc = start_daemon(server.url, env=env)
        try:
            wait_events(r, keys, min(done + rng.randint(1, 3000), len(messages)))
            time.sleep(rng.uniform(0.0, 0.02))
        finally:
            stop_daemon(proc, signal.SIGKILL)
        kills += 1
    code, log = finish_daemon(start_daemon(server.url, "--exit-when-idle", env=env))
    assert code == 0, log
    assert kills >= 3
    trades, events = read_outputs(r, keys)
    want_trades, want_events = oracle(ids, messages, [(0, Terms("cancel_taker", -50, 200))])
    assert len(events) == len(want_events)
    assert events == want_events
    assert trades == want_trades
    assert [t.trade_id for t in trades] == list(range(1, len(trades) + 1))
    assert any(e.resting_order for e in events) and any(e.cancelled_orders for e in events)
    assert_market_data(r, keys, entries_of(r, ids, messages))
