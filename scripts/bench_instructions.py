#!/usr/bin/env python3
"""Instructions per input on each side of the daemon, counted under valgrind: figures that do
not move with the machine's load, for comparing two commits.

Wall-clock and CPU-time figures on this shared machine move by 25% between runs, more than most
changes. Valgrind's cachegrind counts the instructions a process executes (``--cache-sim=no``:
no cache model, about 30x slower), which is the same on every run of the same code and input.

* ``engine``: the matching alone: the standard mix decoded first, then applied to an
  ``Engine`` without market data; a run that only decodes is subtracted.
* ``shard``: the daemon's CPU work on a batch, without I/O: ``Pipeline.apply`` (decode, match,
  build the output rows), the reject metrics and ``Commit.command`` (pack the commit), over
  --count inputs of the standard mix (shard/workload.py, --seed) in 1,000-input batches, as raw
  entries like XREAD returns. A second run that only builds the inputs is subtracted.
* ``server``: the server's work to run the commit script (``COMMIT_LUA``, fence and
  ``XGROUP SETID`` included, append-only file on) for the same batches, sent from a client
  outside valgrind, after the inputs were added to ``orders:{P}`` (the script checks that
  each batch follows on). A server that gets the inputs but no commit is subtracted. Then,
  from a third server, what reading the inputs back costs (``XREAD``, 1,000 a call, as the
  daemon reads a backlog).

  .venv/bin/python scripts/bench_instructions.py --count 20000
  PYTHONPATH=/tmp/other-commit .venv/bin/python scripts/bench_instructions.py   # to compare
  .venv/bin/python scripts/bench_instructions.py --accounts 10   # accounts on half the orders
  .venv/bin/python scripts/bench_instructions.py --count 50000 --engine-only

Needs ``valgrind`` on PATH (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import msgspec
import redis
from redis.asyncio import Redis as AsyncRedis

from shard.commit import COMMIT_LUA, Commit
from shard.config import Config, Keys
from shard.decode import decode_json
from shard.engine import Engine
from shard.metrics import Metrics
from shard.pipeline import Pipeline
from shard.server import find_server_binary, free_port
from shard.workload import standard_mix

PAIR = "BENCH"
BATCH = 1000
ACCOUNTS = 0


def raw_entries(count: int, seed: int) -> list[tuple[bytes, list[bytes]]]:
    """The standard mix as XREAD returns it: (entry ID, [name, value, ...]) in bytes."""
    out = []
    for i, msg in enumerate(standard_mix(count, seed, accounts=ACCOUNTS)):
        pairs = [x for k, v in msg.items() for x in (k.encode(), str(v).encode())]
        out.append((f"1700000000000-{i + 1}".encode(), pairs))
    return out


def commits(count: int, seed: int) -> list[list[Any]]:
    """Each batch's commit command, as the daemon builds it (also the shard side's work)."""
    keys = Keys(PAIR)
    pipeline, engine, metrics = (
        Pipeline(Config(pair=PAIR), keys),
        Engine(track_depth=True),
        Metrics(PAIR),
    )
    commit = Commit(AsyncRedis(), keys, "shard", "setid", 0)  # builds commands: never connects
    entries = raw_entries(count, seed)
    out = []
    for start in range(0, count, BATCH):
        batch = pipeline.apply(engine, entries[start : start + BATCH])
        for reason in batch.rejected:  # as Shard.step counts them
            metrics.reject(reason)
        out.append(commit.command(batch))
        pipeline.confirmed(batch)
    return out


def decoded(count: int, seed: int) -> list[Any]:
    """The standard mix decoded once (as the daemon's decoder would), for the engine alone."""
    return [
        decode_json(msgspec.json.encode(m)) for m in standard_mix(count, seed, accounts=ACCOUNTS)
    ]


def engine_work(count: int, seed: int) -> None:
    """The matching alone: each decoded input applied to an engine without market data."""
    engine, trades = Engine(), []
    side = engine.order_events
    for n, msg in enumerate(decoded(count, seed)):
        engine.apply(msg, None, trades)
        side.clear()
        if n % 1000 == 999:
            trades.clear()


def counted(stderr: str) -> int:
    """The instruction count in valgrind's report."""
    found = re.search(r"I\s+refs:\s+([\d,]+)", stderr)
    if not found:
        raise RuntimeError(f"no instruction count from valgrind: {stderr[-500:]}")
    return int(found.group(1).replace(",", ""))


def instructions(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``command`` under cachegrind; its instruction count."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no",
             f"--cachegrind-out-file={tmp}/out", *command],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
    return counted(done.stderr)


def shard_side(count: int, seed: int, parts: tuple[str, str] = ("inputs", "work")) -> float:
    me = [sys.executable, __file__, "--count", str(count), "--seed", str(seed)]
    me += ["--batch", str(BATCH), "--accounts", str(ACCOUNTS)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    base = instructions([*me, "--inner", parts[0]], env)
    work = instructions([*me, "--inner", parts[1]], env)
    return (work - base) / count


def server_run(
    entries: list[tuple[bytes, list[bytes]]], batches: list[list[Any]], reads: bool = False
) -> int:
    """A server under cachegrind that gets the inputs, then ``batches`` (commits), then, with
    ``reads``, XREADs of all the inputs as the daemon makes them; its instruction count."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        out = f"{tmp}/out"
        proc = subprocess.Popen(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
             find_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            keys = Keys(PAIR)
            pipe = client.pipeline(transaction=False)
            for entry_id, pairs in entries:  # the inputs: the commit checks the batch follows on
                pipe.execute_command("XADD", keys.orders, entry_id, *pairs)
            pipe.execute()
            client.xgroup_create(keys.orders, "shard", id="0")
            client.script_load(COMMIT_LUA)
            for args in batches:
                reply = client.execute_command(*args)
                assert reply[0] == b"OK", reply
            at = "0-0"
            while reads:
                got: Any = client.execute_command(
                    "XREAD", "COUNT", BATCH, "STREAMS", keys.orders, at
                )
                if not got:
                    break
                at = got[0][1][-1][0]
            client.shutdown(nosave=True)
        except BaseException:
            proc.kill()  # not left running (30x slower) when the run fails
            proc.wait()
            raise
        _, err = proc.communicate()
    return counted(err)


def main() -> None:
    global BATCH, ACCOUNTS
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--batch", type=int, default=BATCH, help="inputs per batch (commit and read)"
    )
    parser.add_argument(
        "--accounts", type=int, default=0, help="accounts on half the orders (0: none)"
    )
    parser.add_argument(
        "--engine-only", action="store_true", help="only the engine line (no server runs)"
    )
    parser.add_argument(
        "--inner", choices=("inputs", "work", "decoded", "engine"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    BATCH, ACCOUNTS = args.batch, args.accounts
    if args.inner:  # one side of a subtraction, run under valgrind
        inner = {"inputs": raw_entries, "work": commits, "decoded": decoded, "engine": engine_work}
        inner[args.inner](args.count, args.seed)
        return
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not on PATH (Debian: apt-get install valgrind)")
    with_accounts = f", accounts on half the orders ({ACCOUNTS})" if ACCOUNTS else ""
    print(
        f"# {args.count:,} inputs of the standard mix, seed {args.seed}, {BATCH}-input "
        f"batches{with_accounts}"
    )
    engine = shard_side(args.count, args.seed, ("decoded", "engine"))
    print(f"engine: {engine:,.0f} instructions per input (pre-decoded, matching alone)")
    if args.engine_only:
        return
    print(f"shard:  {shard_side(args.count, args.seed):,.0f} instructions per input")
    entries = raw_entries(args.count, args.seed)
    batches = commits(args.count, args.seed)
    base = server_run(entries, [])
    committed = server_run(entries, batches)
    read = server_run(entries, batches, reads=True)
    n = args.count
    print(f"server: {(committed - base) / n:,.0f} instructions per input (commit script, AOF on)")
    print(f"server: {(read - committed) / n:,.0f} more to read the inputs (XREAD, {BATCH} a call)")


if __name__ == "__main__":
    main()
