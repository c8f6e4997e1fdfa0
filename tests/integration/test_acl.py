"""The least-privilege ACL users of docs/daemon.md, as the docs give them: the daemon runs under
its own (snapshots, trims, restarts, a rebuilt checkpoint, both ack modes), a producer can write
orders:{P} and nothing else, a consumer can read the outputs and write nothing of the shard's."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shard.config import Keys
from shard.server import LocalServer
from shard.workload import standard_mix

from .helpers import PAIR, finish_daemon, publish, start_daemon, stop_daemon, wait_events
from .test_faults import assert_exactly_once, entries_of

DOC = Path(__file__).parents[2] / "docs" / "daemon.md"


def documented_users(pair: str) -> dict[str, list[str]]:
    """The ``ACL SETUSER`` lines of docs/daemon.md, by user name, for ``pair``, with the
    password placeholder replaced."""
    users: dict[str, list[str]] = {}
    text = DOC.read_text()
    for block in re.findall(r"```sh\n(ACL SETUSER .*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = line.replace("BTC-USDT", pair).replace(">PASSWORD", ">pw").split()
            if words[:2] == ["ACL", "SETUSER"]:
                users[words[2]] = words[3:]
    return users


@pytest.fixture
def users(r: redis.Redis) -> Iterator[dict[str, str]]:
    found = documented_users(PAIR)
    assert {"shard", "producer", "consumer"} <= set(found), found
    for name, rules in found.items():
        r.execute_command("ACL", "SETUSER", name, "reset", *rules)
    yield {name: f"{name}:pw@" for name in found}
    for name in found:
        r.execute_command("ACL", "DELUSER", name)


def as_user(server: LocalServer, user: str) -> str:
    return server.url.replace("redis://", f"redis://{user}")


@pytest.mark.parametrize("ack", ["setid", "xack"])
def test_the_daemon_runs_under_its_acl_user(
    server: LocalServer, r: redis.Redis, keys: Keys, users: dict[str, str], ack: str
) -> None:
    url = as_user(server, users["shard"])
    messages = list(standard_mix(3_000, seed=31))
    ids = publish(r, messages[:1500])
    env = {"SHARD_ACK": ack, "SHARD_SNAPSHOT_EVERY_INPUTS": "400", "SHARD_BATCH_SIZE": "100"}
    code, log = finish_daemon(start_daemon(url, "--exit-when-idle", env=env))
    assert code == 0, log
    assert '"msg":"inputs trimmed"' in log and "NOPERM" not in log, log
    r.execute_command("SCRIPT", "FLUSH")  # the scripts are loaded again, under the ACL
    r.delete(keys.checkpoint)  # rebuilt from the outputs, under the ACL
    ids += publish(r, messages[1500:])
    proc = start_daemon(url, "--exit-when-idle", env=env)
    wait_events(r, keys, len(messages))
    code, log = finish_daemon(proc)
    assert code == 0, log
    assert "rebuilt from the outputs" in log and "waiting for redis" not in log, log
    assert_exactly_once(r, keys, entries_of(r, ids, messages))


def test_a_producer_writes_orders_only(
    server: LocalServer, r: redis.Redis, keys: Keys, users: dict[str, str]
) -> None:
    producer = redis.Redis.from_url(as_user(server, users["producer"]))
    producer.xadd(keys.orders, {"type": "order", "order_id": "o1", "side": "buy"})
    for key in (keys.trades, keys.events, keys.checkpoint, keys.lease, keys.book):
        with pytest.raises(redis.exceptions.NoPermissionError):
            producer.xadd(key, {"trade_id": "1"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.delete(keys.orders)
    with pytest.raises(redis.exceptions.NoPermissionError):
        producer.xtrim(keys.orders, maxlen=0)
    producer.close()


def test_a_consumer_reads_the_outputs_and_writes_nothing_of_the_shards(
    server: LocalServer, r: redis.Redis, keys: Keys, users: dict[str, str]
) -> None:
    publish(r, list(standard_mix(200, seed=32)))
    code, log = finish_daemon(start_daemon(server.url, "--exit-when-idle"))
    assert code == 0, log
    consumer = redis.Redis.from_url(as_user(server, users["consumer"]))
    assert consumer.xrange(keys.trades) and consumer.xrange(keys.events)
    consumer.xgroup_create(keys.trades, "risk", id="0")
    got = consumer.xreadgroup("risk", "r1", {keys.trades: ">"}, count=10)
    consumer.xack(keys.trades, "risk", got[0][1][0][0])
    for write in (
        lambda: consumer.xadd(keys.trades, {"trade_id": "1"}),
        lambda: consumer.xadd(keys.orders, {"type": "order"}),
        lambda: consumer.delete(keys.events),
        lambda: consumer.hset(keys.checkpoint, "last_id", "0-0"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            write()
    consumer.close()


def test_a_refused_commit_is_undone_under_the_acl_user(
    server: LocalServer, r: redis.Redis, keys: Keys, users: dict[str, str]
) -> None:
    """The commit undoes its XADDs when a later one fails (here the events stream is out of
    IDs): the daemon's ACL user must be allowed the undo, or the trades would stay."""
    url = as_user(server, users["shard"])
    sell = {"type": "order", "order_id": "s", "side": "sell", "price": 100, "quantity": 1}
    publish(r, [sell])
    code, log = finish_daemon(start_daemon(url, "--exit-when-idle"))
    assert code == 0, log
    r.xadd(
        keys.events,
        {"input_id": "x", "status": "x"},
        id="18446744073709551615-18446744073709551615",
    )
    publish(r, [{**sell, "order_id": "b", "side": "buy"}])  # trades: its trade is undone
    proc = start_daemon(url)
    time.sleep(2)
    assert proc.poll() is None
    code, log = stop_daemon(proc)
    assert code == 0 and '"kind":"ids_exhausted"' in log, log
    assert r.xlen(keys.trades) == 0
