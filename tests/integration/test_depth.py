"""Market data committed with the batch, against a real server: a client that builds its book
from ``book:{P}`` and ``depth:{P}`` alone holds the engine's book after every entry's
``input_id``; ``ticker:{P}`` holds the trade totals; a deleted ``book:{P}`` is rebuilt."""

from __future__ import annotations

import asyncio

import redis

from shard.config import Keys
from shard.server import LocalServer
from shard.workload import standard_mix

from .helpers import (
    as_fields,
    assert_market_data,
    config,
    expected_outputs,
    finish_daemon,
    follow,
    publish,
    run_until_idle,
    sides,
    start_daemon,
    stored_book,
)


def test_a_client_of_book_and_depth_holds_the_engines_book(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    ids = publish(r, list(standard_mix(1500, seed=11)))
    run_until_idle(server.url, batch_size=7)
    book = follow(r, keys)
    stored = stored_book(r, keys)
    ((last_id, _),) = r.xrevrange(keys.depth, count=1)
    assert {k: v for k, v in stored.items() if k[1] == ":"} == as_fields(book)
    assert stored["seq"] == str(r.xlen(keys.depth)) and stored["depth_id"] == last_id.decode()
    assert stored["input_id"] == ids[-1]
    checkpoint = {k.decode(): v.decode() for k, v in r.hgetall(keys.checkpoint).items()}
    assert checkpoint["seq"] == stored["seq"]
    # The ticker: the trade totals and the last trade.
    trades, _ = expected_outputs([(i.decode(), f) for i, f in r.xrange(keys.orders)])
    ticker = {k.decode(): v.decode() for k, v in r.hgetall(keys.ticker).items()}
    assert ticker == {
        "last_trade_id": str(trades[-1].trade_id),
        "last_price": str(trades[-1].price),
        "last_quantity": str(trades[-1].quantity),
        "last_timestamp": str(trades[-1].timestamp),
        "last_taker_side": trades[-1].taker_side,
        "trade_count": str(len(trades)),
        "volume": str(sum(t.quantity for t in trades)),
        "notional": str(sum(t.price * t.quantity for t in trades)),
    }


def test_seq_goes_on_across_restarts_and_a_deleted_book_is_rebuilt(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    messages = list(standard_mix(900, seed=12))
    publish(r, messages[:300])
    run_until_idle(server.url, batch_size=10)
    publish(r, messages[300:600])
    run_until_idle(server.url, batch_size=10)  # a restart: seq goes on
    r.delete(keys.book)  # an operator's mistake
    publish(r, messages[600:])
    run_until_idle(server.url, batch_size=10)
    book = follow(r, keys)  # seq contiguous over the three runs, every entry right
    stored = stored_book(r, keys)
    assert {k: v for k, v in stored.items() if k[1] == ":"} == as_fields(book)
    assert stored["seq"] == str(r.xlen(keys.depth))


def test_a_corrupted_book_field_is_repaired_at_the_next_recovery(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    publish(r, list(standard_mix(400, seed=13)))
    run_until_idle(server.url, batch_size=50)
    before = stored_book(r, keys)
    field = next(k for k in before if k.startswith("b:"))
    r.hset(keys.book, field, "1:1")
    r.hset(keys.book, "b:1", "5:1")  # a level that does not exist
    run_until_idle(server.url, batch_size=50)
    assert stored_book(r, keys) == before


def test_a_book_view_syncs_from_the_daemons_output(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """BookView (shard.marketdata) on what the daemon really publishes: the engine's book."""
    from shard.marketdata import BookView, connect

    publish(r, list(standard_mix(1200, seed=14)))
    run_until_idle(server.url, batch_size=25)
    book = follow(r, keys)
    bids, asks = sides(book)

    async def view() -> tuple[list[tuple[int, int]], list[tuple[int, int]], int]:
        client = connect(config(server.url))
        try:
            v = BookView(client, keys.pair)
            await v.sync(attempts=3)
            return [(x[0], x[1]) for x in v.bids()], [(x[0], x[1]) for x in v.asks()], v.seq
        finally:
            await client.aclose()

    got_bids, got_asks, seq = asyncio.run(view())
    assert (got_bids, got_asks) == (bids, asks) and seq == r.xlen(keys.depth)


def test_a_new_pair_starts_without_rebuilding_a_book(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """No book:{P} before anything is published is the contract's empty book at seq 0, not a
    book to rebuild: the first start says nothing about it."""
    publish(r, list(standard_mix(50, seed=15)))
    code, log = finish_daemon(start_daemon(server.url, "--exit-when-idle"))
    assert code == 0, log
    assert "did not hold the recovered book" not in log
    assert_market_data(r, keys)


def test_depth_maxlen_trims_the_stream_and_a_client_resyncs_from_the_book(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """depth_maxlen is approximate: trimmed every 64th seq, whole stream nodes at a time, so
    the stream stays within the cap plus 64 entries plus a node (100 entries by default)."""
    publish(r, list(standard_mix(1500, seed=16)))
    run_until_idle(server.url, batch_size=1, depth_maxlen=100)
    seq = int(r.hget(keys.checkpoint, "seq") or 0)
    assert seq > 400  # many more entries were published than are kept
    assert r.xlen(keys.depth) <= 100 + 64 + 100
    entries = r.xrange(keys.depth)
    seqs = [int(f[b"seq"]) for _, f in entries]
    assert seqs == list(range(seq - len(seqs) + 1, seq + 1))  # what is kept is the newest
    assert stored_book(r, keys)["seq"] == str(seq)


def test_a_recovery_behind_the_checkpoint_does_not_rewrite_the_book(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """Two daemons at once (a lease expired under a stalled holder): the one recovering at an
    older checkpoint must not write its older book over the other's. Its rebuild of
    book:{P} is fenced on the checkpoint, as every write of the outputs is."""
    from shard.checkpoint import Checkpoint
    from shard.engine import Engine
    from shard.marketdata import connect
    from shard.recovery import sync_book
    from shard.store import Store

    publish(r, list(standard_mix(300, seed=17)))
    run_until_idle(server.url, batch_size=20)
    before = stored_book(r, keys)
    behind = Checkpoint("1-1", 0, 1, "", 0)  # where a slower daemon believes it stands

    async def recover_behind() -> None:
        client = connect(config(server.url))
        try:
            await sync_book(Store(client, keys, "shard"), Engine(), behind)
        finally:
            await client.aclose()

    asyncio.run(recover_behind())
    assert stored_book(r, keys) == before
