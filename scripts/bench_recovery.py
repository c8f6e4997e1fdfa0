#!/usr/bin/env python3
"""Benchmark of recovery after SIGKILL with a big book, whole process; prints figures.

1. Starts a Redis-compatible server (as bench_e2e.py: append-only file on, everysec) in a
   temporary directory, and publishes --preload resting orders (shard/workload.py's
   ``resting_orders``: 1,000 price levels a side) to orders:{BENCH}.
2. Starts ``shard run`` (``snapshot_every_inputs`` = --preload, else the defaults) and waits
   until it has committed them all and stored the snapshot that follows them; then publishes
   --tail inputs of the standard mix (--seed) and waits until they are committed: the state a
   crash meets between two snapshots, whose tail recovery replays.
3. --runs times: SIGKILLs the daemon, starts a new one (the same host, so it takes the lease
   back at once) and publishes one new input at the same moment; the figure is the time from
   the start of the new process to the moment that input's event is read. Printed beside it,
   from the daemon's log: the interpreter's start to the ``starting`` line (imports), and the
   ``recovered`` line's steps (reading the checkpoint, reading and restoring the snapshot,
   replaying the tail, checking the outputs and ``book:{P}``).

  .venv/bin/python scripts/bench_recovery.py --preload 1000000 --tail 50000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from shard.config import Keys
from shard.server import LocalServer
from shard.workload import resting_orders, standard_mix

PAIR = "BENCH"
STEPS = ("checkpoint_s", "snapshot_read_s", "restore_s", "replay_s", "checks_s")


def publish(client: redis.Redis, key: str, messages: Any) -> int:
    pipe = client.pipeline(transaction=False)
    n = 0
    for n, msg in enumerate(messages, 1):
        pipe.xadd(key, {k: str(v) for k, v in msg.items()})
        if n % 5000 == 0:
            pipe.execute()
    pipe.execute()
    return n


def wait_for(what: str, done: Any, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shard", "run", "--pair", PAIR], env=env, stderr=out
        )


def log_lines(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


def run_once(client: redis.Redis, keys: Keys, env: dict[str, str], log: Path) -> dict[str, Any]:
    """Start a daemon and time the first new input's event; the daemon is left running."""
    log.write_text("")
    last = client.xrevrange(keys.events, count=1)
    after = last[0][0] if last else b"0-0"
    started_wall = time.time()
    started = time.perf_counter()
    proc = start(env, log)
    probe = client.xadd(
        keys.orders,
        {"type": "order", "order_id": f"probe{started_wall}", "side": "buy", "price": "1",
         "quantity": "1", "timestamp": "1"},
    )  # fmt: skip
    while True:
        got = client.xread({keys.events: after}, count=1000, block=100)
        for _, entries in got or ():
            for entry_id, fields in entries:
                after = entry_id
                if fields.get(b"input_id") == probe:
                    took = time.perf_counter() - started
                    lines = log_lines(log)
                    begun = next(x for x in lines if x.get("msg") == "starting")
                    recovered = next(x for x in lines if x.get("msg") == "recovered")
                    begun_at = datetime.fromisoformat(begun["ts"].replace("Z", "+00:00"))
                    return {
                        "proc": proc,
                        "total_s": took,
                        "start_s": begun_at.timestamp() - started_wall,
                        "recovered": recovered,
                    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preload", type=int, default=1_000_000)
    parser.add_argument("--tail", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    keys = Keys(PAIR)
    with tempfile.TemporaryDirectory() as tmp, LocalServer(Path(tmp) / "redis") as server:
        client = redis.Redis.from_url(server.url)
        # One snapshot, once the preload is in: recovery replays exactly the tail.
        every = str(args.preload)
        env = {**os.environ, "REDIS_URL": server.url, "SHARD_INSTANCE": "bench",
               "SHARD_SNAPSHOT_EVERY_INPUTS": every}  # fmt: skip
        log = Path(tmp) / "daemon.log"
        t = time.perf_counter()
        publish(client, keys.orders, resting_orders(args.preload, args.seed))
        print(f"published {args.preload:,} resting orders in {time.perf_counter() - t:.1f} s")
        proc = start(env, log)
        wait_for("the preload", lambda: client.xlen(keys.events) >= args.preload)
        wait_for(
            "a snapshot of the preload",
            lambda: int(client.hget(keys.snapshot, "events") or 0) == args.preload,
        )
        total = args.preload + publish(client, keys.orders, standard_mix(args.tail, args.seed))
        wait_for("the tail", lambda: client.xlen(keys.events) >= total)
        figures: list[dict[str, Any]] = []
        for _ in range(args.runs):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            time.sleep(0.5)
            got = run_once(client, keys, env, log)
            proc = got.pop("proc")
            rec = got["recovered"]
            print(
                f"recovery to the first new event: {got['total_s']:.2f} s (interpreter and "
                f"imports {got['start_s']:.2f} s; recovered in {rec['seconds']:.2f} s: "
                + ", ".join(f"{s[:-2]} {rec.get(s, 0):.2f}" for s in STEPS)
                + f"; {rec['replayed']:,} inputs replayed, {rec['resting']:,} resting)",
                flush=True,
            )
            figures.append(got)
        proc.terminate()
        proc.wait(30)
        totals = sorted(f["total_s"] for f in figures)
        print(
            f"median {statistics.median(totals):.2f} s over {len(totals)} runs "
            f"({totals[0]:.2f}-{totals[-1]:.2f})"
        )


if __name__ == "__main__":
    main()
