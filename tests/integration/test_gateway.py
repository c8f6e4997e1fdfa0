"""``shard gateway`` against a real server and daemon: every route's answers and errors, keys
and ownership, rate and body limits, and the WebSocket feed (docs/gateway.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis
from websockets.sync.client import connect

from shard.config import Keys
from shard.decode import decode_json
from shard.engine import Engine
from shard.gateway.limits import hash_key
from shard.l2 import checksum
from shard.server import LocalServer, free_port
from shard.wire import event_from_fields
from shard.workload import standard_mix

from .helpers import PAIR, publish, start_daemon, stop_daemon, wait_events

ALICE, BOB = "alice-key-0123456789", "bob-key-9876543210"


class Gateway:
    """A ``shard gateway`` subprocess for ``pairs`` (PAIR by default) and its base URL; returns
    once ``/health`` answers 200 (every pair synced)."""

    def __init__(
        self, url: str, tmp: Path, extra: str = "", pairs: list[str] | None = None
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = tmp / "gateway.toml"
        config.write_text(f"[gateway]\npairs = {json.dumps(pairs or [PAIR])}\n{extra}")
        self.log_path = tmp / "gateway.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shard", "gateway", "--redis-url", url,
             "--port", str(self.port), "--config", str(config)],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ},
        )  # fmt: skip
        self.http = httpx.Client(base_url=self.base, timeout=10)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if self.http.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.1)

    def stop(self) -> int:
        self.http.close()
        self.proc.terminate()
        code = self.proc.wait(30)
        self.log.close()
        return code


@pytest.fixture
def daemon(server: LocalServer, r: redis.Redis) -> Iterator[None]:
    proc = start_daemon(server.url, env={"SHARD_BLOCK_MS": "50"})
    yield
    code, log = stop_daemon(proc)
    assert code == 0, log


@pytest.fixture
def open_gateway(server: LocalServer, daemon: None, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway without keys: order entry is open."""
    gw = Gateway(server.url, tmp_path)
    yield gw
    assert gw.stop() == 0


@pytest.fixture
def keyed_gateway(server: LocalServer, daemon: None, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway with two keys (alice, bob) and a small order-entry bucket for bob."""
    keys = "".join(
        f'[[gateway.keys]]\nsha256 = "{hash_key(k)}"\naccount = "{a}"\n'
        for k, a in ((ALICE, "alice"), (BOB, "bob"))
    )
    gw = Gateway(server.url, tmp_path, f"burst_per_key = 5\nrate_per_key = 1\n{keys}")
    yield gw
    assert gw.stop() == 0


def _order(side: str, price: int, quantity: int, **more: Any) -> dict[str, Any]:
    return {"side": side, "price": price, "quantity": quantity, **more}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_an_order_answers_with_its_event_and_trades(
    open_gateway: Gateway, r: redis.Redis, keys: Keys
) -> None:
    http = open_gateway.http
    rest = http.post(f"/api/v1/pairs/{PAIR}/orders", json=_order("sell", 100, 5, order_id="s1"))
    assert rest.status_code == 200, rest.text
    body = rest.json()
    assert body["event"]["status"] == "resting" and body["trades"] == []
    taker = http.post(f"/api/v1/pairs/{PAIR}/orders", json=_order("buy", 101, 3, order_id="b1"))
    body = taker.json()
    assert body["event"]["status"] == "filled"
    assert [(t["maker_order_id"], t["price"], t["quantity"]) for t in body["trades"]] == [
        ("s1", 100, 3)
    ]
    # The event answered is the one on events:{P}.
    (entry_id, fields), *_ = r.xrevrange(keys.events, count=1)
    assert entry_id.decode() == body["input_id"] or body["input_id"] == body["event"]["input_id"]
    assert event_from_fields(fields).status == body["event"]["status"] == "filled"
    assert body["event"]["input_id"] == body["input_id"]
    # The market data routes see it.
    book = http.get(f"/api/v1/pairs/{PAIR}/book").json()
    deadline = time.monotonic() + 10
    while book["seq"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        book = http.get(f"/api/v1/pairs/{PAIR}/book").json()
    assert book["asks"] == [[100, 2, 1]] and book["bids"] == []
    assert book["checksum"] == checksum([], [(100, 2)])
    assert http.get(f"/api/v1/pairs/{PAIR}/ticker").json()["last_price"] == 100
    trades = http.get(f"/api/v1/pairs/{PAIR}/trades?limit=10").json()
    assert [t["taker_order_id"] for t in trades] == ["b1"]
    candles = http.get(f"/api/v1/pairs/{PAIR}/candles?interval=1m").json()
    assert [(c["open"], c["volume"], c["trades"]) for c in candles] == [(100, 3, 1)]
    listed = http.get("/api/v1/pairs").json()
    assert listed[0]["pair"] == PAIR and listed[0]["best_ask"] == [100, 2, 1]


def test_cancel_amend_and_cancel_all_answer_with_their_events(open_gateway: Gateway) -> None:
    http, path = open_gateway.http, f"/api/v1/pairs/{PAIR}/orders"
    for n in range(3):
        http.post(path, json=_order("buy", 90 + n, 2, order_id=f"o{n}", account="carol"))
    amended = http.patch(f"{path}/o0", json={"quantity": 1})
    assert amended.status_code == 200 and amended.json()["event"]["status"] == "amended"
    cancelled = http.delete(f"{path}/o1")
    assert cancelled.json()["event"]["cancelled_quantity"] == 2
    missing = http.delete(f"{path}/o1")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_order"
    everything = http.delete(f"{path}?account=carol")
    event = everything.json()["event"]
    assert (event["cancelled_orders"], event["cancelled_quantity"]) == (2, 3)
    assert len(everything.json()["order_events"]) == 2
    assert http.delete(path).status_code == 400  # no account, no key


def test_a_rejected_input_is_422_with_the_shards_reason(open_gateway: Gateway) -> None:
    http, path = open_gateway.http, f"/api/v1/pairs/{PAIR}/orders"
    bad = http.post(path, json=_order("sideways", 100, 1))
    assert bad.status_code == 422
    assert bad.json()["error"] == "invalid_field" and "sideways" in bad.json()["detail"]
    assert bad.json()["event"]["status"] == "rejected"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "bad_request"),
        (b"[1, 2]", 400, "bad_request"),
        (b'{"side": "buy", "quantity": "one"}', 400, "bad_request"),
        (b'{"side": "buy", "quantity": 1, "colour": "red"}', 400, "bad_request"),
        (b'{"side": "buy", "quantity": 1, "type": "cancel"}', 400, "bad_request"),
        (
            b'{"side": "buy", "quantity": 1, "order_id": "' + b"x" * 5000 + b'"}',
            413,
            "body_too_large",
        ),
    ],
)
def test_bad_bodies_are_refused_before_anything_is_published(
    open_gateway: Gateway, r: redis.Redis, keys: Keys, body: bytes, status: int, code: str
) -> None:
    before = r.xlen(keys.orders)
    answer = open_gateway.http.post(f"/api/v1/pairs/{PAIR}/orders", content=body)
    assert (answer.status_code, answer.json()["error"]) == (status, code)
    assert answer.json()["detail"]
    assert r.xlen(keys.orders) == before


def test_unknown_pairs_and_bad_parameters(open_gateway: Gateway) -> None:
    http = open_gateway.http
    assert http.get("/api/v1/pairs/NOPE/book").json()["error"] == "unknown_pair"
    assert http.get(f"/api/v1/pairs/{PAIR}/book?depth=0").status_code == 400
    assert http.get(f"/api/v1/pairs/{PAIR}/candles?interval=7m").status_code == 400
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["pairs"][PAIR]["synced"]
    assert "gateway_requests_total" in http.get("/metrics").text


def test_keys_stamp_the_account_and_guard_other_accounts_orders(
    keyed_gateway: Gateway, r: redis.Redis, keys: Keys
) -> None:
    http, path = keyed_gateway.http, f"/api/v1/pairs/{PAIR}/orders"
    assert http.post(path, json=_order("buy", 10, 1)).status_code == 401
    assert http.post(path, json=_order("buy", 10, 1), headers=auth("wrong")).status_code == 401
    placed = http.post(path, json=_order("buy", 10, 1, order_id="a1"), headers=auth(ALICE))
    assert placed.status_code == 200 and placed.json()["event"]["account"] == "alice"
    (_, fields), *_ = r.xrevrange(keys.orders, count=1)
    assert fields[b"account"] == b"alice"
    other = http.post(path, json=_order("buy", 10, 1, account="bob"), headers=auth(ALICE))
    assert other.status_code == 403 and other.json()["error"] == "account_mismatch"
    stolen = http.delete(f"{path}/a1", headers=auth(BOB))
    assert stolen.status_code == 404 and stolen.json()["error"] == "unknown_order"
    assert http.delete(f"{path}/a1", headers=auth(ALICE)).status_code == 200
    assert ALICE not in (Path(keyed_gateway.log.name).read_text())


def test_order_entry_is_rate_limited_per_key(keyed_gateway: Gateway) -> None:
    http, path = keyed_gateway.http, f"/api/v1/pairs/{PAIR}/orders"
    answers = [
        http.post(path, json=_order("buy", 10, 1), headers=auth(BOB)).status_code for _ in range(7)
    ]
    assert answers[:5] == [200] * 5 and 429 in answers[5:]
    limited = http.post(path, json=_order("buy", 10, 1), headers=auth(BOB))
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert http.post(path, json=_order("buy", 10, 1), headers=auth(ALICE)).status_code == 200


def test_without_a_shard_order_entry_answers_202_with_the_input_id(
    server: LocalServer, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    gw = Gateway(server.url, tmp_path, "wait_ms = 200\n")
    try:
        answer = gw.http.post(f"/api/v1/pairs/{PAIR}/orders", json=_order("buy", 10, 1))
        assert answer.status_code == 202
        ((entry_id, _),) = r.xrange(keys.orders)
        assert answer.json() == {"input_id": entry_id.decode()}
    finally:
        assert gw.stop() == 0


def _apply(book: dict[str, dict[int, tuple[int, int]]], message: dict[str, Any]) -> None:
    for side in ("bids", "asks"):
        for price, quantity, orders in message[side]:
            if quantity:
                book[side][price] = (quantity, orders)
            else:
                book[side].pop(price, None)


def _checksum(book: dict[str, dict[int, tuple[int, int]]]) -> int:
    bids = sorted(((p, q) for p, (q, _) in book["bids"].items()), reverse=True)
    asks = sorted((p, q) for p, (q, _) in book["asks"].items())
    return checksum(bids, asks)


def test_the_websocket_feed_is_a_snapshot_then_updates_that_check(open_gateway: Gateway) -> None:
    http, path = open_gateway.http, f"/api/v1/pairs/{PAIR}/orders"
    http.post(path, json=_order("sell", 105, 4, order_id="early"))
    ws_url = open_gateway.base.replace("http", "ws") + f"/api/v1/pairs/{PAIR}/ws"
    with connect(ws_url) as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["type"] == "snapshot" and first["asks"] == [[105, 4, 1]]
        book: dict[str, dict[int, tuple[int, int]]] = {"bids": {}, "asks": {}}
        _apply(book, first)
        seq = first["seq"]
        for n in range(20):
            http.post(path, json=_order("buy", 100 + n % 3, 1, order_id=f"b{n}"))
        http.post(path, json=_order("sell", 100, 30, order_id="sweep", order_type="ioc"))
        trades = []
        deadline = time.monotonic() + 15
        while (len(trades) < 20 or book["bids"]) and time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=10))
            if message["type"] == "depth":
                assert message["prev"] == seq
                _apply(book, message)
                assert _checksum(book) == message["checksum"]
                seq = message["seq"]
            elif message["type"] == "trades":
                trades += message["trades"]
        assert len(trades) == 20 and not book["bids"]
        assert book["asks"] == {105: (4, 1)}
        ws.send(json.dumps({"op": "snapshot"}))
        while (again := json.loads(ws.recv(timeout=10)))["type"] != "snapshot":
            pass
        assert again["seq"] == seq and again["asks"] == [[105, 4, 1]]


def test_an_orders_state_live_and_finished_and_the_callers_open_orders(
    keyed_gateway: Gateway,
) -> None:
    http, path = keyed_gateway.http, f"/api/v1/pairs/{PAIR}/orders"
    http.post(path, json=_order("sell", 50, 5, order_id="m1"), headers=auth(ALICE))
    http.post(path, json=_order("buy", 40, 2, order_id="m2"), headers=auth(ALICE))
    http.post(path, json=_order("buy", 50, 3, order_id="t1"), headers=auth(BOB))
    live = http.get(f"{path}/m1", headers=auth(ALICE))
    assert live.json() == {
        "order_id": "m1", "status": "live", "side": "sell", "price": 50,
        "remaining_quantity": 2, "account": "alice",
    }  # fmt: skip
    assert http.get(f"{path}/m1", headers=auth(BOB)).status_code == 404  # not bob's
    assert http.get(f"{path}/t1", headers=auth(BOB)).json()["status"] == "filled"
    opened = http.get(path, headers=auth(ALICE)).json()
    assert [(o["order_id"], o["remaining_quantity"]) for o in opened] == [("m2", 2), ("m1", 2)]
    assert http.get(path, headers=auth(BOB)).json() == []
    http.post(path, json=_order("buy", 50, 2, order_id="t2"), headers=auth(BOB))
    filled = http.get(f"{path}/m1", headers=auth(ALICE)).json()
    assert filled["status"] == "filled" and filled["by_trade"] == 2
    http.delete(f"{path}/m2", headers=auth(ALICE))
    assert http.get(f"{path}/m2", headers=auth(ALICE)).json()["status"] == "cancelled"
    assert http.get(f"{path}/nope", headers=auth(ALICE)).status_code == 404


def test_orders_placed_before_the_gateway_started_are_known_exactly(
    server: LocalServer, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    """The gateway's replica starts from the shard's snapshot (the inputs below it trimmed)
    and replays the rest: the live orders it reports are the engine's."""
    env = {"SHARD_BLOCK_MS": "50", "SHARD_SNAPSHOT_EVERY_INPUTS": "300", "SHARD_BATCH_SIZE": "100"}
    proc = start_daemon(server.url, env=env)
    try:
        messages = list(standard_mix(1000, seed=5))
        publish(r, messages)
        wait_events(r, keys, len(messages))
        deadline = time.monotonic() + 30
        while not r.exists(keys.snapshot) and time.monotonic() < deadline:
            time.sleep(0.1)
        gw = Gateway(server.url, tmp_path, "rate_per_address = 1000\nburst_per_address = 1000\n")
        try:
            engine = Engine()
            trades: list[Any] = []
            for m in messages:
                engine.apply(decode_json(msgspec.json.encode(m)), None, trades)
                engine.order_events.clear()
            some = list(engine.book.index)[:50]
            for order_id in some:
                got = gw.http.get(f"/api/v1/pairs/{PAIR}/orders/{order_id}").json()
                assert "side" in got, (order_id, got)
                side, price, remaining = engine.book.get(order_id)  # type: ignore[misc]
                assert (got["side"], got["price"], got["remaining_quantity"]) == (
                    side,
                    price,
                    remaining,
                )
        finally:
            assert gw.stop() == 0
    finally:
        assert stop_daemon(proc)[0] == 0
    assert r.xlen(keys.orders) < len(messages)  # the replica could not have replayed them all
