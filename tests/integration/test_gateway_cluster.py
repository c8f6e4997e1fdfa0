"""``shard gateway`` on a real Redis Cluster (the session's 3 masters + 3 replicas of
test_cluster.py): pairs on two masters served by one gateway given a third node's URL, and a
pair served again by itself after its master fails over (docs/gateway.md, "On a Redis
Cluster")."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.sync.client import connect

from shard.cluster_local import LocalCluster

from .helpers import start_daemon, stop_daemon
from .test_cluster import ENV, pair_on
from .test_gateway import Gateway

DAEMON_ENV = {**ENV, "SHARD_BLOCK_MS": "50"}


def _order(side: str, price: int, quantity: int, order_id: str) -> dict[str, Any]:
    return {"side": side, "price": price, "quantity": quantity, "order_id": order_id}


@pytest.fixture
def daemons(
    cluster: LocalCluster, rc: redis.RedisCluster
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started daemons, stopped (exit 0) after the test."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        code, log = stop_daemon(proc)
        assert code == 0, log


def test_pairs_on_two_masters_through_a_node_that_owns_neither(
    cluster: LocalCluster,
    daemons: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """Each pair's order entry, book and WebSocket snapshot come from its own master, the
    gateway having been given the URL of a master that owns neither pair."""
    first, second, third = cluster.master_nodes()
    pairs = [pair_on(cluster, first), pair_on(cluster, second)]
    for pair in pairs:
        daemons.append(start_daemon(third.url, env=DAEMON_ENV, pair=pair))
    gateway = Gateway(third.url, tmp_path, pairs=pairs)
    try:
        for n, pair in enumerate(pairs):
            path = f"/api/v1/pairs/{pair}/orders"
            rest = gateway.http.post(path, json=_order("sell", 100 + n, 5, f"s{n}"))
            assert rest.status_code == 200, rest.text
            assert rest.json()["event"]["status"] == "resting"
            taker = gateway.http.post(path, json=_order("buy", 100 + n, 2, f"b{n}"))
            assert taker.json()["event"]["status"] == "filled", taker.text
            assert [t["quantity"] for t in taker.json()["trades"]] == [2]
            deadline = time.monotonic() + 10
            while True:  # the book view catches up with the commit
                book = gateway.http.get(f"/api/v1/pairs/{pair}/book")
                if book.status_code == 200 and book.json()["asks"] == [[100 + n, 3, 1]]:
                    break
                assert time.monotonic() < deadline, book.text
                time.sleep(0.05)
            ws_url = gateway.base.replace("http", "ws") + f"/api/v1/pairs/{pair}/ws"
            with connect(ws_url) as ws:
                snapshot = json.loads(ws.recv(timeout=10))
            assert snapshot["type"] == "snapshot" and snapshot["asks"] == [[100 + n, 3, 1]]
            assert [t["quantity"] for t in snapshot["trades"]] == [2]
            state = gateway.http.get(f"{path}/s{n}").json()
            assert state["status"] == "live" and state["remaining_quantity"] == 3
        # Each pair's keys are on its own master only.
        for pair, master in zip(pairs, (first, second), strict=True):
            assert cluster.client(master).exists(f"events:{{{pair}}}") == 1
            assert cluster.client(third).dbsize() == 0
    finally:
        code = gateway.stop()
    assert code == 0, gateway.log_path.read_text()


@pytest.mark.parametrize("fault", ["failover", "kill"])
def test_a_pair_is_served_again_after_its_master_fails_over(
    cluster: LocalCluster,
    daemons: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    fault: str,
) -> None:
    """``CLUSTER FAILOVER`` on the replica of the pair's master, or a ``kill -9`` of that
    master (the node the gateway's URL named; its replica is promoted after the node
    timeout): the gateway finds the new master by itself and order entry answers with the
    event again, within a bounded time, without the gateway exiting."""
    master = cluster.master_nodes()[0]
    replica = cluster.replicas_of(master)[0]
    pair = pair_on(cluster, master)
    daemons.append(start_daemon(master.url, env=DAEMON_ENV, pair=pair))
    gateway = Gateway(master.url, tmp_path, pairs=[pair])
    path = f"/api/v1/pairs/{pair}/orders"
    try:
        before = gateway.http.post(path, json=_order("sell", 200, 1, "before"))
        assert before.status_code == 200, before.text
        if fault == "failover":
            cluster.failover(replica)
        else:
            cluster.call(master, "WAIT", 1, 5000)  # "before" is on the replica
            cluster.kill(master)
            cluster.wait_master(replica)
            assert cluster.role(replica) == "master"
        assert cluster.owner(pair).port == replica.port
        deadline = time.monotonic() + 30
        statuses = []
        n = 0
        while True:
            n += 1
            rest = gateway.http.post(path, json=_order("sell", 201, 1, f"after{n}"))
            statuses.append(rest.status_code)
            if rest.status_code == 200:
                break
            assert rest.status_code in (202, 503), rest.text
            if rest.status_code == 503:
                assert rest.json()["error"] == "unavailable"
            assert time.monotonic() < deadline, (statuses, gateway.log_path.read_text())
            time.sleep(0.2)
        assert rest.json()["event"]["status"] == "resting"
        deadline = time.monotonic() + 15
        while gateway.http.get("/health").status_code != 200:
            assert time.monotonic() < deadline, gateway.log_path.read_text()
            time.sleep(0.1)
        book = gateway.http.get(f"/api/v1/pairs/{pair}/book").json()
        assert [200, 1, 1] in book["asks"]
        assert gateway.proc.poll() is None
    finally:
        code = gateway.stop()
        if not cluster.running(master):
            cluster.restart(master)  # back as a replica of the new master, for the next tests
    log = gateway.log_path.read_text()
    assert code == 0, log
    assert "slot owner changed" in log
