"""Fan-out: 200 WebSocket clients on one gateway while ``shard load`` sends 10,000 inputs a
second. Every client's book stays checksum-correct and ends equal to ``book:{P}``, every trade
reaches every client once and in order; a client that stops reading is closed, and does not
hold the others back."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import redis
from sortedcontainers import SortedDict
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from shard.config import Keys
from shard.l2 import checksum
from shard.server import LocalServer

from .helpers import PAIR, stored_book
from .test_gateway import Gateway
from .test_gateway import daemon as daemon  # the fixture

CLIENTS = 200
RATE = 10_000  # inputs a second
SECONDS = 6


class Client:
    """A WebSocket client that keeps the book and checks every message."""

    def __init__(self) -> None:
        self.bids: SortedDict[int, tuple[int, int]] = SortedDict()
        self.asks: SortedDict[int, tuple[int, int]] = SortedDict()
        self.seq = 0
        self.messages = 0
        self.snapshots = 0
        self.last_trade = 0
        self.trades = 0

    def apply(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "snapshot":
            self.bids.clear()
            self.asks.clear()
            self.snapshots += 1
        elif kind == "depth":
            assert message["prev"] == self.seq, (message["prev"], self.seq)
        elif kind == "trades":  # ids are unique and rising: the ends show a gap or a repeat
            trades = message["trades"]
            first, last = trades[0]["trade_id"], trades[-1]["trade_id"]
            assert (first, last) == (self.last_trade + 1, self.last_trade + len(trades))
            self.last_trade = last
            self.trades += len(trades)
            return
        else:
            return
        for side, book in (("bids", self.bids), ("asks", self.asks)):
            for price, quantity, orders in message[side]:
                if quantity:
                    book[price] = (quantity, orders)
                else:
                    book.pop(price, None)
        bids = [(p, self.bids[p][0]) for p in self.bids.islice(-10, reverse=True)]
        asks = [(p, self.asks[p][0]) for p in self.asks.islice(0, 10)]
        assert checksum(bids, asks) == message["checksum"]
        self.seq = message["seq"]
        if kind == "snapshot":
            self.last_trade = message["trades"][-1]["trade_id"] if message["trades"] else 0

    def as_fields(self) -> dict[str, str]:
        out = {f"b:{p}": f"{q}:{n}" for p, (q, n) in self.bids.items()}
        out.update({f"a:{p}": f"{q}:{n}" for p, (q, n) in self.asks.items()})
        return out


async def follow(url: str, client: Client, until: asyncio.Event) -> None:
    async with connect(url, max_size=2**24) as ws:
        while not until.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            client.messages += 1
            client.apply(msgspec.json.decode(raw))


async def stall(url: str, closed: dict[str, Any], until: asyncio.Event) -> None:
    """Connect, read nothing (a small receive queue: TCP pushes back), and see how it ends."""
    ws: ClientConnection
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # so TCP pushes back soon
    sock.connect(("127.0.0.1", int(url.split(":")[2].split("/")[0])))
    async with connect(url, sock=sock, max_queue=1, max_size=2**24) as ws:
        await until.wait()
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed as exc:
            closed["code"], closed["reason"] = (
                exc.rcvd.code if exc.rcvd else None,
                (exc.rcvd.reason if exc.rcvd else ""),
            )
        except TimeoutError:
            closed["code"] = "open"


def load(url: str, out: Path) -> dict[str, Any]:
    """``shard load`` at RATE for SECONDS against the running daemon; its report."""
    subprocess.run(
        [sys.executable, "-m", "shard", "load", "--pairs", PAIR, "--redis-url", url, "--rate",
         str(RATE), "--duration", str(SECONDS), "--seed", "21", "--out", str(out), "--quiet"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def test_two_hundred_clients_stay_in_sync_and_a_stalled_one_does_not_hold_them_back(
    server: LocalServer,
    r: redis.Redis,
    keys: Keys,
    daemon: None,
    tmp_path: Path,
) -> None:
    gw = Gateway(server.url, tmp_path, "ws_queue = 4000\nsend_buffer_bytes = 16384\n")
    url = gw.base.replace("http", "ws") + f"/api/v1/pairs/{PAIR}/ws"
    clients = [Client() for _ in range(CLIENTS)]
    closed: dict[str, Any] = {}

    async def main() -> dict[str, Any]:
        done, stalled = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(follow(url, c, done)) for c in clients]
        tasks.append(asyncio.create_task(stall(url, closed, stalled)))
        await asyncio.sleep(1.0)  # all connected and past their snapshots
        assert all(c.snapshots == 1 for c in clients)
        report = await asyncio.to_thread(load, server.url, tmp_path / "load")
        # Everyone reaches the book's final seq soon after the last input is committed.
        final = int(r.hget(keys.book, "seq") or 0)
        deadline = time.monotonic() + 30
        while not all(c.seq == final for c in clients):
            assert time.monotonic() < deadline, (final, min(c.seq for c in clients))
            await asyncio.sleep(0.1)
        stalled.set()
        done.set()
        await asyncio.gather(*tasks)
        return report

    try:
        report = asyncio.run(main())
        metrics = gw.http.get("/metrics").text
    finally:
        assert gw.stop() == 0
    totals = report["totals"]
    assert totals["completed"] == totals["offered"] >= RATE * SECONDS * 0.9, totals
    print(f"shard load: {totals}; latency {report['latency_us']}")
    book = {k: v for k, v in stored_book(r, keys).items() if k[1] == ":"}
    for client in clients:
        assert client.as_fields() == book
    assert sum(c.messages for c in clients) >= CLIENTS * 10
    trades = r.xlen(keys.trades)
    assert trades > RATE * SECONDS // 10
    assert all(c.trades == trades and c.last_trade == trades for c in clients)
    # The stalled client was cut off: with the reason if it read that far, else by the
    # connection's end (it never read the close frame buffered behind its data).
    assert closed.get("code") in (1013, None), closed
    assert 'gateway_ws_slow_closes_total{pair="BTC-USDT"} 1.0' in metrics
