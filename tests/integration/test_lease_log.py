"""The lease's log lines: a standby says it took the pair over even when Redis errors cut its
wait into several calls of :meth:`Lease.take`."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis
from redis.asyncio import Redis

from shard.config import Keys
from shard.lease import Lease
from shard.metrics import Metrics
from shard.server import LocalServer
from shard.store import Store

from .helpers import PAIR, config


async def _until_logged(caplog: pytest.LogCaptureFixture, message: str) -> None:
    for _ in range(500):
        if any(rec.getMessage() == message for rec in caplog.records):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{message!r} was never logged")


async def test_a_standby_cut_off_by_a_redis_error_still_logs_the_take_over(
    server: LocalServer, r: redis.Redis, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    r.set(keys.lease, "other", px=60_000)
    client = Redis.from_url(server.url)
    # Nothing listens on port 1: every call through this client fails.
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1.0)
    store = Store(client, keys, "shard")
    lease = Lease(config(server.url, instance="me"), keys, store, Metrics(PAIR), asyncio.Event())
    try:
        with caplog.at_level(logging.INFO, logger="shard"):
            waiting = asyncio.create_task(lease.take())
            await _until_logged(caplog, "standby: another daemon holds the pair")
            store.bind(dead)  # the standby's next poll fails: the wait is cut off
            with pytest.raises(redis.ConnectionError):
                await asyncio.wait_for(waiting, 10)
            store.bind(client)
            r.delete(keys.lease)  # the holder is gone
            await asyncio.wait_for(lease.take(), 10)
        assert lease.held and r.get(keys.lease) == b"me"
        messages = [rec.getMessage() for rec in caplog.records]
        assert messages.count("standby: another daemon holds the pair") == 1
        assert messages[-1] == "took over the pair"
    finally:
        await dead.aclose()
        await client.aclose()
