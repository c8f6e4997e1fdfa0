#!/usr/bin/env python3
"""Server CPU of committing a batch's outputs: Lua (as the daemon does) against MULTI/EXEC.

Runs the standard mix (--count, --seed) through the engine in 1,000-input batches, then XADDs
each batch's trades and events to a local server (append-only file on) three ways, and prints
the server's main-thread CPU and the client's wall time per input:

* ``lua-msgpack``: one EVALSHA per batch, outputs as one msgpack argument (the daemon's way);
* ``lua-argv``: one EVALSHA per batch, outputs flattened into ARGV;
* ``multi``: MULTI, one XADD per output, EXEC, pre-packed with hiredis.

Only the XADDs are compared (no fence, XACK or checkpoint), so the difference is the calling
convention.

  .venv/bin/python scripts/bench_commit.py --count 50000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from typing import Any

import hiredis
import msgspec
import redis

from shard.decode import decode_json
from shard.engine import Engine
from shard.messages import Trade
from shard.server import LocalServer, main_thread_cpu
from shard.wire import event_fields, trade_fields
from shard.workload import standard_mix

MSGPACK_LUA = """
local batch = cmsgpack.unpack(ARGV[1])
for _, fields in ipairs(batch[1]) do redis.call('XADD', KEYS[1], '*', unpack(fields)) end
for _, fields in ipairs(batch[2]) do redis.call('XADD', KEYS[2], '*', unpack(fields)) end
return 1
"""
ARGV_LUA = """
local i, nt, ne = 3, tonumber(ARGV[1]), tonumber(ARGV[2])
for k = 1, nt + ne do
  local n = tonumber(ARGV[i])
  redis.call('XADD', k <= nt and KEYS[1] or KEYS[2], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""
Batch = tuple[list[list[str]], list[list[str]]]


def batches(count: int, seed: int, size: int = 1000) -> list[Batch]:
    engine = Engine()
    messages = [decode_json(msgspec.json.encode(m)) for m in standard_mix(count, seed)]
    out: list[Batch] = []
    for start in range(0, count, size):
        trades: list[Trade] = []
        events = [
            event_fields(engine.apply(m, f"{start + i}-1", trades))
            for i, m in enumerate(messages[start : start + size])
        ]
        out.append(([trade_fields(t) for t in trades], events))
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

        lua = client.register_script(MSGPACK_LUA)

        def lua_msgpack(b: Batch) -> None:
            lua(keys=keys, args=[encode(b)])

        flat_lua = client.register_script(ARGV_LUA)

        def flat(b: Batch) -> None:
            argv: list[Any] = [len(b[0]), len(b[1])]
            for fields in (*b[0], *b[1]):
                argv += (len(fields), *fields)
            flat_lua(keys=keys, args=argv)

        conn = client.connection_pool.get_connection()

        def multi(b: Batch) -> None:
            parts = [hiredis.pack_command(("MULTI",))]
            parts += [hiredis.pack_command(("XADD", keys[0], "*", *f)) for f in b[0]]
            parts += [hiredis.pack_command(("XADD", keys[1], "*", *f)) for f in b[1]]
            parts.append(hiredis.pack_command(("EXEC",)))
            conn.send_packed_command([b"".join(parts)])
            for _ in parts:
                conn.read_response()

        # Interleaved rounds: the first runs on a new server pay its warm-up.
        for _ in range(args.rounds):
            run("lua-msgpack", lua_msgpack)
            run("lua-argv", flat)
            run("multi", multi)
        client.connection_pool.release(conn)
        print(f"# {args.count:,} inputs, seed {args.seed}, {len(work)} batches; {server.url}")


if __name__ == "__main__":
    main()
