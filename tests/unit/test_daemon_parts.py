"""The daemon's smaller decisions, without a server: which errors are waited out and what they
are logged as, how waits back off and give way to a stop, and when a snapshot is due."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from shard.checkpoint import Checkpoint
from shard.commit import CommitRefused, Fenced
from shard.config import Config, Keys
from shard.daemon import PROTOCOL, Trouble, assess
from shard.lease import LeaseLost
from shard.metrics import Metrics
from shard.outage import Stopping, Waits
from shard.snapshotter import Snapshots, trim_point
from shard.store import Store

PAIR = "BTC-USDT"


async def no_renewal() -> None:
    return None


def waits(stop: asyncio.Event, max_delay: float = 0.05) -> Waits:
    return Waits(Metrics(PAIR), stop, max_delay, no_renewal)


# -- the error table -----------------------------------------------------------------------------


def test_fences_and_a_lost_lease_are_the_protocol_at_work() -> None:
    assert assess(Fenced(Checkpoint(), "GAP")) is PROTOCOL
    assert assess(LeaseLost()) is PROTOCOL


def test_refused_commits_and_redis_errors_are_waited_out_with_their_kind() -> None:
    refused = assess(CommitRefused("wrong_type", "events:{P}", "the key holds a hash"))
    assert refused is not None and (refused.kind, refused.key) == ("wrong_type", "events:{P}")
    assert refused.why.startswith("the key is not a stream")
    assert refused.why.endswith("(the key holds a hash)")
    lost = RedisConnectionError("Connection refused")
    assert assess(lost) == Trouble("connection", "ConnectionError: Connection refused")
    assert assess(ResponseError("NOGROUP No such key")) == Trouble(
        "NOGROUP", "ResponseError: NOGROUP No such key"
    )


@pytest.mark.parametrize(
    "exc",
    [
        CommitRefused("bad_rows", "events:{P}", "bad_rows"),  # the daemon built a bad batch
        ResponseError("ERR syntax error"),
        OSError("the daemon's own"),
        KeyError("x"),
    ],
)
def test_anything_else_is_a_bug_that_stops_the_daemon(exc: Exception) -> None:
    assert assess(exc) is None


# -- waits ---------------------------------------------------------------------------------------


def test_retry_waits_redis_out_and_logs_the_outage_once(caplog: pytest.LogCaptureFixture) -> None:
    failures = [RedisConnectionError("Connection refused")] * 3
    calls = 0

    async def action() -> None:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop()

    async def go() -> Waits:
        w = waits(asyncio.Event())
        await w.retry(action)
        w.served()
        return w

    with caplog.at_level(logging.DEBUG, logger="shard"):
        w = asyncio.run(go())
    messages = [r.getMessage() for r in caplog.records]
    assert calls == 4 and not w.troubled
    assert messages.count("waiting for redis; retrying with backoff") == 1
    assert messages.count("still waiting for redis") == 2
    assert messages[-1] == "redis serves the daemon again"


def test_retry_raises_at_once_what_is_not_waited_out() -> None:
    async def action() -> None:
        raise ResponseError("ERR unknown command")

    with pytest.raises(ResponseError):
        asyncio.run(waits(asyncio.Event()).retry(action))


def test_a_stop_ends_a_wait_at_once() -> None:
    async def action() -> None:
        raise RedisConnectionError("Connection refused")

    async def go() -> float:
        stop = asyncio.Event()
        w = waits(stop, max_delay=60.0)
        w.failures = 30  # the next backoff is the full minute
        loop = asyncio.get_running_loop()
        started = loop.time()
        loop.call_later(0.05, stop.set)
        assert not await w.pause(60.0)
        with pytest.raises(Stopping):
            await w.retry(action)
        return loop.time() - started

    assert asyncio.run(go()) < 5.0


def test_failures_in_the_loop_grow_the_backoff_until_served() -> None:
    async def go() -> Waits:
        w = waits(asyncio.Event(), max_delay=0.01)
        for _ in range(3):
            await w.failed("OOM", "over maxmemory")
        assert w.failures == 3 and w.troubled and w.outage.kind == "OOM"
        w.served()
        return w

    w = asyncio.run(go())
    assert w.failures == 0 and w.outage.kind is None


# -- the snapshot policy -------------------------------------------------------------------------


def snapshots(**overrides: object) -> Snapshots:
    config = Config(pair=PAIR, **overrides)  # type: ignore[arg-type]
    store = Store(Redis(), Keys(PAIR), "shard")  # never connects: the policy makes no call
    return Snapshots(config, Keys(PAIR), store, Metrics(PAIR), waits(asyncio.Event()))


def test_a_snapshot_is_due_after_so_many_inputs_or_seconds_with_one() -> None:
    s = snapshots(snapshot_every_inputs=100, snapshot_every_seconds=10.0)
    now = s.began
    assert not s.due(0, now + 1000)  # nothing new: never
    assert not s.due(99, now + 1)
    assert s.due(100, now + 1)  # counting the inputs in doubt
    s.since = 40
    assert not s.due(59, now + 1) and s.due(60, now + 1)
    assert s.due(1, now + 10.0)  # time, with at least one input


def test_inputs_are_trimmed_below_the_snapshot_or_keep_inputs_ms_before_it() -> None:
    assert trim_point("1700000005000-3", 0) == "1700000005000-3"
    assert trim_point("1700000005000-3", 2000) == "1700000003000-0"
    assert trim_point("1000-3", 5000) == "0-0"
