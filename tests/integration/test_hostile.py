"""What a hostile user or a careless operator does to a running pair (issue 14; the reproductions
of ``shared/notes/hostile_probe.md``): forged output entries, keys of the wrong type, a deleted
checkpoint, group or output stream, Redis out of memory, a lease without an expiry. Each must
end with outputs equal to an uninterrupted run's, and the daemon must wait, not crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shard.config import Keys
from shard.server import LocalServer
from shard.wire import trade_from_fields
from shard.workload import standard_mix

from .helpers import (
    PAIR,
    assert_market_data,
    expected_outputs,
    publish,
    read_outputs,
    run_until_idle,
    stored_book,
    wait_events,
)
from .test_faults import assert_exactly_once, entries_of

MAX_ID = "18446744073709551615-18446744073709551615"


class Daemon:
    """A ``shard run`` subprocess whose JSON log goes to a file the test can poll."""

    def __init__(self, url: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self.file = open(log, "ab")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shard", "run", "--pair", PAIR, "--redis-url", url],
            stdout=subprocess.DEVNULL,
            stderr=self.file,
            env={**os.environ, "SHARD_BLOCK_MS": "100", **(env or {})},
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert self.proc.poll() is None, f"the daemon exited with {self.proc.returncode}"
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not in the log after {timeout} s:\n{self.log}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.file.close()
        return code


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def start(daemons: list[Daemon], url: str, tmp_path: Path, **env: str) -> Daemon:
    daemon = Daemon(url, tmp_path / f"daemon-{len(daemons)}.log", env)
    daemons.append(daemon)
    return daemon


def assert_once_per_outage(log: str) -> None:
    """Each kind of wait is logged when it begins and not again until it has ended."""
    waiting = None
    for line in map(json.loads, log.splitlines()):
        if line["msg"] == "waiting for redis; retrying with backoff":
            assert line["kind"] != waiting, f"logged twice in one outage: {line}"
            waiting = line["kind"]
        elif line["msg"] == "redis serves the daemon again":
            waiting = None


def trade_ids(client: redis.Redis, keys: Keys) -> list[int]:
    return [trade_from_fields(f).trade_id for _, f in client.xrange(keys.trades)]


# -- D1: a commit that would fail half-way writes nothing -----------------------------------------


@pytest.mark.parametrize("sabotage", ["max_id", "wrong_type"])
def test_an_output_stream_that_cannot_take_the_batch_gets_nothing(
    server: LocalServer,
    r: redis.Redis,
    keys: Keys,
    tmp_path: Path,
    daemons: list[Daemon],
    sabotage: str,
) -> None:
    """An entry with the largest ID in events:{P}, or events:{P} replaced by a string, made the
    events' XADD fail after the trades' XADD: the trades stayed, and each restart published
    them again. Now the commit is refused before it writes, the daemon waits (through restarts
    too), and once the stream is repaired the outputs are exactly once."""
    messages = [
        {"type": "order", "order_id": "s1", "side": "sell", "price": 100, "quantity": 5},
        {"type": "order", "order_id": "b1", "side": "buy", "price": 100, "quantity": 5},
        {"type": "order", "order_id": "s2", "side": "sell", "price": 100, "quantity": 5},
        {"type": "order", "order_id": "b2", "side": "buy", "price": 100, "quantity": 5},
    ]
    ids = publish(r, messages[:2])
    assert _run_idle(server.url)[0] == 0
    assert trade_ids(r, keys) == [1]
    last_event = r.xrevrange(keys.events, count=1)[0][0].decode()
    if sabotage == "max_id":
        r.xadd(keys.events, {"input_id": "x", "status": "x"}, id=MAX_ID)
    else:
        r.rename(keys.events, "saved")
        r.set(keys.events, "not a stream")
    ids += publish(r, messages[2:])
    for _ in range(3):  # restarts, as compose's restart policy or `shard up` would do
        daemon = start(daemons, server.url, tmp_path)
        daemon.wait_log('"msg":"waiting for redis; retrying with backoff"')
        time.sleep(0.5)
        assert daemon.alive()
        assert trade_ids(r, keys) == [1]  # nothing was written, not even the trades
        assert daemon.stop() == 0
    # A stream of another type already stops the recovery's check of the outputs (WRONGTYPE);
    # one out of IDs gets to the commit, which is refused with nothing written.
    kind = "ids_exhausted" if sabotage == "max_id" else "WRONGTYPE"
    assert f'"kind":"{kind}"' in daemon.log
    if sabotage == "max_id":
        assert f'"key":"{keys.events}"' in daemon.log
    assert daemon.log.count('"msg":"waiting for redis') == 1  # one line, not one per retry

    daemon = start(daemons, server.url, tmp_path)
    daemon.wait_log('"kind":"' + kind)
    # The operator's repair, as docs/daemon.md gives it.
    if sabotage == "max_id":  # rebuilt without the forged entry (Valkey refuses XSETID back)
        for entry_id, fields in r.xrange(keys.events, max=last_event):
            r.xadd("rebuilt", fields, id=entry_id)
        r.rename("rebuilt", keys.events)
    else:
        r.rename("saved", keys.events)
    wait_events(r, keys, len(messages))
    daemon.wait_log('"msg":"redis serves the daemon again"')
    assert daemon.stop() == 0
    assert trade_ids(r, keys) == [1, 2]
    assert [e.input_id for e in read_outputs(r, keys)[1]] == ids


# -- D4: Redis out of memory ----------------------------------------------------------------------


def publish_until_oom(client: redis.Redis, messages: list[dict]) -> list[tuple[str, dict]]:
    """Publish messages in chunks until the server refuses some with OOM; the (ID, message)
    of each it took."""
    taken: list[tuple[str, dict]] = []
    for start in range(0, len(messages), 200):
        chunk = messages[start : start + 200]
        pipe = client.pipeline(transaction=False)
        for msg in chunk:
            pipe.xadd(f"orders:{{{PAIR}}}", {k: str(v) for k, v in msg.items()})
        replies = pipe.execute(raise_on_error=False)
        for msg, reply in zip(chunk, replies, strict=True):
            if not isinstance(reply, Exception):
                taken.append((reply.decode(), msg))
        refused = [x for x in replies if isinstance(x, Exception)]
        if refused:
            assert all(isinstance(x, redis.exceptions.OutOfMemoryError) for x in refused)
            return taken
    raise AssertionError("the server never ran out of memory")


@pytest.mark.parametrize("when", ["running", "at_start"])
def test_out_of_memory_is_waited_out(
    tmp_path: Path, daemons: list[Daemon], keys: Keys, when: str
) -> None:
    """Over maxmemory the daemon went on committing past the limit, then its heartbeat or its
    lease got OOM and it exited 70 (at once, every time, when started then). Now no commit runs
    while Redis is over the limit, the daemon waits with one log line, and resumes by itself
    once the limit is raised; the outputs are exactly once."""
    with LocalServer(tmp_path / "redis", extra=["--maxmemory", "6mb"]) as srv:
        client = redis.Redis.from_url(srv.url)
        limit = int(client.config_get("maxmemory")["maxmemory"])
        messages = list(standard_mix(200_000, seed=3))
        daemon = None
        if when == "running":  # a slow daemon, so that a backlog is left when Redis is full
            daemon = start(daemons, srv.url, tmp_path, SHARD_BATCH_SIZE="20")
        taken = publish_until_oom(client, messages)
        ids = [i for i, _ in taken]
        if daemon is None:
            daemon = start(daemons, srv.url, tmp_path, SHARD_BATCH_SIZE="20")
        daemon.wait_log('"kind":"OOM"')
        # A commit runs only when memory dips under the limit (the server's own buffers come
        # and go), and is refused whole above it: the server stays at the limit, where the old
        # commit went on writing megabytes past it.
        used = []
        for _ in range(30):
            used.append(int(client.info("memory")["used_memory"]))
            time.sleep(0.05)
        assert daemon.alive()
        assert max(used) < limit + 256 * 1024, (max(used), limit)
        assert client.xlen(keys.events) < len(ids)  # the backlog waits for memory
        client.config_set("maxmemory", "0")
        wait_events(client, keys, len(ids))
        daemon.wait_log('"msg":"redis serves the daemon again"')
        assert_once_per_outage(daemon.log)
        assert daemon.stop() == 0
        assert_exactly_once(client, keys, entries_of(client, ids, [m for _, m in taken]))
        client.close()


# -- D2: a deleted checkpoint ---------------------------------------------------------------------


def test_a_deleted_checkpoint_is_rebuilt_not_republished(
    server: LocalServer, r: redis.Redis, keys: Keys, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """With no snapshot yet, DEL shard:{P}:checkpoint under a running daemon (and again while it
    is stopped) sent the group back to 0 and published every event and trade again. Now the
    checkpoint is rebuilt from the outputs and verified by replay."""
    messages = list(standard_mix(6_000, seed=11))
    ids = publish(r, messages[:2000])
    daemon = start(daemons, server.url, tmp_path, SHARD_BATCH_SIZE="100")
    wait_events(r, keys, 2000)
    r.delete(keys.checkpoint)
    ids += publish(r, messages[2000:4000])
    wait_events(r, keys, 4000)
    daemon.wait_log("rebuilt from the outputs")
    assert daemon.stop() == 0
    r.delete(keys.checkpoint)
    ids += publish(r, messages[4000:])
    daemon = start(daemons, server.url, tmp_path)
    wait_events(r, keys, len(messages))
    daemon.wait_log("rebuilt from the outputs")
    time.sleep(0.3)
    assert daemon.stop() == 0
    assert_exactly_once(r, keys, entries_of(r, ids, messages))


def test_a_deleted_checkpoint_with_a_snapshot_is_rebuilt(
    server: LocalServer, r: redis.Redis, keys: Keys, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The same after snapshots and input trims: the rebuild starts from the snapshot."""
    messages = list(standard_mix(3_000, seed=12))
    ids = publish(r, messages[:2000])
    env = {"SHARD_BATCH_SIZE": "100", "SHARD_SNAPSHOT_EVERY_INPUTS": "500"}
    daemon = start(daemons, server.url, tmp_path, **env)
    wait_events(r, keys, 2000)
    daemon.wait_log('"msg":"inputs trimmed"')
    assert daemon.stop() == 0
    assert r.xlen(keys.orders) < 2000
    r.delete(keys.checkpoint)
    ids += publish(r, messages[2000:])
    daemon = start(daemons, server.url, tmp_path, **env)
    wait_events(r, keys, len(messages))
    daemon.wait_log("rebuilt from the outputs")
    assert daemon.stop() == 0
    trades, events = read_outputs(r, keys)
    assert [e.input_id for e in events] == ids
    assert [t.trade_id for t in trades] == list(range(1, len(trades) + 1))


def test_a_deleted_checkpoint_that_cannot_be_rebuilt_stops_with_what_to_repair(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """Without the events, where the outputs stop cannot be known: exit 70, publish nothing,
    and say what to do."""
    messages = list(standard_mix(500, seed=13))
    publish(r, messages)
    code, log = _run_idle(server.url)
    assert code == 0, log
    trades = r.xlen(keys.trades)
    assert trades > 0
    r.delete(keys.checkpoint, keys.events)
    code, log = _run_idle(server.url)
    assert code == 70
    assert "is missing" in log and "to start the pair over, delete" in log
    assert r.xlen(keys.trades) == trades and r.exists(keys.events) == 0


def _run_idle(url: str, **env: str) -> tuple[int, str]:
    command = [sys.executable, "-m", "shard", "run", "--pair", PAIR, "--redis-url", url]
    proc = subprocess.run(
        [*command, "--exit-when-idle"],
        capture_output=True,
        env={**os.environ, "SHARD_BLOCK_MS": "100", **env},
        timeout=120,
    )
    return proc.returncode, proc.stderr.decode()


# -- D6: a deleted group; a deleted output stream; a refused trim ---------------------------------


@pytest.mark.parametrize("ack", ["setid", "xack"])
def test_a_deleted_group_is_created_again(
    server: LocalServer,
    r: redis.Redis,
    keys: Keys,
    tmp_path: Path,
    daemons: list[Daemon],
    ack: str,
) -> None:
    """XGROUP DESTROY under a running daemon made it exit 70 (NOGROUP). Now it recreates the
    group at the checkpoint and carries on, exactly once."""
    messages = list(standard_mix(4_000, seed=14))
    ids = publish(r, messages[:1000])
    daemon = start(daemons, server.url, tmp_path, SHARD_ACK=ack, SHARD_BATCH_SIZE="50")
    wait_events(r, keys, 1000)
    for part in range(1, 4):
        r.xgroup_destroy(keys.orders, "shard")
        ids += publish(r, messages[part * 1000 : (part + 1) * 1000])
        wait_events(r, keys, (part + 1) * 1000)
    daemon.wait_log("the consumer group was missing; created again")
    assert daemon.stop() == 0
    assert_exactly_once(r, keys, entries_of(r, ids, messages))
    group = {g["name"].decode(): g for g in r.xinfo_groups(keys.orders)}["shard"]
    assert group["last-delivered-id"].decode() == ids[-1]


def test_a_deleted_output_stream_is_said_and_trade_ids_go_on(
    server: LocalServer, r: redis.Redis, keys: Keys, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """DEL trades:{P} under a running daemon: the trades in it are gone (the operator's doing),
    the stream is created again by the next commit with trades, trade_id is never reused, and
    the log says so."""
    messages = list(standard_mix(2_000, seed=15))
    publish(r, messages[:1000])
    daemon = start(daemons, server.url, tmp_path)
    wait_events(r, keys, 1000)
    before = trade_ids(r, keys)
    r.delete(keys.trades)
    publish(r, messages[1000:])
    wait_events(r, keys, 2000)
    daemon.wait_log("an output stream was deleted")
    assert daemon.stop() == 0
    after = trade_ids(r, keys)
    assert after and after[0] == before[-1] + 1
    assert after == list(range(after[0], after[0] + len(after)))


def test_a_refused_input_trim_is_logged_and_retried(
    server: LocalServer, r: redis.Redis, keys: Keys, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """An ACL user without XTRIM: the trim failed silently and orders:{P} grew without bound.
    Now it is logged once, counted, and retried until it succeeds."""
    user = "trimless"
    r.acl_setuser(
        user,
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        commands=["+@all", "-xtrim"],
    )
    url = server.url.replace("redis://", f"redis://{user}:pw@")
    messages = list(standard_mix(1_000, seed=16))
    publish(r, messages)
    env = {"SHARD_SNAPSHOT_EVERY_INPUTS": "200", "SHARD_BATCH_SIZE": "100"}
    daemon = start(daemons, url, tmp_path, **env)
    daemon.wait_log("trimming inputs failed; retrying with backoff")
    assert "NOPERM" in daemon.log or "NoPermissionError" in daemon.log
    assert r.xlen(keys.orders) == 1000
    r.acl_setuser(user, enabled=True, commands=["+xtrim"])
    daemon.wait_log('"msg":"inputs trimmed"')
    assert r.xlen(keys.orders) < 1000
    assert daemon.log.count("trimming inputs failed") == 1
    assert daemon.stop() == 0
    r.acl_deluser(user)


def test_busy_server_is_waited_out(tmp_path: Path, daemons: list[Daemon], keys: Keys) -> None:
    """A script that runs too long makes Redis answer BUSY to everyone: waited out."""
    with LocalServer(tmp_path / "redis", extra=["--lua-time-limit", "100"]) as srv:
        client = redis.Redis.from_url(srv.url)
        messages = list(standard_mix(30_000, seed=17))
        ids = publish(client, messages)
        daemon = start(daemons, srv.url, tmp_path, SHARD_BATCH_SIZE="20")
        wait_events(client, keys, 1000)  # busy with the backlog when the script starts
        hog = redis.Redis.from_url(srv.url, socket_timeout=30)
        busy_loop = (
            "local t = redis.call('TIME') while true do local n = redis.call('TIME') "
            "if n[1] - t[1] >= 2 then break end end return 1"
        )
        thread = threading.Thread(target=hog.eval, args=(busy_loop, 0))
        thread.start()
        thread.join()
        hog.close()
        wait_events(client, keys, len(messages))
        daemon.wait_log('"kind":"BUSY"')
        assert daemon.stop() == 0
        assert_exactly_once(client, keys, entries_of(client, ids, messages))
        client.close()


# -- D12: a lease without an expiry ---------------------------------------------------------------


def test_a_lease_without_an_expiry_is_warned_about(
    server: LocalServer, r: redis.Redis, keys: Keys, tmp_path: Path, daemons: list[Daemon]
) -> None:
    r.set(keys.lease, "intruder")
    daemon = start(daemons, server.url, tmp_path)
    daemon.wait_log("the lease key has no expiry")
    r.delete(keys.lease)
    daemon.wait_log('"msg":"took over the pair"')
    assert daemon.stop() == 0


# -- D3: a backlog of oversize entries ------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize(("count", "size"), [(40, 10 * 2**20), (3000, 16_385)])
def test_a_backlog_of_oversize_entries_is_worked_through_in_bounded_memory(
    server: LocalServer,
    r: redis.Redis,
    keys: Keys,
    tmp_path: Path,
    daemons: list[Daemon],
    count: int,
    size: int,
) -> None:
    """40 entries of 10 MB in the backlog took the daemon to 447 MB (a read took batch_size
    entries whatever their size), and 100 under a 1 GB limit stopped the pair for good. Now a
    read's count comes from the bytes the reads before it carried (shard.reads): every entry
    gets its oversize event, the valid order behind them rests, and the daemon's peak RSS stays
    within the bound docs/daemon.md states (150 MB with the defaults)."""
    junk = b"z" * size
    pipe = r.pipeline(transaction=False)
    for i in range(count):
        pipe.xadd(keys.orders, {"type": "order", "order_id": f"big{i}", "junk": junk})
        if i % 50 == 49:
            pipe.execute()
    pipe.execute()
    publish(r, [{"type": "order", "order_id": "ok", "side": "buy", "price": 1, "quantity": 1}])
    daemon = start(daemons, server.url, tmp_path)
    wait_events(r, keys, count + 1, timeout=120)
    peak = peak_rss_mb(daemon.proc.pid)
    print(f"{count} entries of {size} bytes: daemon peak RSS {peak:.0f} MB")
    assert daemon.stop() == 0
    _, events = read_outputs(r, keys)
    assert [e.reason for e in events[:-1]] == ["oversize"] * count
    assert (events[-1].order_id, events[-1].status) == ("ok", "resting")
    assert peak < 150, f"peak RSS {peak:.0f} MB"


def test_sigterm_is_served_while_redis_is_unreachable(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """While the daemon waits for Redis its backoff grows to reconnect_max_delay; a stop must
    not wait for the backoff to run out."""
    from shard.server import free_port

    daemon = start(daemons, f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    daemon.wait_log('"kind":"connection"')
    time.sleep(4)  # the backoff has grown past a second by now
    began = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - began < 1.5
    assert "Connection refused" in daemon.log or "Connect call failed" in daemon.log


# -- found in review: what the first fixes missed -------------------------------------------------


def test_a_wrong_type_trades_stream_with_output_maxlen_duplicates_nothing(
    server: LocalServer, r: redis.Redis, keys: Keys, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """With output_maxlen, the commit trims both output streams after its writes: a trades key
    of another type made that trim fail after the events were written, and every retry wrote
    them again. Both streams' types are checked before the first write now."""
    rest = {"type": "order", "side": "buy", "price": 1, "quantity": 1}
    ids = publish(r, [{**rest, "order_id": "a"}])
    env = {"SHARD_OUTPUT_MAXLEN": "1000", "SHARD_INSTANCE": "me", "SHARD_LEASE_TTL": "3"}
    daemon = start(daemons, server.url, tmp_path, **env)
    wait_events(r, keys, 1)
    r.set(keys.trades, "not a stream")
    ids += publish(r, [{**rest, "order_id": "b"}])  # rests: a batch without trades
    daemon.wait_log('"kind":"wrong_type"')
    time.sleep(6)  # twice the lease's TTL: the daemon must keep its lease while it waits
    assert r.get(keys.lease) == b"me"
    assert daemon.alive() and r.xlen(keys.events) == 1
    r.delete(keys.trades)
    wait_events(r, keys, 2)
    time.sleep(0.5)
    assert daemon.stop() == 0
    assert [e.input_id for e in read_outputs(r, keys)[1]] == ids


def test_a_rebuild_refuses_inputs_deleted_before_the_last_event(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """A replay from the first input that misses a deleted one still ends on the same last
    event and trade: the rebuild must see that inputs are gone, not trust it."""
    rest = {"type": "order", "side": "sell", "price": 100, "quantity": 1}
    ids = publish(r, [{**rest, "order_id": "a1"}, {**rest, "order_id": "s2", "price": 200}])
    assert _run_idle(server.url)[0] == 0
    r.delete(keys.checkpoint)
    r.xdel(keys.orders, ids[0])
    code, log = _run_idle(server.url)
    assert code == 70
    assert "cannot be verified" in log and r.exists(keys.checkpoint) == 0


def test_outputs_past_the_checkpoint_stop_the_daemon_before_it_publishes(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """An event for an input after the checkpoint (a half-written commit, or a forged entry):
    publishing after the checkpoint would repeat outputs, so the daemon stops with exit 70."""
    publish(r, list(standard_mix(50, seed=18)))
    assert _run_idle(server.url)[0] == 0
    r.xadd(keys.events, {"input_id": "99999999999999-0", "status": "resting"})
    events = r.xlen(keys.events)
    publish(r, list(standard_mix(10, seed=19)))
    code, log = _run_idle(server.url)
    assert code == 70 and "the outputs go past the checkpoint" in log
    assert r.xlen(keys.events) == events


def test_a_depth_entry_past_the_checkpoints_seq_stops_the_daemon_before_it_publishes(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """A ``depth:{P}`` entry with a ``seq`` past the checkpoint's: publishing would repeat that
    ``seq`` and break every client's gap check, so the daemon stops with exit 70 instead."""
    publish(r, list(standard_mix(50, seed=18)))
    assert _run_idle(server.url)[0] == 0
    seq = int(r.hget(keys.checkpoint, "seq") or 0)
    r.xadd(keys.depth, {"seq": seq + 1, "input_id": "99999999999999-0", "bids": "", "asks": ""})
    entries = r.xlen(keys.depth)
    publish(r, list(standard_mix(10, seed=19)))
    code, log = _run_idle(server.url)
    assert code == 70 and "the outputs go past the checkpoint" in log
    assert f"seq {seq + 1}" in log and keys.depth in log
    assert r.xlen(keys.depth) == entries


def test_sums_past_64_bits_are_committed_snapshotted_and_recovered(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """Quantities at the limit (2**63 - 1): a level's total, the volume and the notional pass
    64 bits. The daemon commits them, snapshots them and recovers from that snapshot, with the
    outputs and the market data of an uninterrupted run."""
    big, price = 2**63 - 1, 10**13
    orders = [{"type": "order", "order_id": f"b{n}", "side": "buy", "price": price,
               "quantity": big, "timestamp": n} for n in range(3)]  # fmt: skip
    orders += [{"type": "order", "order_id": f"s{n}", "side": "sell", "price": price,
                "quantity": big, "timestamp": 3 + n} for n in range(2)]  # fmt: skip
    ids = publish(r, orders[:4])
    run_until_idle(server.url, snapshot_every_inputs=1, snapshot_in_background=False)
    assert r.exists(keys.snapshot)
    assert stored_book(r, keys)[f"b:{price}"] == f"{2 * big}:2"
    r.xdel(keys.orders, *ids)  # recovery can only start from the snapshot
    ids += publish(r, orders[4:])
    run_until_idle(server.url)
    trades, events = read_outputs(r, keys)
    entries = entries_of(r, ids, orders)
    assert (trades, events) == expected_outputs(entries)
    assert [e.input_id for e in events] == ids
    ticker = r.hgetall(keys.ticker)
    assert ticker[b"volume"] == str(2 * big).encode()
    assert ticker[b"notional"] == str(2 * big * price).encode()
    assert_market_data(r, keys, entries)
