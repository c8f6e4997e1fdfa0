#!/usr/bin/env python3
"""Benchmark of ``shard gateway`` on a real local server and daemon; prints figures.

1. Starts a Redis-compatible server (as bench_e2e.py), ``shard run`` for pair BENCH and
   ``shard gateway`` for it (rate limits raised out of the way), each its own process.
2. **REST order entry**: for each rate of ``--rates`` (orders a second), ``--duration`` seconds
   of ``POST /api/v1/pairs/BENCH/orders``, open loop: order *i* is due at start + i / rate and
   its latency runs from when it was due to when its answer (the input's event) is in, so a
   slow answer delays no later measurement (no coordinated omission). The orders are the
   standard mix's (shard/workload.py, --seed; the order IDs of each run their own), limit
   orders around one price, about one in five trading. Prints p50, p99 and max, the rate
   achieved, how many answers were 202 (no event within wait_ms) and any that were not 200,
   202 or 422, the CPU a request of the gateway and of the client, and how late the client
   sent the requests (p50/p99; included in the latencies).

   The client is a process of its own (this script, ``--client``): uvloop, ``--connections``
   kept-alive HTTP/1.1 connections with one request in flight each (an order due while all
   are busy waits for one, and that wait counts), the requests encoded before the run, and of
   an answer only its status line and ``content-length`` parsed. It costs 0.02-0.12 ms of CPU
   a request (less at higher rates), and sends a request up to about 1 ms after it is due
   (uvloop's timers count whole milliseconds; the p50 is 0.3-0.7 ms): it is not the wall.
3. **WebSocket fan-out**: ``--clients`` WebSocket clients connect; the inputs of the standard
   mix are published straight to ``orders:{BENCH}`` at ``--ws-rate`` a second for
   ``--duration`` seconds, first with no client connected, then with them all. Prints the
   messages delivered a second (all clients together), how many were book updates, and the
   gateway's CPU (from /proc) with and without the clients: the difference per client is the
   cost of fan-out, and the clients the gateway closed for falling behind. The clients count
   messages and do not parse them.

  .venv/bin/python scripts/bench_gateway.py
  .venv/bin/python scripts/bench_gateway.py --rates 1000,5000 --clients 0 --duration 8

The server, the daemon, the gateway and the client share the machine's cores; the figures
are for all four together.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
import uvloop
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from shard.server import LocalServer, free_port
from shard.workload import standard_mix

PAIR = "BENCH"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection with one request in flight at a time. It parses only
    the status line and ``content-length`` of an answer (uvicorn sends neither chunked bodies
    nor headers split over reads that matter here: the head is searched in the whole buffer)."""

    def __init__(self, answered: Callable[[_Connection, int], None]) -> None:
        self.answered = answered
        self.buffer = bytearray()
        self.transport: Any = None
        self.order = -1
        """The order in flight (-1: a warm-up request)."""
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            at = buffer.find(b"content-length:", 0, end)
            if at < 0:
                raise SystemExit(f"an answer without content-length: {bytes(buffer[:end])!r}")
            eol = buffer.find(b"\r\n", at, end + 2)
            total = end + 4 + int(buffer[at + 15 : eol])
            if len(buffer) < total:
                return
            status = int(buffer[9:12])
            del buffer[:total]
            self.answered(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def _load(
    host: str, port: int, rate: int, duration: float, connections: int, seed: int, run: int,
    gateway_pid: int,
) -> dict[str, Any]:  # fmt: skip
    """The open-loop REST client (see the module): the run's figures, as a dict."""
    count = int(rate * duration)
    mix = standard_mix(int(rate * duration * 2) + 10, seed, prefix=f"r{run}o")
    orders = [m for m in mix if m["type"] == "order"][:count]
    head = f"POST /api/v1/pairs/{PAIR}/orders HTTP/1.1\r\nhost: {host}:{port}\r\n"
    head += "content-type: application/json\r\ncontent-length: "
    requests = []
    for order in orders:
        body = json.dumps({k: v for k, v in order.items() if k not in ("type", "timestamp")})
        requests.append(f"{head}{len(body)}\r\n\r\n{body}".encode())
    warm = f"GET /api/v1/pairs/{PAIR}/ticker HTTP/1.1\r\nhost: {host}:{port}\r\n\r\n".encode()

    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    due = [0.0] * count
    sent = [0.0] * count
    latency = [0.0] * count
    statuses: Counter[int] = Counter()
    idle: deque[_Connection] = deque()
    backlog: deque[int] = deque()
    left = count
    finished = loop.create_future()

    def send(conn: _Connection, i: int) -> None:
        conn.order = i
        sent[i] = clock()
        conn.transport.write(requests[i])

    def answered(conn: _Connection, status: int) -> None:
        nonlocal left
        i = conn.order
        if i >= 0:
            latency[i] = clock() - due[i]
            statuses[status] += 1
            left -= 1
            if not left and not finished.done():
                finished.set_result(None)
        if backlog:
            send(conn, backlog.popleft())
        else:
            idle.append(conn)

    opened = [
        await loop.create_connection(lambda: _Connection(answered), host, port)
        for _ in range(connections)
    ]
    for _, conn in opened:
        conn.transport.write(warm)
    while len(idle) < connections:
        await asyncio.sleep(0.01)

    cpu_before, gateway_before = time.process_time(), cpu_seconds(gateway_pid)
    start = clock() + 0.05
    for i in range(count):
        due[i] = start + i / rate
    i = 0
    while i < count:
        now = clock()
        while i < count and due[i] <= now:
            if idle:
                send(idle.popleft(), i)
            else:
                backlog.append(i)
            i += 1
        if i < count:  # uvloop's timers count whole milliseconds: a shorter sleep would spin
            await asyncio.sleep(max(0.001, due[i] - clock()))
    lost = [conn.lost for _, conn in opened]
    await asyncio.wait([finished, *lost], return_when=asyncio.FIRST_COMPLETED)
    if not finished.done():
        raise SystemExit("the gateway closed a connection")
    took = clock() - start
    cpu = time.process_time() - cpu_before
    gateway_cpu = cpu_seconds(gateway_pid) - gateway_before
    for transport, _ in opened:
        transport.close()
    ms = [x * 1000 for x in latency]
    late = [(s - d) * 1000 for s, d in zip(sent, due, strict=True)]
    return {
        "achieved": count / took,
        "p50": percentile(ms, 0.5), "p99": percentile(ms, 0.99), "max": max(ms),
        "statuses": dict(statuses),
        "client_ms": cpu / count * 1000, "gateway_ms": gateway_cpu / count * 1000,
        "late_p50": percentile(late, 0.5), "late_p99": percentile(late, 0.99),
    }  # fmt: skip


def rest_run(
    base: str, rate: int, duration: float, connections: int, seed: int, run: int, gateway_pid: int
) -> None:
    """One rate's run, by the client in a process of its own; prints its line."""
    host, port = base.removeprefix("http://").split(":")
    command = [
        sys.executable, __file__, "--client", host, port, str(rate), str(duration),
        str(connections), str(seed), str(run), str(gateway_pid),
    ]  # fmt: skip
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    r = json.loads(out)
    statuses = r["statuses"]
    others = {k: v for k, v in statuses.items() if k not in ("200", "202", "422")}
    print(
        f"REST {rate:>5}/s for {duration:g} s: achieved {r['achieved']:,.0f}/s, "
        f"p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, max {r['max']:.1f} ms, "
        f"202s {statuses.get('202', 0)}"
        + (f", other answers {others}" if others else "")
        + f"; CPU a request: gateway {r['gateway_ms']:.2f} ms, client {r['client_ms']:.3f} ms"
        f" (sent {r['late_p50']:.2f}/{r['late_p99']:.2f} ms after due, p50/p99)",
        flush=True,
    )


def publish(url: str, rate: int, duration: float, seed: int) -> None:
    client = redis.Redis.from_url(url)
    messages = list(standard_mix(int(rate * duration), seed))
    step = max(1, rate // 50)
    start = time.monotonic()
    for n in range(0, len(messages), step):
        pipe = client.pipeline(transaction=False)
        for m in messages[n : n + step]:
            pipe.xadd(f"orders:{{{PAIR}}}", {k: str(v) for k, v in m.items()})
        pipe.execute()
        time.sleep(max(0.0, start + (n + step) / rate - time.monotonic()))
    client.close()


async def fanout(
    url: str, ws: str, gateway_pid: int, clients: int, rate: int, duration: float, seed: int
) -> None:
    before = cpu_seconds(gateway_pid)
    await asyncio.to_thread(publish, url, rate, duration, seed)
    idle_cpu = (cpu_seconds(gateway_pid) - before) / duration

    counts = [0] * clients
    depth = [0] * clients
    closed: list[str] = []
    stop = asyncio.Event()

    async def client(i: int) -> None:
        async with connect(ws, max_size=2**26) as conn:
            while not stop.is_set():
                try:
                    raw = await asyncio.wait_for(conn.recv(), 0.5)
                except TimeoutError:
                    continue
                except ConnectionClosed as exc:
                    closed.append(exc.rcvd.reason if exc.rcvd else "no close frame")
                    return
                counts[i] += 1
                depth[i] += str(raw).startswith('{"type":"depth"')

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    await asyncio.sleep(2.0)
    start_counts, start_depth = sum(counts), sum(depth)
    before = cpu_seconds(gateway_pid)
    started = time.perf_counter()
    await asyncio.to_thread(publish, url, rate, duration, seed + 1)
    took = time.perf_counter() - started
    busy_cpu = (cpu_seconds(gateway_pid) - before) / took
    delivered = (sum(counts) - start_counts) / took
    updates = (sum(depth) - start_depth) / took
    stop.set()
    await asyncio.gather(*tasks)
    print(
        f"WebSocket, {clients} clients, inputs at {rate}/s for {duration:g} s: "
        f"{delivered:,.0f} messages/s delivered ({updates:,.0f} book updates/s); "
        f"gateway CPU {idle_cpu:.0%} of a core without clients, {busy_cpu:.0%} with them: "
        f"{(busy_cpu - idle_cpu) / clients * 1e3:.2f} ms of CPU a second per client; "
        f"clients closed by the gateway: {len(closed)} {dict(Counter(closed)) or ''}",
        flush=True,
    )


def main() -> None:
    if sys.argv[1:2] == ["--client"]:  # the REST client's process (rest_run starts it)
        host, *numbers = sys.argv[2:]
        port, rate, duration, connections, seed, run, pid = (float(x) for x in numbers)
        figures = uvloop.run(
            _load(host, int(port), int(rate), duration, int(connections), int(seed), int(run),
                  int(pid))
        )  # fmt: skip
        print(json.dumps(figures))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="250,1000,5000", help="REST rates, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--clients", type=int, default=200, help="0: no fan-out run")
    parser.add_argument("--ws-rate", type=int, default=2000, help="inputs a second (fan-out)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalServer(Path(tmp) / "redis") as server:
        port = free_port()
        config = Path(tmp) / "gateway.toml"
        config.write_text(
            f'[gateway]\npairs = ["{PAIR}"]\nrate_per_address = 1e9\nburst_per_address = 1000000\n'
        )
        env = {**os.environ, "REDIS_URL": server.url}
        daemon = subprocess.Popen([sys.executable, "-m", "shard", "run", "--pair", PAIR], env=env)
        command = ["gateway", "--port", str(port), "--config", str(config)]
        gateway = subprocess.Popen(
            [sys.executable, "-m", "shard", *command], env=env, stderr=subprocess.DEVNULL
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the gateway did not become healthy")
                time.sleep(0.1)
            for run, rate in enumerate(int(x) for x in args.rates.split(",")):
                rest_run(base, rate, args.duration, args.connections, args.seed, run, gateway.pid)
            ws = base.replace("http", "ws") + f"/api/v1/pairs/{PAIR}/ws"
            if args.clients:
                asyncio.run(
                    fanout(server.url, ws, gateway.pid, args.clients, args.ws_rate,
                           args.duration, args.seed)
                )  # fmt: skip
        finally:
            for proc in (gateway, daemon):
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
