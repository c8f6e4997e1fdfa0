"""`shard up`, `shard publish` and `shard trades` as a user runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from shard.config import Keys
from shard.server import LocalServer, free_port

from ..seed import SEED_LINES, SEED_TRADE
from .helpers import PAIR, finish_daemon, publish, start_daemon, wait_events

SHARD = [sys.executable, "-m", "shard"]


def cli(*args: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*SHARD, *args], input=stdin, capture_output=True, timeout=timeout, check=True
    )


def wait_healthy(url: str, pair: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (
        subprocess.run(
            [*SHARD, "health", "--pair", pair, "--redis-url", url], capture_output=True
        ).returncode
        != 0
    ):
        assert time.monotonic() < deadline, f"{pair} never became healthy"
        time.sleep(0.2)


def test_shard_up_end_to_end_and_resume(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    data = tmp_path / "data"
    keys = Keys(PAIR)
    gateway = free_port()
    up = [*SHARD, "up", "--pairs", f"{PAIR},ETH-USDT", "--data-dir", str(data), "--port", str(port)]
    up += ["--gateway-port", str(gateway)]

    first = subprocess.Popen(up, stderr=subprocess.PIPE)
    try:
        wait_healthy(url, PAIR)
        wait_healthy(url, "ETH-USDT")
        ids = cli(
            "publish", "--pair", PAIR, "--redis-url", url, stdin=b"\n".join(SEED_LINES[:2]) + b"\n"
        ).stdout.split()
        assert len(ids) == 2
        client = redis.Redis.from_url(url)
        wait_events(client, keys, 2)
        out = cli("trades", "--pair", PAIR, "--redis-url", url).stdout
        assert [json.loads(x) for x in out.splitlines()] == [
            {**SEED_TRADE, "input_id": ids[1].decode()}
        ]
        client.close()
        deadline = time.monotonic() + 30
        while True:  # the gateway serves both pairs, with the trade's ticker
            try:
                listed = httpx.get(f"http://127.0.0.1:{gateway}/api/v1/pairs", timeout=5).json()
                if listed[0]["ticker"]:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway never answered"
            time.sleep(0.2)
        assert [p["pair"] for p in listed] == [PAIR, "ETH-USDT"]
        assert listed[0]["ticker"]["last_price"] == SEED_TRADE["price"]
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err.decode()
    assert b"orders:{BTC-USDT}" in err and b"shard up: stopped" in err
    assert f"http://127.0.0.1:{gateway}/".encode() in err

    second = subprocess.Popen(up, stderr=subprocess.PIPE)
    try:
        wait_healthy(url, PAIR)
        cli(
            "publish",
            "--pair",
            PAIR,
            "--redis-url",
            url,
            "--type",
            "cancel",
            "--order-id",
            "order1",
        )
        client = redis.Redis.from_url(url)
        wait_events(client, keys, 3)
        _, fields = client.xrevrange(keys.events, count=1)[0]
        assert fields[b"status"] == b"cancelled" and fields[b"cancelled_quantity"] == b"5"
        client.close()
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err.decode()


def test_publish_flags_and_bad_lines(server: LocalServer, r: redis.Redis, keys: Keys) -> None:
    cli(
        "publish",
        "--pair",
        PAIR,
        "--redis-url",
        server.url,
        "--type",
        "order",
        "--order-id",
        "a",
        "--side",
        "sell",
        "--price",
        "100",
        "--quantity",
        "3",
    )
    cli(
        "publish",
        "--pair",
        PAIR,
        "--redis-url",
        server.url,
        stdin=b'{"type": "order", "order_id": "b", "side": "buy", "price": 100, "quantity": 1}\n'
        b"\nnot json\n",
    )
    (_, flat), (_, line), (_, bad) = r.xrange(keys.orders)
    assert flat == {
        b"type": b"order",
        b"order_id": b"a",
        b"side": b"sell",
        b"price": b"100",
        b"quantity": b"3",
    }
    assert line[b"data"].startswith(b'{"type": "order"') and bad == {b"data": b"not json"}
    code, log = finish_daemon(start_daemon(server.url, "--exit-when-idle"))
    assert code == 0, log
    statuses = [f[b"status"] for _, f in r.xrange(keys.events)]
    assert statuses == [b"resting", b"filled", b"rejected"]


def test_trades_group_consumer_acknowledges(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    from shard.workload import standard_mix

    publish(r, list(standard_mix(3000, seed=6)))
    code, log = finish_daemon(start_daemon(server.url, "--exit-when-idle"))
    assert code == 0, log
    total = r.xlen(keys.trades)
    args = [
        "trades",
        "--pair",
        PAIR,
        "--redis-url",
        server.url,
        "--group",
        "audit",
        "--consumer",
        "c1",
    ]
    first = cli(*args).stdout.splitlines()
    assert [json.loads(x)["trade_id"] for x in first] == list(range(1, total + 1))
    assert r.xinfo_groups(keys.trades)[0]["pending"] == 0
    assert cli(*args).stdout == b""  # everything was acknowledged: nothing again
    plain = cli("trades", "--pair", PAIR, "--redis-url", server.url).stdout.splitlines()
    assert plain == first


def test_trades_follow_stops_on_sigterm(server: LocalServer, r: redis.Redis, keys: Keys) -> None:
    proc = subprocess.Popen(
        [*SHARD, "trades", "--pair", PAIR, "--redis-url", server.url, "--follow"],
        stdout=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)
        publish(r, [json.loads(x) for x in SEED_LINES[:2]])
        code, log = finish_daemon(start_daemon(server.url, "--exit-when-idle"))
        assert code == 0, log
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert json.loads(out.splitlines()[0])["trade_id"] == 1


def test_trades_print_price_and_timestamp_zero(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    """0 is a valid price and a valid timestamp: `shard trades` prints them, as every field."""
    ids = publish(
        r,
        [
            {"type": "order", "order_id": "m", "side": "buy", "price": 0, "quantity": 3,
             "timestamp": 0},
            {"type": "order", "order_id": "t", "side": "sell", "price": 0, "quantity": 1,
             "timestamp": 0},
        ],
    )  # fmt: skip
    code, log = finish_daemon(start_daemon(server.url, "--exit-when-idle"))
    assert code == 0, log
    out = cli("trades", "--pair", PAIR, "--redis-url", server.url).stdout
    assert [json.loads(x) for x in out.splitlines()] == [
        {"trade_id": 1, "taker_order_id": "t", "maker_order_id": "m", "price": 0, "quantity": 1,
         "timestamp": 0, "taker_side": "sell", "input_id": ids[1]}
    ]  # fmt: skip
