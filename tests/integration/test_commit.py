"""The commit script against a real server: each row becomes exactly the entry the contract
describes, whatever its shape, and ``output_maxlen`` caps the output streams."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.asyncio import Redis

from shard.batch import Batch
from shard.checkpoint import Checkpoint
from shard.commit import Commit, CommitRefused, Fenced
from shard.config import Keys
from shard.messages import Event, Trade
from shard.server import LocalServer
from shard.store import Store
from shard.transport import Channel
from shard.wire import Row, add_event, add_trade, event_fields, trade_fields


def every_event_shape() -> list[Event]:
    return [
        Event(
            f"1-{bits}",
            f"o{bits}" if bits & 1 else None,
            "cancelled",
            1 if bits & 2 else None,
            2 if bits & 4 else None,
            3 if bits & 8 else None,
            "no_liquidity" if bits & 16 else None,
            f"sentence {bits}" if bits & 16 else None,
        )
        for bits in range(32)
    ]


def commit(url: str, keys: Keys, trades: list[Trade], events: list[Event], maxlen: int) -> None:
    async def go() -> None:
        client = Redis.from_url(url, protocol=2)
        store = Store(client, keys, "shard")
        trade_rows: Row = []
        event_rows: Row = []
        for t in trades:
            add_trade(trade_rows, t)
        for e in events:
            add_event(event_rows, e)
        target = Checkpoint("1-31", len(trades), len(events), "d")
        batch = Batch(
            "", Checkpoint(), target, trade_rows, event_rows, [], len(events), len(trades), [], 0,
            [], [], [], [],
        )  # fmt: skip
        committer = Commit(client, keys, "shard", "setid", maxlen)
        channel = Channel(client)
        try:
            await committer.send(channel, batch)  # no consumer group yet: refused, undone
            with pytest.raises(CommitRefused) as refused:
                await committer.finish(channel)
            assert refused.value.why == "no_group"
            assert await client.exists(keys.trades, keys.events, keys.checkpoint) == 0
            await store.ensure_group(Checkpoint(), "c")
            await committer.send(channel, batch)
            await committer.finish(channel)
            assert await store.checkpoint() == target
            await committer.send(channel, batch)  # the same batch again: refused, not twice
            with pytest.raises(Fenced):
                await committer.finish(channel)
        finally:
            await channel.reset()
            await client.aclose()

    asyncio.run(go())


def test_every_row_shape_becomes_its_entry(server: LocalServer, r: redis.Redis, keys: Keys) -> None:
    events = every_event_shape()
    trades = [Trade(i, "t", "m", 100 + i, 5, 1_700_000_000_000, "sell", None) for i in (1, 2)]
    commit(server.url, keys, trades, events, 0)
    got = [[x.decode() for kv in f.items() for x in kv] for _, f in r.xrange(keys.events)]
    assert got == [event_fields(e) for e in events]
    got = [[x.decode() for kv in f.items() for x in kv] for _, f in r.xrange(keys.trades)]
    assert got == [trade_fields(t) for t in trades]


def test_output_maxlen_caps_the_output_streams(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    events = [Event(f"1-{i}", f"o{i}", "resting", 0, 1) for i in range(1000)]
    trades = [Trade(i, "t", "m", 100, 5, 1, "sell", None) for i in range(1, 1001)]
    commit(server.url, keys, trades, events, 10)
    # Approximate (whole radix-tree nodes, 100 entries each by default), as MAXLEN ~ is.
    assert r.xlen(keys.events) < 200
    assert r.xlen(keys.trades) < 200
    assert r.xrevrange(keys.events, count=1)[0][1][b"input_id"] == b"1-999"
