"""Snapshots from a forked process: published when the child succeeds, never when abandoned."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
import redis
from redis.asyncio import Redis

from shard import snapshotter
from shard.config import Keys
from shard.decode import decode_json
from shard.engine import Engine
from shard.messages import Cancel, Trade
from shard.server import LocalServer
from shard.snapshotter import Snapshotter
from shard.store import Checkpoint, SnapshotMeta, Store
from shard.workload import resting_orders

from .conftest import config


def _engine(n: int) -> Engine:
    engine = Engine()
    scratch: list[Trade] = []
    for msg in resting_orders(n, 2):
        engine.apply(decode_json(msgspec.json.encode(msg)), None, scratch)
    return engine


def _wait(snap: Snapshotter, timeout: float = 30) -> SnapshotMeta:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta, failure = snap.poll()
        assert failure is None
        if meta is not None:
            return meta
        time.sleep(0.01)
    raise TimeoutError("the snapshot process did not finish")


def test_a_forked_snapshot_holds_the_state_at_the_fork(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    engine = _engine(20_000)
    cp = Checkpoint("5-0", 0, 20_000, engine.digest())
    snap = Snapshotter(config(server.url, snapshot_chunk_bytes=50_000), keys)
    assert snap.background
    assert snap.start(engine, cp) is None  # running in the background
    engine.apply(Cancel("r0"), None, [])  # the parent goes on matching meanwhile
    meta = _wait(snap)
    assert meta.chunks > 1 and snap.last_seconds > 0
    assert (meta.input_id, meta.generation, meta.events, meta.digest) == (
        "5-0", 20_000, 20_000, cp.digest,
    )  # fmt: skip

    async def publish_and_load() -> bytes:
        client = Redis.from_url(server.url)
        store = Store(client, keys, "shard")
        await store.publish_snapshot(meta)
        assert await store.snapshot_meta() == meta
        data = await store.load_snapshot(meta)
        await client.aclose()
        return data

    restored = Engine.restore(asyncio.run(publish_and_load()))
    assert restored.digest() == cp.digest != engine.digest()
    assert len(restored.book) == 20_000 == len(engine.book) + 1


def test_an_abandoned_snapshot_is_never_published(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    engine = _engine(50_000)
    snap = Snapshotter(config(server.url), keys)
    snap.start(engine, Checkpoint("9-0", 0, 50_000, engine.digest()))
    snap.abandon()
    assert snap.running is None
    assert snap.poll() == (None, None)
    assert not r.exists(keys.snapshot)


def test_a_failed_snapshot_process_is_reported(server: LocalServer, keys: Keys) -> None:
    engine = _engine(100)
    # Nothing listens on port 1: the child cannot connect and exits non-zero.
    snap = Snapshotter(config("redis://127.0.0.1:1/0", connect_timeout=1.0), keys)
    snap.start(engine, Checkpoint("3-0", 0, 100, engine.digest()))
    deadline = time.monotonic() + 30
    while True:
        meta, failure = snap.poll()
        if failure is not None:
            break
        assert meta is None and time.monotonic() < deadline
        time.sleep(0.01)
    assert "exited with 1" in failure and "ConnectionError" in failure  # the child's reason


def test_inline_snapshots_return_their_meta(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    engine = _engine(1000)
    snap = Snapshotter(config(server.url, snapshot_in_background=False), keys)
    meta = snap.start(engine, Checkpoint("7-0", 0, 1000, engine.digest()))
    assert meta is not None and meta.bytes > 0 and snap.running is None
    assert r.exists(keys.snapshot_chunk(1000, 0))


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


def test_a_stuck_snapshot_process_is_killed(
    server: LocalServer, r: redis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(50_000)
    snap = Snapshotter(config(server.url), keys)
    snap.start(engine, Checkpoint("9-0", 0, 50_000, engine.digest()))
    monkeypatch.setattr(snapshotter, "TIMEOUT", -1.0)
    meta, failure = snap.poll()
    assert meta is None and failure is not None and "killed" in failure
    assert snap.running is None
    assert not r.exists(keys.snapshot)
