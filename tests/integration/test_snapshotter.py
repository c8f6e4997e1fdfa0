"""Snapshots written a slice at a time beside a running engine: published when the task
succeeds, never when abandoned; the bytes are those of the state at the opening."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import redis
from redis.asyncio import Redis

from shard.checkpoint import Checkpoint, SnapshotMeta
from shard.config import Keys
from shard.decode import decode_json
from shard.engine import Engine
from shard.messages import Cancel, Order, Trade
from shard.server import LocalServer
from shard.snapshotter import Snapshotter
from shard.store import Store
from shard.workload import resting_orders

from .helpers import config


def _engine(n: int) -> Engine:
    engine = Engine()
    scratch: list[Trade] = []
    for msg in resting_orders(n, 2):
        engine.apply(decode_json(msgspec.json.encode(msg)), None, scratch)
    return engine


def _with_client(url: str, body: Callable[[Redis], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        client = Redis.from_url(url)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def _checkpoint(r: redis.Redis, keys: Keys, events: int) -> None:
    """The checkpoint a published snapshot may not be ahead of."""
    r.hset(keys.checkpoint, mapping={"last_id": "1-0", "trades": 0, "events": events})


def _inline(url: str, snap: Snapshotter, engine: Engine, cp: Checkpoint, keys: Keys) -> Any:
    """Run an inline snapshot to its end; what :meth:`Snapshotter.poll` says then."""

    async def body(client: Redis) -> Any:
        await snap.start(engine, cp, Store(client, keys, "shard"))
        assert snap.running is not None and snap.running.task.done()
        return snap.poll()

    return _with_client(url, body)


async def _wait(snap: Snapshotter, timeout: float = 30) -> SnapshotMeta:
    for _ in range(int(timeout / 0.001)):
        meta, failure = snap.poll()
        assert failure is None
        if meta is not None:
            return meta
        await asyncio.sleep(0.001)
    raise TimeoutError("the snapshot did not finish")


def test_a_sliced_snapshot_holds_the_state_at_its_start(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    engine = _engine(20_000)
    cp = Checkpoint("5-0", 0, 20_000, engine.digest())
    snap = Snapshotter(
        config(server.url, snapshot_chunk_bytes=50_000, snapshot_slice_orders=500), keys
    )
    assert snap.background
    _checkpoint(r, keys, 20_000)
    changed: list[int] = []

    async def body(client: Redis) -> bytes:
        await snap.start(engine, cp, Store(client, keys, "shard"))  # running beside us
        scratch: list[Trade] = []
        n = 0
        while snap.running is not None and not snap.running.task.done():
            # Matching goes on between slices: cancels, trades and new orders.
            engine.apply(Cancel(f"r{n}"), None, scratch)
            engine.apply(Order(f"x{n}", "sell", 1, 1, "limit", 0), None, scratch)  # trades
            n += 1
            await asyncio.sleep(0)
        changed.append(n)
        meta = await _wait(snap)
        assert meta.chunks > 1 and snap.last_seconds > 0
        assert (meta.input_id, meta.generation, meta.events, meta.digest) == (
            "5-0", 20_000, 20_000, cp.digest,
        )  # fmt: skip
        store = Store(client, keys, "shard")
        assert await store.snapshot_meta() == meta  # published by the task
        return await store.load_snapshot(meta)

    restored = Engine.restore(_with_client(server.url, body))
    assert changed[0] > 10  # the engine really moved while the snapshot was written
    assert restored.digest() == cp.digest != engine.digest()
    assert restored.snapshot() == _engine(20_000).snapshot()
    assert engine.book.cut is None  # released


def test_an_abandoned_snapshot_is_never_published(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    engine = _engine(50_000)
    snap = Snapshotter(config(server.url), keys)

    async def body(client: Redis) -> None:
        await snap.start(
            engine, Checkpoint("9-0", 0, 50_000, engine.digest()), Store(client, keys, "shard")
        )
        await asyncio.sleep(0)
        await snap.abandon()
        assert snap.running is None
        assert snap.poll() == (None, None)

    _with_client(server.url, body)
    assert not r.exists(keys.snapshot)
    assert engine.book.cut is None
    assert engine.snapshot_writer().step(10**9) == engine.snapshot()  # a new one may start


def test_a_failed_snapshot_is_reported(server: LocalServer, keys: Keys) -> None:
    engine = _engine(100)
    snap = Snapshotter(config(server.url), keys)

    async def body(client: Redis) -> str:
        # Nothing listens on port 1: the snapshot's connection fails.
        dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1.0)
        try:
            await snap.start(
                engine, Checkpoint("3-0", 0, 100, engine.digest()), Store(dead, keys, "shard")
            )
            for _ in range(30_000):
                meta, failure = snap.poll()
                if failure is not None:
                    return failure
                assert meta is None
                await asyncio.sleep(0.001)
            raise TimeoutError("no failure reported")
        finally:
            await dead.aclose()

    failure = _with_client(server.url, body)
    assert "snapshot failed" in failure and "ConnectionError" in failure
    assert engine.book.cut is None


def test_long_batches_do_not_stall_a_background_snapshot(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """Draining a backlog, each turn of the loop is a long batch: a slice then covers the time
    since the last one, so the snapshot keeps its pace in orders a millisecond."""
    engine = _engine(20_000)  # about 10 orders a level: a slice of 10 is one level
    cp = Checkpoint("5-0", 0, 20_000, engine.digest())
    snap = Snapshotter(config(server.url, snapshot_slice_orders=10), keys)
    _checkpoint(r, keys, 20_000)

    async def body(client: Redis) -> int:
        await snap.start(engine, cp, Store(client, keys, "shard"))
        batches = 0
        while snap.running is not None and not snap.running.task.done():
            time.sleep(0.004)  # a 4 ms batch holds the loop
            batches += 1
            await asyncio.sleep(0)
        await _wait(snap)
        return batches

    batches = _with_client(server.url, body)
    # One level a batch would take about 2,000 batches; at 10 orders a millisecond, ~500.
    assert batches < 1000, batches
    assert r.get(keys.snapshot_chunk(20_000, 0)) == engine.snapshot()[: 1 << 20]


def test_inline_snapshots_return_their_meta(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    engine = _engine(1000)
    snap = Snapshotter(config(server.url, snapshot_in_background=False), keys)
    cp = Checkpoint("7-0", 0, 1000, engine.digest())
    _checkpoint(r, keys, 1000)
    meta, failure = _inline(server.url, snap, engine, cp, keys)
    assert failure is None and meta.bytes > 0 and snap.running is None
    assert r.get(keys.snapshot_chunk(1000, 0)) == engine.snapshot()
    assert r.hget(keys.snapshot, "generation") == b"1000"


def test_chunks_cut_the_bytes_at_fixed_offsets(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """Chunk i holds bytes [i * size, (i + 1) * size): two writers of one generation write the
    same chunks, whatever their slices."""
    engine = _engine(5000)
    data = engine.snapshot()
    _checkpoint(r, keys, 5000)
    for slice_orders in (1, 700, 10**9):
        r.delete(keys.snapshot)
        cfg = config(
            server.url, snapshot_in_background=False, snapshot_chunk_bytes=4096,
            snapshot_slice_orders=slice_orders,
        )  # fmt: skip
        snap = Snapshotter(cfg, keys)
        cp = Checkpoint("7-0", 0, 5000, engine.digest())
        meta, failure = _inline(server.url, snap, engine, cp, keys)
        assert failure is None
        assert meta.chunks == -(-len(data) // 4096) and meta.bytes == len(data)
        stored = [r.get(keys.snapshot_chunk(5000, i)) for i in range(meta.chunks)]
        assert stored == [data[i : i + 4096] for i in range(0, len(data), 4096)]


def test_chunks_of_a_generation_never_published_are_deleted(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    live = [keys.snapshot_chunk(3, i) for i in range(2)]
    orphan = [keys.snapshot_chunk(5, i) for i in range(3)]
    for key in live + orphan:
        r.set(key, b"x")

    async def begin(generation: int) -> None:
        client = Redis.from_url(server.url)
        await Store(client, keys, "shard").begin_snapshot(generation, 3)
        await client.aclose()

    asyncio.run(begin(5))  # a writer of generation 5 is killed before publishing it ...
    assert all(r.exists(k) for k in live + orphan)
    asyncio.run(begin(8))  # ... so the next snapshot deletes its chunks, not the live ones
    assert all(r.exists(k) for k in live)
    assert not any(r.exists(k) for k in orphan)
    assert r.get(keys.snapshot_writing) == b"8"


def test_a_generation_already_stored_is_not_written_again(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    engine = _engine(1000)
    cp = Checkpoint("7-0", 0, 1000, engine.digest())
    snap = Snapshotter(config(server.url, snapshot_in_background=False), keys)
    _checkpoint(r, keys, 1000)
    meta, failure = _inline(server.url, snap, engine, cp, keys)
    assert failure is None and meta.generation == 1000
    r.delete(keys.snapshot_chunk(1000, 0))
    assert _inline(server.url, snap, engine, cp, keys) == (None, None)  # the header names it
    assert not r.exists(keys.snapshot_chunk(1000, 0))  # not rewritten
    assert engine.book.cut is None


def test_publishing_is_fenced(server: LocalServer, r: redis.Redis, keys: Keys) -> None:
    """The header never moves back (a slower writer), nor ahead of the checkpoint (a Redis
    that lost its last writes); either way the old snapshot and its chunks stay."""
    engine = _engine(1000)
    snap = Snapshotter(config(server.url, snapshot_in_background=False), keys)
    _checkpoint(r, keys, 1500)
    meta, failure = _inline(server.url, snap, engine, Checkpoint("9-0", 0, 1500, "d"), keys)
    assert failure is None
    older = Checkpoint("7-0", 0, 1000, engine.digest())
    meta, failure = _inline(server.url, snap, engine, older, keys)
    assert meta is None and "not published" in failure and "another writer" in failure
    assert r.hget(keys.snapshot, "generation") == b"1500"
    ahead = Checkpoint("11-0", 0, 2000, engine.digest())  # the checkpoint says 1500
    meta, failure = _inline(server.url, snap, engine, ahead, keys)
    assert meta is None and "behind it" in failure
    assert r.hget(keys.snapshot, "generation") == b"1500"
    assert r.exists(keys.snapshot_chunk(1500, 0))
