"""The ``shard`` command line (``python -m shard``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from shard import __version__


def _replay(args: argparse.Namespace) -> int:
    from shard.replay import CHUNK_LINES, replay

    source = args.file
    with contextlib.ExitStack() as stack:
        inp = sys.stdin.buffer if source == "-" else stack.enter_context(open(source, "rb"))
        # An interactive session sees each outcome as soon as its line is read.
        chunk = 1 if inp.isatty() else CHUNK_LINES
        try:
            replay(inp, sys.stdout.buffer, events=args.events, chunk_lines=chunk)
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): stop quietly, as Unix tools do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0
    return 0


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from shard.config import ConfigError, load

    try:
        return load(args.config, pair=args.pair, redis_url=args.redis_url)
    except ConfigError as exc:
        raise SystemExit(f"shard: {exc}") from None


def _run(args: argparse.Namespace) -> int:
    import uvloop

    from shard.daemon import Shard
    from shard.logs import setup

    config = _config(args)
    setup(config.pair, config.log_level)
    shard = Shard(config, max_inputs=args.max_inputs, exit_when_idle=args.exit_when_idle)
    try:
        uvloop.run(shard.run())
    except Exception:
        # A broken invariant or unrecoverable state: say so in the log, exit non-zero, and let
        # the supervisor restart us (recovery makes a restart safe).
        logging.getLogger("shard").exception("crashed")
        return 70  # EX_SOFTWARE
    return 0


def _health(args: argparse.Namespace) -> int:
    import asyncio
    import json

    import redis

    from shard.config import Keys
    from shard.daemon import connect

    config = _config(args)
    client = connect(config)
    keys = Keys(config.pair, config.key_prefix)

    async def read() -> object:
        try:
            return await client.get(keys.health)
        finally:
            await client.aclose()

    try:
        raw = asyncio.run(read())
    except (redis.RedisError, OSError) as exc:
        print(f"unhealthy: cannot reach redis: {exc}", file=sys.stderr)
        return 1
    if raw is None:
        print(
            f"unhealthy: no heartbeat from shard {config.pair} (key {keys.health})", file=sys.stderr
        )
        return 1
    assert isinstance(raw, bytes)
    print(json.dumps(json.loads(raw)))
    return 0


def _common(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--pair", help="trading pair, e.g. BTC-USDT (env SHARD_PAIR)")
    sub.add_argument("--redis-url", help="redis:// or rediss:// URL (env REDIS_URL)")
    sub.add_argument("--config", help="TOML file with a [shard] table (env SHARD_CONFIG)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shard",
        description="An order-book matching shard for one trading pair.",
    )
    parser.add_argument("--version", action="version", version=f"shard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = commands.add_parser(
        "replay",
        help="run JSON-lines messages through the engine offline and print trades",
        description=(
            "Read messages as JSON lines (the seed's format), match them, and print trades "
            "(and with --events, events) as JSON lines: what the daemon would publish."
        ),
    )
    replay.add_argument(
        "file",
        nargs="?",
        default="-",
        metavar="FILE",
        help="JSON-lines input; - or nothing for standard input",
    )
    replay.add_argument(
        "--events",
        action="store_true",
        help="also print one event per input, after that input's trades",
    )
    replay.set_defaults(handler=_replay)

    run = commands.add_parser(
        "run",
        help="run one shard daemon in the foreground",
        description="Consume orders:{P}, match, publish trades:{P} and events:{P} exactly once. "
        "SIGTERM/SIGINT finish and commit the batch in hand, then exit 0.",
    )
    _common(run)
    run.add_argument("--max-inputs", type=int, help="stop after this many inputs (tests)")
    run.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="stop when a read finds no input (tests, batch jobs)",
    )
    run.set_defaults(handler=_run)

    health = commands.add_parser(
        "health",
        help="exit 0 if the pair's shard has a fresh heartbeat (for health checks)",
    )
    _common(health)
    health.set_defaults(handler=_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))
