"""`shard load`'s settling of the inputs in doubt after an outage, on a real server: those the
stream holds after the last acknowledged entry, in order and exactly as packed, count as sent;
the others are sent again. (The cluster runs, a failover and the floor relay, are in
test_cluster.py, on its session cluster.)"""

from __future__ import annotations

import asyncio

import redis

from shard.config import Keys
from shard.load.follow import connection
from shard.load.pair import PairLoad
from shard.load.runner import LoadRun, LoadSpec
from shard.load.schedule import constant
from shard.server import LocalServer

from .helpers import PAIR


def in_doubt(server: LocalServer, landed: int, doubt: int) -> PairLoad:
    """A pair that wrote 10 inputs and read 4 replies, then ``doubt`` more writes in doubt,
    of which the server holds the first ``landed``: settled on a new connection."""
    spec = LoadSpec(pairs=[PAIR], schedule=constant(1000, 0.02), url=server.url, progress=None)
    pair = PairLoad(LoadRun(spec), PAIR, 0)

    async def go() -> None:
        client = redis.asyncio.Redis.from_url(server.url, protocol=2)
        conn = await connection(client)
        try:
            await pair.mark_start(client)
            await conn.send_packed_command(pair.commands[: 4 + landed], check_health=False)
            ids = [await conn.read_response() for _ in range(4 + landed)]
            for k, entry_id in enumerate(ids[:4]):
                pair._ack(k, entry_id)
            pair.sent = pair.writing = 4 + doubt
            await pair.settle(conn)
        finally:
            await conn.disconnect()
            await client.aclose()

    asyncio.run(go())
    return pair


def test_inputs_in_doubt_that_landed_are_not_sent_again(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    pair = in_doubt(server, landed=3, doubt=5)
    assert (pair.acked, pair.sent, pair.landed, pair.resent) == (7, 7, 3, 2)
    assert r.xlen(keys.orders) == 7
    assert len(pair.pending) == 7  # their events will complete them
    assert pair.commands[6] == b"" and pair.commands[7] != b""


def test_a_foreign_entry_ends_what_counts_as_landed(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    pair = in_doubt(server, landed=0, doubt=3)
    assert (pair.acked, pair.sent, pair.landed, pair.resent) == (4, 4, 0, 3)
    r.xadd(keys.orders, {"x": "another producer"})
    pair.writing = 6
    asyncio.run(_settle(server, pair))
    assert (pair.acked, pair.sent, pair.landed, pair.resent) == (4, 4, 0, 5)


async def _settle(server: LocalServer, pair: PairLoad) -> None:
    client = redis.asyncio.Redis.from_url(server.url, protocol=2)
    conn = await connection(client)
    try:
        await pair.settle(conn)
    finally:
        await conn.disconnect()
        await client.aclose()
