#!/usr/bin/env python3
"""Benchmarks of the matching core; prints figures, asserts nothing.

  (a) engine:  Engine.apply on pre-decoded messages of the standard mix (shard/workload.py),
               best of --repeat runs, then a second pass timing every message for percentiles.
  (b) replay:  `shard replay FILE > /dev/null` end to end (JSON decode, match, JSON encode) on a
               --replay-count message file of the standard mix, with and without --events.
  (c) rss:     peak RSS of the whole `shard replay` process over --rss-count resting,
               non-crossing orders (1,000 price levels a side, quantities 10-1000).

  .venv/bin/python scripts/bench_book.py                 # all three, the documented defaults
  .venv/bin/python scripts/bench_book.py engine --count 500000
  .venv/bin/python scripts/bench_book.py --accounts 100      # accounts on half the orders

Workloads are seeded (--seed, default 1); the files go to a temporary directory.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from shard.decode import decode_json
from shard.engine import Engine
from shard.messages import Trade
from shard.workload import resting_orders, standard_mix


def percentiles(samples_ns: list[int]) -> str:
    samples_ns.sort()
    n = len(samples_ns)

    def at(q: float) -> float:
        return samples_ns[min(n - 1, int(q * n))] / 1000

    return (
        f"p50 {at(0.50):.2f} us  p90 {at(0.90):.2f} us  p99 {at(0.99):.2f} us  "
        f"p99.9 {at(0.999):.2f} us  max {samples_ns[-1] / 1000:.1f} us"
    )


def bench_engine(count: int, seed: int, repeat: int, accounts: int) -> None:
    mix = standard_mix(count, seed, accounts=accounts)
    msgs = [decode_json(msgspec.json.encode(m)) for m in mix]
    best = float("inf")
    for _ in range(repeat):
        engine = Engine()
        trades: list[Trade] = []
        apply = engine.apply
        gc.collect()
        start = time.perf_counter()
        events = [apply(m, None, trades) for m in msgs]
        best = min(best, time.perf_counter() - start)
    statuses = collections.Counter(e.status for e in events)
    print(f"(a) engine, pre-decoded standard mix: {count:,} msgs, seed {seed}{_with(accounts)}")
    print(f"    throughput {count / best:,.0f} msgs/s (best of {repeat}; {best:.3f} s)")
    print(
        f"    trades {len(trades):,}; resting at end {len(engine.book):,}; "
        f"events {dict(statuses.most_common())}"
    )
    engine = Engine()
    trades = []
    samples: list[int] = []
    clock = time.perf_counter_ns
    for m in msgs:
        t0 = clock()
        engine.apply(m, None, trades)
        samples.append(clock() - t0)
    print(f"    per message: {percentiles(samples)}")


def _with(accounts: int) -> str:
    return f", accounts on half the orders ({accounts} accounts)" if accounts else ""


def write_lines(path: Path, messages) -> None:  # type: ignore[no-untyped-def]
    path.write_bytes(msgspec.json.Encoder().encode_lines(list(messages)))


# A forked child's ru_maxrss starts from its parent's RSS at fork time, and this script is big
# after generating a workload; so a small launcher starts `shard replay` and reports its peak.
LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
elapsed = time.perf_counter() - start
print(elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def run_replay(path: Path, *extra: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `shard replay` process."""
    with open(path, "rb") as inp:
        result = subprocess.run(
            [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "shard", "replay", *extra],
            stdin=inp,
            stdout=subprocess.PIPE,
            check=True,
        )
    elapsed, rss_kib = result.stdout.split()
    return float(elapsed), int(rss_kib) / 1024


def bench_replay(count: int, seed: int, repeat: int, tmp: Path, accounts: int) -> None:
    path = tmp / "mix.jsonl"
    write_lines(path, standard_mix(count, seed, accounts=accounts))
    size = path.stat().st_size / 2**20
    print(
        f"(b) shard replay end to end: {count:,}-message standard mix ({size:.1f} MiB), "
        f"seed {seed}{_with(accounts)}"
    )
    for extra in ((), ("--events",)):
        best = min(run_replay(path, *extra)[0] for _ in range(repeat))
        label = "trades + events" if extra else "trades only    "
        print(
            f"    {label}: {count / best:,.0f} msgs/s (best of {repeat}; {best:.3f} s "
            "incl. interpreter start)"
        )


def bench_rss(count: int, seed: int, tmp: Path, accounts: int) -> None:
    path = tmp / "resting.jsonl"
    write_lines(path, resting_orders(count, seed, accounts=accounts))
    elapsed, rss = run_replay(path)
    empty = tmp / "empty.jsonl"
    empty.write_bytes(b"")
    _, base = run_replay(empty)
    print(
        f"(c) shard replay over {count:,} resting non-crossing orders, seed {seed}"
        + (f", each of one of {accounts} accounts" if accounts else "")
    )
    print(
        f"    peak RSS {rss:.0f} MiB (an empty run: {base:.0f} MiB; "
        f"{(rss - base) * 2**20 / count:.0f} bytes per order); {count / elapsed:,.0f} msgs/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", nargs="*", help="engine, replay and/or rss (default: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=200_000, help="(a) messages")
    parser.add_argument("--replay-count", type=int, default=200_000, help="(b) messages")
    parser.add_argument("--rss-count", type=int, default=1_000_000, help="(c) resting orders")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--accounts",
        type=int,
        default=0,
        help="accounts on the orders (0: none): half the standard mix's orders, each resting "
        "order in (c)",
    )
    args = parser.parse_args()
    which = args.which or ["engine", "replay", "rss"]
    if unknown := set(which) - {"engine", "replay", "rss"}:
        parser.error(f"unknown benchmark: {', '.join(sorted(unknown))}")
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, {platform.machine()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if "engine" in which:
            bench_engine(args.count, args.seed, args.repeat, args.accounts)
        if "replay" in which:
            bench_replay(args.replay_count, args.seed, args.repeat, Path(tmp), args.accounts)
        if "rss" in which:
            bench_rss(args.rss_count, args.seed, Path(tmp), args.accounts)


if __name__ == "__main__":
    main()
