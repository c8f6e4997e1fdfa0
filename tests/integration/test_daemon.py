"""The daemon against a real server: the seed example, equality with `shard replay`, bad input,
life cycle, consumers."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import signal
import subprocess
import sys
import threading
import time

import msgspec
import pytest
import redis

from shard import collector
from shard.config import Keys
from shard.daemon import Shard
from shard.server import LocalServer
from shard.workload import standard_mix

from ..seed import SEED, SEED_TRADE
from .helpers import (
    PAIR,
    config,
    encoded,
    expected_outputs,
    finish_daemon,
    no_input_id,
    publish,
    read_outputs,
    run_until_idle,
    start_daemon,
    stop_daemon,
    wait_events,
    wait_until_it_handles_sigterm,
)


def test_seed_example_through_redis(server: LocalServer, r: redis.Redis, keys: Keys) -> None:
    ids = publish(r, SEED)
    run_until_idle(server.url)
    trades, events = read_outputs(r, keys)
    assert [msgspec.to_builtins(t) for t in trades] == [{**SEED_TRADE, "input_id": ids[1]}]
    assert [(e.input_id, e.order_id, e.status) for e in events] == [
        (ids[0], "order1", "resting"),
        (ids[1], "order2", "filled"),
        (ids[2], "order1", "cancelled"),
    ]
    groups = r.xinfo_groups(keys.orders)
    assert groups[0]["pending"] == 0 and groups[0]["lag"] == 0
    assert r.hget(keys.checkpoint, "last_id").decode() == ids[2]


def garbage(rng: random.Random) -> dict[str, str]:
    names = [
        "type",
        "order_id",
        "side",
        "price",
        "quantity",
        "order_type",
        "timestamp",
        "data",
        "junk",
    ]
    values = [
        "order",
        "cancel",
        "amend",
        "buy",
        "sell",
        "-1",
        "0",
        "1.5",
        "1e9",
        "x" * 80,
        "",
        "{",
        '{"type": "order"}',
        "9" * 30,
        "market",
        "\u00e9",
    ]
    return {rng.choice(names): rng.choice(values) for _ in range(rng.randint(1, 5))}


@pytest.mark.parametrize("ack", ["xack", "setid"])
def test_daemon_publishes_what_replay_prints(
    server: LocalServer, r: redis.Redis, keys: Keys, tmp_path, ack: str
) -> None:
    rng = random.Random(5)
    messages = list(standard_mix(3000, seed=9))
    ids = []
    for i, msg in enumerate(messages):
        if i % 50 == 0:
            r.xadd(keys.orders, garbage(rng))
        ids.append(publish(r, [msg], as_data=(i % 3 == 0))[0])
    run_until_idle(server.url, batch_size=64, ack=ack)
    trades, events = read_outputs(r, keys)
    entries = [(i.decode(), f) for i, f in r.xrange(keys.orders)]
    assert (trades, events) == expected_outputs(entries)
    # Either way, the group ends past every input with nothing pending and no lag.
    (group,) = r.xinfo_groups(keys.orders)
    assert (group["pending"], group["lag"]) == (0, 0)
    assert group["last-delivered-id"] == entries[-1][0].encode()
    assert group["entries-read"] == len(entries)
    assert [t.trade_id for t in trades] == list(range(1, len(trades) + 1))
    assert sum(e.status == "rejected" for e in events) > 60

    # The valid messages alone, through `shard replay`, give the same outputs without input IDs.
    by_id = {e.input_id: e for e in events}
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(msgspec.json.encode(m) + b"\n" for m in messages))
    out = subprocess.run(
        [sys.executable, "-m", "shard", "replay", "--events", str(path)],
        capture_output=True,
        check=True,
    ).stdout.splitlines()
    replay_events = [json.loads(x) for x in out if b'"status"' in x]
    replay_trades = [json.loads(x) for x in out if b'"trade_id"' in x]
    wanted = [msgspec.to_builtins(e) for e in no_input_id([by_id[i] for i in ids])]
    assert replay_events == wanted
    assert replay_trades == [msgspec.to_builtins(t) for t in no_input_id(trades)]


def test_a_backlog_is_read_ahead_without_block(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """After a full batch the next read goes out without BLOCK (and is received before the
    commit); after a short one, with BLOCK; and --exit-when-idle only trusts an empty read
    that blocked. The reads are the ones the server saw (MONITOR)."""
    publish(r, list(standard_mix(95, seed=3)))
    seen: list[list[str]] = []
    with r.monitor() as monitor:  # the server reports every command from here on

        def watch() -> None:
            while (command := monitor.next_command()["command"]) != "ECHO end-of-test":
                if command.startswith("XREAD "):
                    seen.append(command.split())

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            run_until_idle(server.url, batch_size=10)
        finally:
            r.echo("end-of-test")
            watcher.join(30)
    reads = [tuple(args) for args in seen]
    # Counts start from one entry and double to the batch size (shard.reads; the read ahead is
    # sent before the batch before it is applied): full reads, one of 5, then an empty read
    # that blocked. Each read after a full one goes without BLOCK.
    counts = [int(args[2]) for args in reads]  # type: ignore[call-overload]
    assert counts[:6] == [1, 1, 2, 4, 8, 10]
    left, blocks = 95, [True]
    for count in counts:
        got = min(count, left)
        left -= got
        blocks.append(got < count)
    assert ["BLOCK" in args for args in reads] == blocks[:-1]
    assert left == 0 and blocks[-2:] == [True, True]
    entries = [(i.decode(), f) for i, f in r.xrange(keys.orders)]
    assert read_outputs(r, keys) == expected_outputs(entries)


def test_setid_drops_what_an_xack_run_left_pending(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """Switching a pair from ``xack`` to ``setid``: entries the old consumer had read but not
    committed are applied once, and the group ends with nothing pending."""
    ids = publish(r, list(standard_mix(300, seed=4)))
    r.xgroup_create(keys.orders, "shard", id="0")
    r.xreadgroup("shard", PAIR, {keys.orders: ">"}, count=40)  # read, never acknowledged
    assert r.xinfo_groups(keys.orders)[0]["pending"] == 40
    run_until_idle(server.url, ack="setid")
    entries = [(i.decode(), f) for i, f in r.xrange(keys.orders)]
    assert read_outputs(r, keys) == expected_outputs(entries)
    assert [i for i, _ in entries] == ids
    (group,) = r.xinfo_groups(keys.orders)
    assert (group["pending"], group["lag"], group["consumers"]) == (0, 0, 0)


def test_setid_lag_is_exact_right_after_a_restart(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """A restart with nothing new to read still leaves the group's entries-read and lag exact,
    even when the inputs below the snapshot were trimmed."""
    publish(r, list(standard_mix(300, seed=6)))
    run_until_idle(server.url, snapshot_every_inputs=100, batch_size=50)
    assert r.xlen(keys.orders) < 300  # trimmed below a snapshot
    run_until_idle(server.url)  # recovers, moves the group, finds nothing
    (group,) = r.xinfo_groups(keys.orders)
    assert (group["entries-read"], group["lag"], group["pending"]) == (300, 0, 0)


def test_the_book_is_kept_out_of_garbage_collections(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """While the daemon runs, its engine (grown from empty, frozen at the first snapshot) is
    out of the cyclic collector's view and young collections are rare; after it stops,
    Python's settings are back."""
    before = gc.get_threshold()
    publish(r, list(standard_mix(500, seed=3)))
    shard = Shard(config(server.url, snapshot_every_inputs=200, batch_size=50))
    seen: dict[str, object] = {}

    async def scenario() -> None:
        task = asyncio.create_task(shard.run(install_signals=False))
        # The heap is frozen as a snapshot starts; once one is stored, that has run.
        while shard.inputs_done < 500 or not await shard.store.snapshot_meta():
            await asyncio.sleep(0.01)
        index = shard.engine.book.index
        assert len(index) > 0
        seen["tracked"] = any(o is index for o in gc.get_objects())
        seen["threshold"] = gc.get_threshold()[0]
        shard.stop()
        await task

    asyncio.run(scenario())
    assert seen == {"tracked": False, "threshold": collector.YOUNG_THRESHOLD}
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_bad_input_gets_one_event_each(server: LocalServer, r: redis.Redis, keys: Keys) -> None:
    rng = random.Random(1)
    flood = [garbage(rng) for _ in range(500)]
    flood += [{"data": "\xff not json"}, {"x" * 10: "y" * 20_000}, {"type": "order"}]
    pipe = r.pipeline(transaction=False)
    for fields in flood:
        pipe.xadd(keys.orders, fields)
    pipe.xadd(keys.orders, {k: str(v) for k, v in SEED[0].items()})
    pipe.execute()
    r.xadd(keys.orders, {b"order_id": b"\xff\xfe", b"type": b"cancel"})
    run_until_idle(server.url)
    _, events = read_outputs(r, keys)
    assert len(events) == len(flood) + 2
    assert events[len(flood)].status == "resting"
    rejected = [e for e in events if e.status == "rejected"]
    assert all(e.reason and e.detail for e in rejected)
    assert any(e.reason == "oversize" and "16384" in e.detail for e in rejected)
    assert events[-1].reason == "invalid_field" and events[-1].order_id is None


def test_sigterm_drains_and_exits_zero(server: LocalServer, r: redis.Redis, keys: Keys) -> None:
    proc = start_daemon(server.url)
    publish(r, list(standard_mix(2000, seed=3)))
    wait_events(r, keys, 1)
    code, log = stop_daemon(proc, signal.SIGTERM)
    assert code == 0, log
    assert '"msg":"stopped"' in log
    # Whatever was applied was committed: the checkpoint matches the published events.
    assert int(r.hget(keys.checkpoint, "events")) == r.xlen(keys.events)
    pending = r.xinfo_groups(keys.orders)[0]["pending"]
    assert pending == 0
    proc = start_daemon(server.url, "--exit-when-idle")
    assert finish_daemon(proc)[0] == 0
    assert r.xlen(keys.events) == 2000


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_the_daemon_starts_is_a_clean_exit(
    server: LocalServer, r: redis.Redis, keys: Keys, sig: int
) -> None:
    """An orchestrator may stop a daemon it has just started, while Python still imports it
    (up to a second on a loaded machine): a clean stop (exit 0, nothing consumed), not death by
    signal. The signal goes as soon as the process catches SIGTERM, which is before the
    daemon has started (it logs nothing)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shard", "run", "--pair", PAIR, "--redis-url", server.url],
        stderr=subprocess.PIPE,
    )
    wait_until_it_handles_sigterm(proc)
    code, log = stop_daemon(proc, sig)
    assert (code, log) == (0, "")
    assert not r.exists(keys.events)


def test_sigint_too(server: LocalServer, r: redis.Redis, keys: Keys) -> None:
    proc = start_daemon(server.url)
    publish(r, SEED)
    wait_events(r, keys, 3)
    assert stop_daemon(proc, signal.SIGINT)[0] == 0


def test_trade_consumer_group_sees_every_trade_once(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    publish(r, list(standard_mix(4000, seed=4)))
    r.xgroup_create(keys.trades, "risk", id="0", mkstream=True)
    seen: list[int] = []

    def consume() -> None:
        while True:
            reply = r.xreadgroup("risk", "risk-1", {keys.trades: ">"}, count=100, block=200)
            if not reply:
                return
            for entry_id, fields in reply[0][1]:
                seen.append(int(fields[b"trade_id"]))
                r.xack(keys.trades, "risk", entry_id)

    proc = start_daemon(server.url, "--exit-when-idle")
    consume()
    assert finish_daemon(proc)[0] == 0
    consume()
    assert seen == list(range(1, r.xlen(keys.trades) + 1))
    assert len(seen) > 100


def test_health_and_keys_carry_the_hash_tag(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    publish(r, SEED)
    run_until_idle(server.url, key_prefix="")
    health = subprocess.run(
        [sys.executable, "-m", "shard", "health", "--pair", PAIR, "--redis-url", server.url],
        capture_output=True,
        timeout=30,
    )
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["pair"] == PAIR
    assert all(f"{{{PAIR}}}" in k.decode() for k in r.keys("*"))
    missing = subprocess.run(
        [sys.executable, "-m", "shard", "health", "--pair", "NOPE", "--redis-url", server.url],
        capture_output=True,
        timeout=30,
    )
    assert missing.returncode == 1 and b"no heartbeat" in missing.stderr


def test_key_prefix_namespaces_everything(server: LocalServer, r: redis.Redis) -> None:
    staged = Keys(PAIR, "staging:")
    publish(r, SEED, key=staged.orders)
    run_until_idle(server.url, key_prefix="staging:")
    assert r.xlen(staged.trades) == 1
    assert all(k.startswith(b"staging:") for k in r.keys("*"))


def test_entry_without_timestamp_takes_the_entry_time(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    a = r.xadd(
        keys.orders,
        {"type": "order", "order_id": "a", "side": "buy", "price": "5", "quantity": "1"},
    ).decode()
    b = r.xadd(
        keys.orders,
        {"type": "order", "order_id": "b", "side": "sell", "price": "5", "quantity": "1"},
    ).decode()
    assert a
    run_until_idle(server.url)
    (trade,), _ = read_outputs(r, keys)
    assert trade.timestamp == int(b.split("-")[0])


def test_encoded_helper() -> None:
    assert encoded({"a": "b"}) == {b"a": b"b"}


def test_metrics_and_json_logs(server: LocalServer, r: redis.Redis, keys: Keys) -> None:
    import urllib.request

    from shard.server import free_port

    port = free_port()
    publish(r, [*SEED, {"type": "cancel", "order_id": "ghost", "timestamp": 5}])
    proc = start_daemon(server.url, env={"SHARD_METRICS_PORT": str(port)})
    try:
        wait_events(r, keys, 4)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as f:
                    text = f.read().decode()
                if 'shard_inputs_total{pair="BTC-USDT"} 4.0' in text:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "metrics never showed the 4 inputs"
            time.sleep(0.1)
    finally:
        code, log = stop_daemon(proc)
    assert code == 0
    for name in (
        'shard_trades_total{pair="BTC-USDT"} 1.0',
        'shard_rejects_total{pair="BTC-USDT",reason="unknown_order"} 1.0',
        "shard_batch_size_bucket",
        "shard_commit_seconds_bucket",
        'shard_consumer_lag{pair="BTC-USDT"}',
        'shard_resting_orders{pair="BTC-USDT"} 0.0',
        "shard_price_levels",
        "shard_last_snapshot_age_seconds",
        "shard_recoveries_total",
    ):
        assert name in text, name
    lines = [json.loads(line) for line in log.splitlines()]
    assert lines and all(x["pair"] == PAIR and x["level"] and x["msg"] for x in lines)
    # Recovery says what each step took (no snapshot here: nothing to read or restore).
    recovered = next(x for x in lines if x["msg"] == "recovered")
    steps = ("checkpoint_s", "replay_s", "checks_s")
    assert all(recovered[k] >= 0 for k in steps) and "restore_s" not in recovered


def test_acl_user_in_the_url(server: LocalServer, r: redis.Redis, keys: Keys) -> None:
    r.execute_command("ACL", "SETUSER", "matcher", "on", ">s3cret", "~*", "&*", "+@all")
    try:
        publish(r, SEED)
        url = server.url.replace("redis://", "redis://matcher:s3cret@")
        code, log = finish_daemon(start_daemon(url, "--exit-when-idle"))
        assert code == 0, log
        assert r.xlen(keys.trades) == 1
        assert "s3cret" not in log
        bad = url.replace("s3cret", "wrong")
        proc = start_daemon(bad)
        time.sleep(1.5)
        assert proc.poll() is None  # keeps retrying with backoff, does not die
        code, log = stop_daemon(proc)
        assert code == 0 and "waiting for redis" in log
    finally:
        r.execute_command("ACL", "DELUSER", "matcher")
