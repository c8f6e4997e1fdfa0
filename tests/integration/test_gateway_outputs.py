"""The gateway's outputs reader against a real server, its streams written by hand: an
order-entry answer carries its input's trades however the reads cut the streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

from shard.config import Config, Keys
from shard.gateway.feed import READ_COUNT, PairFeed
from shard.messages import Event, Trade
from shard.server import LocalServer
from shard.transport import connect, plain_async_client
from shard.wire import event_fields, trade_fields

from .helpers import PAIR


@pytest.fixture
async def feed(server: LocalServer, r: redis.Redis) -> AsyncIterator[PairFeed]:
    """A pair's feed with only its outputs reader running (no replica, no book)."""
    config = Config(pair=PAIR, redis_url=server.url)
    client, reader = plain_async_client(config), connect(config)
    pair_feed = PairFeed(client, reader, PAIR)
    task = asyncio.create_task(pair_feed._follow_outputs())
    while not pair_feed.outputs_ok:
        await asyncio.sleep(0.01)
    yield pair_feed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await client.aclose()
    await reader.aclose()


def _trade(n: int, input_id: str) -> list[str]:
    return trade_fields(Trade(n, "taker", f"maker{n}", 100, 1, 1_700_000_000_000, "buy", input_id))


def _event(input_id: str, status: str = "filled") -> list[str]:
    return event_fields(Event(input_id, f"order-{input_id}", status))


def _xadd(pipe: redis.Redis, key: str, entry_id: str, flat: list[str]) -> None:
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    pipe.xadd(key, fields, id=entry_id)  # type: ignore[arg-type]


async def test_trades_read_before_their_inputs_event_stay_with_its_outcome(
    feed: PairFeed, r: redis.Redis
) -> None:
    """Input 5-0 trades in the commit after input 1-0's, and the read takes both commits' trades
    but only 1-0's event: the trades wait for 5-0's event (the events' entry IDs, later than
    every input's, must not make them look left behind)."""
    keys = Keys(PAIR)
    pipe = r.pipeline(transaction=True)
    _xadd(pipe, keys.events, "10-0", _event("1-0", "resting"))
    _xadd(pipe, keys.trades, "11-0", _trade(1, "5-0"))
    pipe.execute()
    await asyncio.sleep(0.2)  # read: 1-0's event, 5-0's trade
    assert (await feed.outcome("1-0", 2)) is not None
    _xadd(r, keys.events, "12-0", _event("5-0"))
    outcome = await feed.outcome("5-0", 2)
    assert outcome is not None and outcome.event.status == "filled"
    assert [t.trade_id for t in outcome.trades] == [1]


async def test_an_input_with_more_trades_than_one_read_gets_them_all(
    feed: PairFeed, r: redis.Redis
) -> None:
    keys = Keys(PAIR)
    count = READ_COUNT * 2 + 7
    pipe = r.pipeline(transaction=True)
    for n in range(1, count + 1):
        _xadd(pipe, keys.trades, f"20-{n}", _trade(n, "7-0"))
    _xadd(pipe, keys.events, "20-0", _event("7-0"))
    pipe.hset(keys.ticker, mapping={"last_trade_id": count, "trade_count": count})
    pipe.execute()
    outcome = await feed.outcome("7-0", 5)
    assert outcome is not None
    assert [t.trade_id for t in outcome.trades] == list(range(1, count + 1))
    assert feed.ticker["last_trade_id"] == count
    assert len(feed.trades) == count
