"""The daemon's link to Redis: the client it connects with, the pipes it sends on, and the
errors it waits out instead of stopping (the command-line tools use the same client)."""

from __future__ import annotations

from typing import Any, Final, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shard.config import Config

REDIS_ERRORS: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    ConnectionError,
    OSError,
)


def connect(config: Config) -> Redis:
    """A client for the daemon. Connection-level retries are off on purpose: a silently
    re-sent XREADGROUP could skip entries; the daemon resynchronises instead."""
    client = Redis.from_url(
        config.redis_url,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.connect_timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        client_name=f"shard:{config.pair}",
        protocol=2,  # the raw stream replies below are read in their RESP2 shape
    )
    # Stream replies stay raw ([id, [name, value, ...]]): the decoder reads the flat list, which
    # saves building a dict per entry in redis-py.
    for command in ("XRANGE",):
        client.set_response_callback(command, _raw)
    return client


def _raw(response: Any, **options: Any) -> Any:
    return response


class Channel:
    """One dedicated connection used as a pipe: :meth:`send` puts a command on the wire now,
    :meth:`recv` reads the oldest reply later, so Redis works while Python does. Replies are
    raw RESP2 (no redis-py response callbacks). After an error, :meth:`reset` drops the
    connection and whatever was in flight."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.conn: Connection | None = None
        self.in_flight = 0

    async def send(self, *args: Any) -> None:
        if self.conn is None:
            pool = self.redis.connection_pool
            self.conn = cast(Connection, await pool.get_connection())  # type: ignore[no-untyped-call]
        # hiredis packs in C: 1 us for a read against redis-py's 7 (its asyncio client packs in
        # Python); the connection's own health check is the reader's and writer's traffic.
        await self.conn.send_packed_command(hiredis.pack_command(args), check_health=False)
        self.in_flight += 1

    async def recv(self) -> Any:
        assert self.conn is not None and self.in_flight > 0, "recv without a send"
        self.in_flight -= 1
        return await self.conn.read_response()

    async def reset(self) -> None:
        conn, self.conn, self.in_flight = self.conn, None, 0
        if conn is not None:
            await conn.disconnect()
            await self.redis.connection_pool.release(conn)
