"""Exactly-once through faults: the daemon SIGKILLed at random points, Redis killed and
restarted with its append-only file, restarts after snapshots and trims, two daemons at once.
In every case the output streams must equal an uninterrupted run's, byte for byte, and the
market data must follow the book with no ``seq`` gap or repeat and every checksum right."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from shard.checkpoint import Checkpoint
from shard.config import Keys, load
from shard.outage import NotYet
from shard.recovery import RecoveryError, recover
from shard.server import LocalServer
from shard.store import Store
from shard.transport import connect
from shard.workload import standard_mix

from .helpers import (
    assert_exactly_once,
    finish_daemon,
    kill_at_random_points,
    publish,
    start_daemon,
    stop_daemon,
    wait_events,
)

pytestmark = pytest.mark.slow


def entries_of(client: redis.Redis, ids: list[str], messages: list[dict]) -> list:
    """The input entries as the daemon saw them (flat fields, as bytes)."""
    return [
        (i, {k.encode(): str(v).encode() for k, v in m.items()})
        for i, m in zip(ids, messages, strict=True)
    ]


@pytest.mark.parametrize("ack", ["xack", "setid"])
def test_sigkill_at_random_points(
    server: LocalServer, r: redis.Redis, keys: Keys, ack: str
) -> None:
    """Kill -9 the daemon again and again at random instants (start-up, recovery, mid-batch,
    mid-commit, mid-snapshot), restarting it each time."""
    messages = list(standard_mix(100_000, seed=21))
    ids = publish(r, messages)
    env = {"SHARD_BATCH_SIZE": "10", "SHARD_SNAPSHOT_EVERY_INPUTS": "5000", "SHARD_ACK": ack}
    progress = kill_at_random_points(
        r, keys, server.url, len(messages), env=env, rng=random.Random(7), most_ahead=12_000,
        kills=60,
    )  # fmt: skip
    code, log = finish_daemon(start_daemon(server.url, "--exit-when-idle", env=env))
    assert code == 0, log
    mid_stream = [n for n in progress if 0 < n < len(messages)]
    assert len(mid_stream) >= 5, progress
    assert r.exists(keys.snapshot)
    assert r.xlen(keys.orders) < len(messages)  # trimmed below a snapshot
    assert_exactly_once(r, keys, entries_of(r, ids, messages))


@pytest.mark.parametrize("how", ["sigkill", "shutdown"])
def test_redis_restart_mid_stream(tmp_path: Path, keys: Keys, how: str) -> None:
    """Redis dies (SIGKILL, appendfsync everysec: the last second of commits may be lost) or
    shuts down, and comes back from its append-only file while the daemon keeps running."""
    srv = LocalServer(tmp_path / "redis", appendfsync="everysec").start()
    try:
        client = redis.Redis.from_url(srv.url)
        messages = list(standard_mix(40_000, seed=33))
        ids = publish(client, messages)
        time.sleep(1.5)  # inputs reach the disk (everysec), so only outputs can be lost
        proc = start_daemon(
            srv.url, env={"SHARD_BATCH_SIZE": "50", "SHARD_RECONNECT_MAX_DELAY": "0.5"}
        )
        wait_events(client, keys, 2000)
        for _ in range(2):
            srv.kill() if how == "sigkill" else srv.stop()
            time.sleep(0.3)
            srv.start()
            client = redis.Redis.from_url(srv.url)
            time.sleep(0.5)
        wait_events(client, keys, len(messages), timeout=120)
        code, log = stop_daemon(proc)
        assert code == 0, log
        assert '"msg":"waiting for redis; retrying with backoff"' in log
        assert_exactly_once(client, keys, entries_of(client, ids, messages))
        client.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("background", ["true", "false"], ids=["sliced", "inline"])
def test_restart_after_snapshot_and_trim(
    server: LocalServer, r: redis.Redis, keys: Keys, background: str
) -> None:
    messages = list(standard_mix(12_000, seed=5))
    first = publish(r, messages[:6000])
    env = {
        "SHARD_SNAPSHOT_EVERY_INPUTS": "1000",
        "SHARD_SNAPSHOT_CHUNK_BYTES": "2048",
        "SHARD_BATCH_SIZE": "250",
        "SHARD_SNAPSHOT_IN_BACKGROUND": background,
    }
    code, log = finish_daemon(start_daemon(server.url, "--exit-when-idle", env=env))
    assert code == 0, log
    meta = r.hgetall(keys.snapshot)
    assert int(meta[b"chunks"]) > 3
    # A snapshot falls at the first batch boundary after each 1,000 inputs (reads start from one
    # entry and double, so the boundaries are not multiples of 250); sliced, one that falls due
    # while the previous one is still being written waits for it. Either way the last one is
    # within the last 1,000 inputs.
    at = first.index(meta[b"input_id"].decode())
    assert 4999 <= at <= 5999
    assert r.xlen(keys.orders) == 6000 - at  # everything below the snapshot is trimmed
    second = publish(r, messages[6000:])
    code, log = finish_daemon(start_daemon(server.url, "--exit-when-idle", env=env))
    assert code == 0, log
    assert f'"replayed":{5999 - at}' in log
    assert_exactly_once(r, keys, entries_of(r, first + second, messages))
    # Old snapshot generations are deleted: only the current one's chunks remain.
    chunks = [k for k in r.keys(f"{keys.snapshot}:*")]
    assert len(chunks) == int(r.hget(keys.snapshot, "chunks"))


def test_recovery_replays_inputs_after_the_snapshot(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    messages = list(standard_mix(5000, seed=8))
    ids = publish(r, messages)
    env = {"SHARD_SNAPSHOT_EVERY_INPUTS": "2000", "SHARD_BATCH_SIZE": "500"}
    code, log = finish_daemon(start_daemon(server.url, "--max-inputs", "3000", env=env))
    assert code == 0, log
    covered = int(r.hget(keys.snapshot, "events"))  # the inputs the snapshot holds
    assert 2000 <= covered < 3000
    code, log = finish_daemon(start_daemon(server.url, "--exit-when-idle", env=env))
    assert code == 0, log
    assert f'"replayed":{3000 - covered}' in log
    assert_exactly_once(r, keys, entries_of(r, ids, messages))


def test_second_daemon_stands_by_and_takes_over(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """Two daemons for one pair: one holds the lease and works, the other waits; when the
    first is killed, the second takes over after the lease expires, exactly once."""
    messages = list(standard_mix(20_000, seed=13))
    ids = publish(r, messages[:10_000])
    env = {"SHARD_BATCH_SIZE": "50", "SHARD_LEASE_TTL": "3"}
    a = start_daemon(server.url, env={**env, "SHARD_INSTANCE": "a"})
    try:
        wait_events(r, keys, 1)
        b = start_daemon(server.url, env={**env, "SHARD_INSTANCE": "b"})
        try:
            wait_events(r, keys, 5000)
            time.sleep(0.5)
            assert r.get(keys.lease) == b"a"
        finally:
            stop_daemon(a, signal.SIGKILL)
        ids += publish(r, messages[10_000:])
        wait_events(r, keys, len(messages), timeout=120)
        assert r.get(keys.lease) == b"b"
    finally:
        code, log = stop_daemon(b)
    assert code == 0, log
    assert "standby: another daemon holds the pair" in log and "took over the pair" in log
    assert r.get(keys.lease) is None  # released on a clean stop
    assert_exactly_once(r, keys, entries_of(r, ids, messages))


def test_fence_keeps_two_active_daemons_exactly_once(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """Should two daemons ever both be active (a lease expired under a stalled holder),
    the commit fence still keeps the output exactly once. Simulated by deleting the lease
    under them over and over."""
    messages = list(standard_mix(6000, seed=17))
    ids = publish(r, messages)
    env = {"SHARD_BATCH_SIZE": "30", "SHARD_LEASE_TTL": "3"}
    a = start_daemon(server.url, env={**env, "SHARD_INSTANCE": "a"})
    b = start_daemon(server.url, env={**env, "SHARD_INSTANCE": "b"})
    try:
        deadline = time.monotonic() + 90
        while r.xlen(keys.events) < len(messages) and time.monotonic() < deadline:
            r.delete(keys.lease)  # both may now believe they hold it for a while
            time.sleep(0.05)
        wait_events(r, keys, len(messages), timeout=60)
    finally:
        (code_a, log_a), (code_b, log_b) = stop_daemon(a), stop_daemon(b)
    assert code_a == code_b == 0, log_a + log_b
    assert_exactly_once(r, keys, entries_of(r, ids, messages))


def test_recovery_refuses_missing_inputs(server: LocalServer, r: redis.Redis, keys: Keys) -> None:
    """Inputs deleted behind the checkpoint cannot be replayed: crash loudly, publish nothing."""
    ids = publish(r, list(standard_mix(1000, seed=2)))
    code, _ = finish_daemon(start_daemon(server.url, "--exit-when-idle"))
    assert code == 0
    r.xdel(keys.orders, *ids[100:200])
    r.xadd(keys.orders, {"type": "cancel", "order_id": "x"})
    before = r.xlen(keys.events)
    code, log = finish_daemon(start_daemon(server.url, "--exit-when-idle"))
    assert code != 0
    assert "RecoveryError" in log and "does not reproduce the checkpoint" in log
    assert r.xlen(keys.events) == before


@pytest.mark.parametrize("ack", ["xack", "setid"])
def test_connections_killed_under_the_daemon(
    server: LocalServer, r: redis.Redis, keys: Keys, ack: str
) -> None:
    """CLIENT KILL drops the daemon's connections mid-read and mid-commit, over and over."""
    messages = list(standard_mix(40_000, seed=29))
    ids = publish(r, messages[:10_000])
    proc = start_daemon(
        server.url,
        env={"SHARD_BATCH_SIZE": "25", "SHARD_RECONNECT_MAX_DELAY": "0.3", "SHARD_ACK": ack},
    )
    rng = random.Random(3)
    kills = 0
    try:
        # Input keeps arriving while the kills go on, so they land mid-read, mid-commit and
        # while idle, however fast the daemon gets through what is there.
        for i in range(40):
            time.sleep(rng.uniform(0.05, 0.25))
            kills += int(r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
            ids += publish(r, messages[10_000 + 750 * i : 10_000 + 750 * (i + 1)])
        try:
            wait_events(r, keys, len(messages), timeout=60)
        except TimeoutError as exc:
            code, log = stop_daemon(proc)
            crash = [x for x in log.splitlines() if "crashed" in x]
            raise AssertionError(f"{exc}; daemon log:\n{log[-2000:]}\n{crash}") from None
    finally:
        if proc.poll() is None:
            code, log = stop_daemon(proc)
    assert code == 0, log
    assert_exactly_once(r, keys, entries_of(r, ids, messages))
    assert kills >= 10
    assert '"msg":"waiting for redis; retrying with backoff"' in log


class _StaleFirstRead(Store):
    """A store whose first checkpoint read returns ``stale``: as if another daemon (one that
    has not yet seen its lease go) committed and stored a snapshot between recovery's read of
    the checkpoint and its read of the snapshot."""

    def __init__(self, stale: Checkpoint, *args: Any) -> None:
        super().__init__(*args)
        self.stale: Checkpoint | None = stale

    async def checkpoint(self) -> Checkpoint | None:
        stale, self.stale = self.stale, None
        return stale if stale is not None else await super().checkpoint()


async def test_recovery_reads_again_when_the_checkpoint_moves_under_it(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """A snapshot ahead of the checkpoint recovery read first is the race of a lease handover,
    not a checkpoint moved back: recovery is tried again (NotYet, waited out), and succeeds.
    A checkpoint that is still behind the snapshot when read again is refused as before."""
    ids = publish(r, list(standard_mix(1000, seed=3)))
    env = {"SHARD_SNAPSHOT_EVERY_INPUTS": "200"}
    code, log = finish_daemon(start_daemon(server.url, "--exit-when-idle", env=env))
    assert code == 0, log
    config = load(pair=keys.pair, redis_url=server.url)
    client = connect(config)

    async def renew() -> None:
        return None

    try:
        real = await Store(client, keys, config.group).checkpoint()
        assert real is not None and real.last_id == ids[-1]
        stale = msgspec.structs.replace(real, last_id=ids[10])  # before every snapshot
        with pytest.raises(NotYet, match="moved during recovery"):
            await recover(_StaleFirstRead(stale, client, keys, config.group), config, renew)
        done = await recover(Store(client, keys, config.group), config, renew)
        assert done.checkpoint.last_id == ids[-1]
        r.hset(keys.checkpoint, "last_id", ids[10])  # moved back for good: refused
        with pytest.raises(RecoveryError, match="ahead of the checkpoint"):
            await recover(Store(client, keys, config.group), config, renew)
    finally:
        await client.aclose()
