"""Fan-out: 200 WebSocket clients on one gateway while inputs flow. Every client's book stays
checksum-correct and ends equal to ``book:{P}``; a client that stops reading is conflated and
then closed, and does not hold the others back."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from shard.config import Keys
from shard.l2 import checksum
from shard.server import LocalServer
from shard.workload import standard_mix

from .helpers import PAIR, flat, stored_book
from .test_gateway import Gateway
from .test_gateway import daemon as daemon  # the fixture

CLIENTS = 200
MESSAGES = 8000
RATE = 1000  # inputs a second


class Client:
    """A WebSocket client that keeps the book and checks every message."""

    def __init__(self) -> None:
        self.bids: dict[int, tuple[int, int]] = {}
        self.asks: dict[int, tuple[int, int]] = {}
        self.seq = 0
        self.messages = 0
        self.snapshots = 0

    def apply(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "snapshot":
            self.bids.clear()
            self.asks.clear()
            self.snapshots += 1
        elif kind == "depth":
            assert message["prev"] == self.seq, (message["prev"], self.seq)
        else:
            return
        for side, book in (("bids", self.bids), ("asks", self.asks)):
            for price, quantity, orders in message[side]:
                if quantity:
                    book[price] = (quantity, orders)
                else:
                    book.pop(price, None)
        bids = sorted(((p, q) for p, (q, _) in self.bids.items()), reverse=True)
        asks = sorted((p, q) for p, (q, _) in self.asks.items())
        assert checksum(bids, asks) == message["checksum"]
        self.seq = message["seq"]

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
            client.apply(json.loads(raw))


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


def publish(r: redis.Redis, keys: Keys) -> None:
    messages = list(standard_mix(MESSAGES, seed=21))
    step = RATE // 20
    started = time.monotonic()
    for n in range(0, len(messages), step):
        pipe = r.pipeline(transaction=False)
        for m in messages[n : n + step]:
            pipe.xadd(keys.orders, flat(m))
        pipe.execute()
        time.sleep(max(0.0, started + (n + step) / RATE - time.monotonic()))


def test_two_hundred_clients_stay_in_sync_and_a_stalled_one_does_not_hold_them_back(
    server: LocalServer,
    r: redis.Redis,
    keys: Keys,
    daemon: None,
    tmp_path: Path,
) -> None:
    gw = Gateway(server.url, tmp_path, "ws_queue = 1000\nsend_buffer_bytes = 16384\n")
    url = gw.base.replace("http", "ws") + f"/api/v1/pairs/{PAIR}/ws"
    clients = [Client() for _ in range(CLIENTS)]
    closed: dict[str, Any] = {}

    async def main() -> float:
        done, stalled = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(follow(url, c, done)) for c in clients]
        tasks.append(asyncio.create_task(stall(url, closed, stalled)))
        await asyncio.sleep(1.0)  # all connected and past their snapshots
        assert all(c.snapshots == 1 for c in clients)
        await asyncio.to_thread(publish, r, keys)
        # Everyone reaches the book's final seq soon after the last input is committed.
        deadline = time.monotonic() + 60
        while True:
            final = int(r.hget(keys.book, "seq") or 0)
            events = r.xlen(keys.events)
            if events == MESSAGES and all(c.seq == final for c in clients):
                break
            assert time.monotonic() < deadline, (events, final, min(c.seq for c in clients))
            await asyncio.sleep(0.1)
        caught_up = time.monotonic()
        stalled.set()
        done.set()
        await asyncio.gather(*tasks)
        return caught_up

    try:
        asyncio.run(main())
        metrics = gw.http.get("/metrics").text
    finally:
        assert gw.stop() == 0
    book = {k: v for k, v in stored_book(r, keys).items() if k[1] == ":"}
    for client in clients:
        assert client.as_fields() == book
    assert sum(c.messages for c in clients) >= CLIENTS * 10
    # The stalled client was cut off: with the reason if it read that far, else by the
    # connection's end (it never read the close frame buffered behind its data).
    assert closed.get("code") in (1013, None), closed
    assert 'gateway_ws_slow_closes_total{pair="BTC-USDT"} 1.0' in metrics
