#!/usr/bin/env python3
"""Server CPU of committing a batch's outputs: Lua (as the daemon does) against MULTI/EXEC.

Runs the standard mix (--count, --seed) through the engine in 1,000-input batches, then XADDs
each batch's trades and events to a local server (append-only file on) three ways, and prints
the server's main-thread CPU and the client's wall time per input:

* ``lua-rows``: one EVALSHA per batch, outputs as one msgpack argument of rows, each a shape
  index and its values; the field names are constants in the script (the daemon's way);
* ``lua-fields``: the same, but each entry as its list of names and values;
* ``multi``: MULTI, one XADD per output, EXEC, pre-packed with hiredis.

The client's wall time includes building each batch's argument from the engine's outputs.

Only the XADDs are compared (no fence, XACK or checkpoint), so the difference is the calling
convention.

  .venv/bin/python scripts/bench_commit.py --count 50000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import hiredis
import msgspec
import redis

from shard.commit import EVENT_SHAPES_LUA, TRADE_SHAPES_LUA, XADD_ROWS_LUA
from shard.decode import decode_json
from shard.engine import Engine
from shard.load.probes import main_thread_cpu
from shard.messages import Event, Trade
from shard.server import LocalServer
from shard.wire import Row, add_event, add_trade, event_fields, trade_fields
from shard.workload import standard_mix

MSGPACK_LUA = """
local batch = cmsgpack.unpack(ARGV[1])
for _, fields in ipairs(batch[1]) do redis.call('XADD', KEYS[1], '*', unpack(fields)) end
for _, fields in ipairs(batch[2]) do redis.call('XADD', KEYS[2], '*', unpack(fields)) end
return 1
"""
ROWS_LUA = f"""
{XADD_ROWS_LUA}
local batch = cmsgpack.unpack(ARGV[1])
xadd_rows(KEYS[1], batch[1], {TRADE_SHAPES_LUA})
xadd_rows(KEYS[2], batch[2], {EVENT_SHAPES_LUA})
return 1
"""
Batch = tuple[list[Trade], list[Event]]


def batches(count: int, seed: int, size: int = 1000) -> list[Batch]:
    engine = Engine()
    messages = [decode_json(msgspec.json.encode(m)) for m in standard_mix(count, seed)]
    out: list[Batch] = []
    for start in range(0, count, size):
        trades: list[Trade] = []
        events = [
            engine.apply(m, f"{start + i}-1", trades)
            for i, m in enumerate(messages[start : start + size])
        ]
        out.append((trades, events))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = batches(args.count, args.seed)
    encode = msgspec.msgpack.Encoder().encode
    with tempfile.TemporaryDirectory() as tmp, LocalServer(tmp) as server:
        client = redis.Redis.from_url(server.url, protocol=2)
        keys = ["bench:trades:{x}", "bench:events:{x}"]

        def server_cpu() -> float:
            return main_thread_cpu(client.info("cpu"))  # type: ignore[arg-type]

        def run(name: str, commit: Callable[[Batch], None]) -> None:
            client.delete(*keys)
            cpu, wall = server_cpu(), time.perf_counter()
            for batch in work:
                commit(batch)
            cpu, wall = server_cpu() - cpu, time.perf_counter() - wall
            per = 1e6 / args.count
            print(
                f"{name:12s} server {cpu * per:5.2f} us/input   client wall {wall * per:5.2f} "
                "us/input"
            )

        fields_script = client.register_script(MSGPACK_LUA)

        def lua_fields(b: Batch) -> None:
            tr = [trade_fields(t) for t in b[0]]
            fields_script(keys=keys, args=[encode((tr, [event_fields(e) for e in b[1]]))])

        rows_script = client.register_script(ROWS_LUA)

        def lua_rows(b: Batch) -> None:
            trade_rows: Row = []
            event_rows: Row = []
            for t in b[0]:
                add_trade(trade_rows, t)
            for e in b[1]:
                add_event(event_rows, e)
            rows_script(keys=keys, args=[encode((trade_rows, event_rows))])

        conn = client.connection_pool.get_connection()

        def multi(b: Batch) -> None:
            parts = [hiredis.pack_command(("MULTI",))]
            parts += [hiredis.pack_command(("XADD", keys[0], "*", *trade_fields(t))) for t in b[0]]
            parts += [hiredis.pack_command(("XADD", keys[1], "*", *event_fields(e))) for e in b[1]]
            parts.append(hiredis.pack_command(("EXEC",)))
            conn.send_packed_command([b"".join(parts)])
            for _ in parts:
                conn.read_response()

        # Interleaved rounds: the first runs on a new server pay its warm-up.
        for _ in range(args.rounds):
            run("lua-rows", lua_rows)
            run("lua-fields", lua_fields)
            run("multi", multi)
        client.connection_pool.release(conn)
        print(f"# {args.count:,} inputs, seed {args.seed}, {len(work)} batches; {server.url}")


if __name__ == "__main__":
    main()
