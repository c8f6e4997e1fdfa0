#!/usr/bin/env python3
"""Benchmark of ``shard gateway`` on a real local server and daemon; prints figures.

1. Starts a Redis-compatible server (as bench_e2e.py), ``shard run`` for pair BENCH and
   ``shard gateway`` for it (rate limits raised out of the way), each its own process.
2. **REST order entry**: for each rate of ``--rates`` (orders a second), ``--duration`` seconds
   of ``POST /api/v1/pairs/BENCH/orders``, open loop: order *i* is due at start + i / rate and
   its latency runs from when it was due to when its answer (the input's event) is in, so a
   slow answer delays no later measurement (no coordinated omission). The orders are the
   standard mix's (shard/workload.py, --seed), limit orders around one price, about one in five
   trading. Prints p50, p99 and max, the rate achieved and how many answers were 202 (no event
   within wait_ms). The clients are this process (httpx, ``--connections`` kept-alive
   connections): at high rates it is the wall, and the achieved rate says so.
3. **WebSocket fan-out**: ``--clients`` WebSocket clients connect; the inputs of the standard
   mix are published straight to ``orders:{BENCH}`` at ``--ws-rate`` a second for
   ``--duration`` seconds, first with no client connected, then with them all. Prints the
   messages delivered a second (all clients together), how many were book updates, and the
   gateway's CPU (from /proc) with and without the clients: the difference per client is the
   cost of fan-out. The clients count messages and do not parse them.

  .venv/bin/python scripts/bench_gateway.py
  .venv/bin/python scripts/bench_gateway.py --rates 1000,5000 --clients 200 --duration 10

On a 2-core machine the client (httpx, about 5 ms of CPU a request) is the wall near 600
requests a second; the achieved rate shows where.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis
from websockets.asyncio.client import connect

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


async def rest_run(base: str, rate: int, duration: float, connections: int, seed: int) -> None:
    orders = [m for m in standard_mix(int(rate * duration * 2) + 10, seed) if m["type"] == "order"]
    count = int(rate * duration)
    latencies: list[float] = []
    accepted = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:
        path = f"/api/v1/pairs/{PAIR}/orders"
        await http.post(path, json={"side": "buy", "price": 1, "quantity": 1})  # warm

        slots = asyncio.Semaphore(connections)  # httpx's pool slows down with many waiters

        async def one(i: int, due: float) -> None:
            nonlocal accepted
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = {k: v for k, v in orders[i].items() if k not in ("type", "timestamp")}
            async with slots:
                answer = await http.post(path, json=body)
            latencies.append(time.perf_counter() - due)
            accepted += answer.status_code == 202

        start = time.perf_counter() + 0.2
        await asyncio.gather(*(one(i, start + i / rate) for i in range(count)))
        took = time.perf_counter() - start
    ms = [x * 1000 for x in latencies]
    print(
        f"REST {rate:>5}/s for {duration:g} s: achieved {count / took:,.0f}/s, "
        f"p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms, "
        f"max {max(ms):.1f} ms, 202s {accepted}",
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
    stop = asyncio.Event()

    async def client(i: int) -> None:
        async with connect(ws, max_size=2**26) as conn:
            while not stop.is_set():
                try:
                    raw = await asyncio.wait_for(conn.recv(), 0.5)
                except TimeoutError:
                    continue
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
        f"{(busy_cpu - idle_cpu) / clients * 1e3:.2f} ms of CPU a second per client",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="250,500,1000", help="REST order rates, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--clients", type=int, default=200)
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
            for rate in (int(x) for x in args.rates.split(",")):
                asyncio.run(rest_run(base, rate, args.duration, args.connections, args.seed))
            ws = base.replace("http", "ws") + f"/api/v1/pairs/{PAIR}/ws"
            asyncio.run(
                fanout(server.url, ws, gateway.pid, args.clients, args.ws_rate, args.duration,
                       args.seed)
            )  # fmt: skip
        finally:
            for proc in (gateway, daemon):
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
