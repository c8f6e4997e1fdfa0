"""The link to Redis: the daemon's client, the pipes it sends on, the errors it waits out
instead of stopping, and the command-line tools' client (same URL, timeouts and TLS keys)."""

from __future__ import annotations

from typing import Any, Final, cast

import hiredis
import redis
from redis.asyncio import Redis
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shard.cluster import cluster_enabled
from shard.config import Config

REDIS_ERRORS: Final = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError)
"""The connection is gone or the server cannot serve yet: reconnect and resynchronise. redis-py
raises these for every socket error (it wraps ``OSError``); an ``OSError`` that reaches the
daemon unwrapped comes from its own code, a bug, and stops it."""

WAITED_OUT: Final = frozenset(
    {
        "OOM",  # over maxmemory: a commit is refused before it runs (see shard.store)
        "BUSY",  # another script is running too long
        "LOADING",
        "READONLY",
        "MASTERDOWN",
        "NOREPLICAS",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "MOVED",
        "ASK",
        "UNBLOCKED",  # a blocked read of a master demoted to a replica
        "NOPERM",  # an ACL that lacks a command or a key: an operator fixes it
        "NOGROUP",  # the consumer group was deleted: the resync creates it again
        "WRONGTYPE",  # a key replaced by another type: an operator fixes it
    }
)
"""Error replies that say "not now" rather than "your command is wrong": the daemon waits them
out with backoff (one log line per kind, a metric) instead of stopping. Any other error reply is
a bug in the daemon, and stops it loudly."""

RETRIED: Final = (*REDIS_ERRORS, ResponseError)
"""What an ``except`` around Redis calls catches; :func:`waited_out` then sorts it."""


def error_code(exc: BaseException) -> str | None:
    """The code of a Redis error reply (``OOM``, ``NOGROUP``, ``ERR`` ...), else None. redis-py
    strips the code from the message of the classes it maps (``OutOfMemoryError``) and keeps it
    in ``status_code`` from version 8 on; older versions leave only the class."""
    if not isinstance(exc, ResponseError):
        return None
    code = getattr(exc, "status_code", None)
    if "can't run this command" in str(exc):  # an ACL refusal inside a script
        return "NOPERM"
    if code:
        return str(code)
    for cls, name in _CODES:
        if isinstance(exc, cls):
            return name
    word = str(exc).split(" ", 1)[0]
    return word if word.isalpha() and word.isupper() else "ERR"


_CODES: Final = (
    (OutOfMemoryError, "OOM"),
    (NoPermissionError, "NOPERM"),
    (ReadOnlyError, "READONLY"),
)


def waited_out(exc: BaseException) -> bool:
    """Whether the daemon waits ``exc`` out (reconnect or back off, then resynchronise)."""
    return isinstance(exc, REDIS_ERRORS) or error_code(exc) in WAITED_OUT


def text(value: object) -> str | None:
    """A reply value as text (bytes decoded as UTF-8; None stays None)."""
    if isinstance(value, bytes):
        return value.decode()
    return None if value is None else str(value)


def describe(exc: BaseException) -> str:
    """An error for a log line: its class and its message (redis-py 8's ``repr()`` is only a
    category such as ``network:ConnectionError``, which hides a refused connection, a failed
    certificate check and a DNS failure alike)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def plain_async_client(config: Config, url: str | None = None, **options: Any) -> Redis:
    """An async RESP2 client from the config's URL (or ``url``, the same with another node's
    address), timeouts and TLS keys (the URL carries no query parameters, so none of these is
    overridden), without redis-py's connection-level retries: the caller resynchronises
    instead."""
    return Redis.from_url(
        url or config.redis_url,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.connect_timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
        **config.tls_options(),
        **options,
    )


def connect(config: Config, url: str | None = None) -> Redis:
    """A client for the daemon (:func:`plain_async_client`), on the config's URL or ``url``.
    Connection-level retries are off on purpose: a silently re-sent XREADGROUP could skip
    entries; the daemon resynchronises instead."""
    client = plain_async_client(config, url, client_name=f"shard:{config.pair}")
    # XRANGE replies stay raw ([id, [name, value, ...]]): the decoder reads the flat list, which
    # saves building a dict per entry in redis-py.
    client.set_response_callback("XRANGE", _raw)
    return client


def _cluster_mode(config: Config) -> bool | None:
    """Whether the tools treat the URL as a cluster node from the config alone (None: ask the
    server, ``cluster = "auto"``)."""
    if config.cluster == "no" or config.redis_url.startswith("unix://"):
        return False
    return True if config.cluster == "yes" else None


def sync_client(config: Config) -> redis.Redis:
    """A client for the command-line tools (RESP2, bytes replies, redis-py's retries on): the
    config's URL, connect timeout and TLS keys, as the daemon's. On a Redis Cluster (the
    ``cluster`` key, or ``INFO cluster`` asked once when it is ``auto``) a
    :class:`redis.RedisCluster` from that node, which sends each command to its key's owner;
    the tools' commands each touch one pair's keys, so one slot."""
    options: dict[str, Any] = {
        "socket_connect_timeout": config.connect_timeout,
        "socket_keepalive": True,
        "protocol": 2,
        **config.tls_options(),
    }
    plain = redis.Redis.from_url(config.redis_url, **options)
    mode = _cluster_mode(config)
    if mode is False:
        return plain
    if mode is None:
        try:
            enabled = cluster_enabled(plain.info("cluster"))
        except redis.RedisError:
            return plain  # the command meets the same error, and reports it as it does today
        if not enabled:
            return plain
    plain.close()
    # A RedisCluster has every command of a Redis client the tools use (typed as one).
    return cast(redis.Redis, redis.RedisCluster.from_url(config.redis_url, **options))


async def async_tools_client(config: Config) -> Redis:
    """An async client for the tools that follow a pair (``shard book``, a
    :class:`~shard.marketdata.BookView`): :func:`plain_async_client`, or on a Redis Cluster
    (decided as :func:`sync_client` does) a :class:`redis.asyncio.RedisCluster` from the URL's
    node with the same timeouts and TLS keys and its retries off. It sends each command, and a
    one-slot transaction, to the owner of its keys, follows ``MOVED`` after a failover or a
    migration and ``ASK`` during one, and learns the cluster again after a lost connection."""
    plain = plain_async_client(config)
    mode = _cluster_mode(config)
    if mode is False:
        return plain
    if mode is None:
        try:
            enabled = cluster_enabled(await plain.info("cluster"))
        except redis.RedisError:
            return plain  # the view's first read meets the same error and resyncs
        if not enabled:
            return plain
    await plain.aclose()
    cluster = AsyncRedisCluster.from_url(
        config.redis_url,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.connect_timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
        **config.tls_options(),
    )
    return cast(Redis, cluster)  # the commands a view sends, typed as a Redis client's


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
        # hiredis packs in C, several times faster than redis-py's asyncio packer (Python); the
        # connection's own health check is the reader's and writer's traffic.
        await self.conn.send_packed_command(hiredis.pack_command(args), check_health=False)
        self.in_flight += 1

    async def recv(self) -> Any:
        if self.conn is None or self.in_flight <= 0:
            raise RuntimeError("Channel.recv without a send: a bug in the caller")
        self.in_flight -= 1
        return await self.conn.read_response()

    async def reset(self) -> None:
        conn, self.conn, self.in_flight = self.conn, None, 0
        if conn is not None:
            await conn.disconnect()
            await self.redis.connection_pool.release(conn)
