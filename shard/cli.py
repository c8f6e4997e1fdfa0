"""The ``shard`` command line (``python -m shard``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shard import __version__
from shard.defaults import GATEWAY_PORT, REDIS_PORT

if TYPE_CHECKING:
    from shard.config import Config, Keys


def _replay(args: argparse.Namespace) -> int:
    from shard.engine import Engine
    from shard.replay import CHUNK_LINES, replay
    from shard.terms import Terms

    terms = Terms(args.stp_default, args.maker_fee_ppm, args.taker_fee_ppm)
    if (problem := terms.problem()) is not None:
        print(f"shard replay: {problem}", file=sys.stderr)
        return 2
    engine = Engine(fees=terms.fees, stp_default=terms.stp_default)
    source = args.file
    with contextlib.ExitStack() as stack:
        inp = sys.stdin.buffer if source == "-" else stack.enter_context(open(source, "rb"))
        # An interactive session sees each outcome as soon as its line is read.
        chunk = 1 if inp.isatty() else CHUNK_LINES
        try:
            replay(inp, sys.stdout.buffer, events=args.events, engine=engine, chunk_lines=chunk)
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


def _stop_before_the_loop(signum: int, frame: object) -> None:
    """SIGTERM or SIGINT before the daemon's loop has taken them over (the imports and the
    connection take up to a second on a loaded machine): nothing has been read, so there is
    nothing to finish, and the stop is a clean exit 0, as it is later."""
    raise SystemExit(0)


def _stop_cleanly() -> None:
    """SIGTERM and SIGINT end the process with exit 0 from now on, until a loop takes them."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_before_the_loop)


def _run(args: argparse.Namespace) -> int:
    _stop_cleanly()
    import uvloop

    from shard.daemon import Shard
    from shard.logs import setup

    config = _config(args)
    setup(config.pair, config.log_level)
    try:
        shard = Shard(config, max_inputs=args.max_inputs, exit_when_idle=args.exit_when_idle)
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
    from redis.exceptions import MovedError, RedisClusterException

    from shard.config import Keys
    from shard.transport import connect, sync_client

    config = _config(args)
    client = connect(config)
    keys = Keys(config.pair, config.key_prefix)

    async def read() -> object:
        try:
            return await client.get(keys.health)
        finally:
            await client.aclose()

    try:
        try:
            raw = asyncio.run(read())
        except MovedError:  # a node of a cluster that does not own the pair's slot
            with contextlib.closing(sync_client(config)) as cluster:
                raw = cluster.get(keys.health)
    except (redis.RedisError, RedisClusterException, OSError) as exc:
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


def _client_setup(args: argparse.Namespace) -> tuple[Config, Keys]:
    """The config (URL, TLS keys) and Keys for a client command, as for `shard run`."""
    from shard.config import Keys

    config = _config(args)
    return config, Keys(config.pair, config.key_prefix)


def _publish(args: argparse.Namespace) -> int:
    from shard.client import message_from_flags, run_publish

    url, keys = _client_setup(args)
    fields = message_from_flags({
        "type": args.type, "order_id": args.order_id, "side": args.side,
        "order_type": args.order_type, "price": args.price, "quantity": args.quantity,
        "timestamp": args.timestamp, "account": args.account, "stp": args.stp,
    })  # fmt: skip
    if fields and args.file != "-":
        raise SystemExit("shard publish: give a FILE or message flags, not both")
    count = run_publish(url, keys, args.file, fields)
    print(f"published {count} message(s) to {keys.orders}", file=sys.stderr)
    return 0


def _trades(args: argparse.Namespace) -> int:
    import signal
    import socket

    from shard.client import print_trades
    from shard.transport import sync_client

    url, keys = _client_setup(args)
    client = sync_client(url)
    stop = {"now": False}

    def on_signal(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    consumer = args.consumer or f"{socket.gethostname()}-{os.getpid()}"
    try:
        print_trades(
            client,
            keys,
            sys.stdout.buffer,
            follow=args.follow,
            group=args.group,
            consumer=consumer,
            should_stop=lambda: stop["now"],
        )
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        client.close()
    return 0


def _up(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shard.up import Cluster

    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    # --cluster starts its own servers: a REDIS_URL left in the environment is not meant for it.
    url = args.redis_url or (None if args.cluster else os.environ.get("REDIS_URL"))
    gateway = args.gateway_port or None
    data = Path(args.data_dir)
    return Cluster(pairs, url, data, args.port, gateway_port=gateway, masters=args.cluster).run()


def _book(args: argparse.Namespace) -> int:
    import asyncio

    from shard.marketdata import run_book

    config = _config(args)
    if args.depth is not None and args.depth < 1:
        raise SystemExit("shard book: --depth must be at least 1")
    try:
        return asyncio.run(
            run_book(config, depth=args.depth, follow=args.follow, as_json=args.json)
        )
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _load(args: argparse.Namespace) -> int:
    from shard.load.main import main as load_main

    return load_main(args)


def _gateway(args: argparse.Namespace) -> int:
    # Until uvicorn takes the signals over, and when it raises them again after its graceful
    # shutdown: a stop is a clean exit 0, as for the daemon.
    _stop_cleanly()
    if args.hash_key:
        from shard.gateway.limits import hash_key

        key = sys.stdin.readline().strip()
        if not key:
            raise SystemExit("shard gateway --hash-key: give the key on standard input")
        print(f'{{sha256 = "{hash_key(key)}", account = "<account>"}}')
        return 0
    from shard.config import ConfigError
    from shard.gateway.config import load_gateway
    from shard.gateway.serve import serve

    try:
        gateway, connection = load_gateway(
            args.config, pairs=args.pairs, host=args.host, port=args.port,
            redis_url=args.redis_url,
        )  # fmt: skip
    except ConfigError as exc:
        raise SystemExit(f"shard gateway: {exc}") from None
    return serve(gateway, connection)


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
        help="also print the events: an input's order events, then its own, after its trades",
    )
    replay.add_argument(
        "--stp-default",
        default="cancel_taker",
        help="self-trade prevention mode of an order that gives none (the daemon's "
        "stp_default); cancel_taker",
    )
    replay.add_argument(
        "--maker-fee-ppm", type=int, default=0, help="maker fee, ppm of the notional; 0"
    )
    replay.add_argument(
        "--taker-fee-ppm", type=int, default=0, help="taker fee, ppm of the notional; 0"
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
        help="stop when a read finds no input for block_ms (tests, batch jobs)",
    )
    run.set_defaults(handler=_run)

    health = commands.add_parser(
        "health",
        help="exit 0 if the pair's shard has a fresh heartbeat (for health checks)",
    )
    _common(health)
    health.set_defaults(handler=_health)

    publish = commands.add_parser(
        "publish",
        help="publish JSON-lines messages (or one message from flags) to orders:{P}",
        description="Each line is sent as the entry's data field; each entry ID is printed.",
    )
    _common(publish)
    publish.add_argument(
        "file",
        nargs="?",
        default="-",
        metavar="FILE",
        help="JSON-lines file; - or nothing for standard input",
    )
    flags = publish.add_argument_group("one message from flags (sent as flat fields)")
    flags.add_argument("--type", choices=["order", "cancel", "amend", "cancel_all"])
    flags.add_argument("--order-id")
    flags.add_argument("--side", choices=["buy", "sell"])
    flags.add_argument("--order-type", choices=["limit", "market", "ioc", "fok", "post_only"])
    flags.add_argument("--price", type=int, help="integer, price x 10^8")
    flags.add_argument("--quantity", type=int)
    flags.add_argument("--timestamp", type=int, help="ms since epoch (default: entry time)")
    flags.add_argument("--account", help="the owner (order, cancel, amend, cancel_all)")
    flags.add_argument(
        "--stp",
        choices=["cancel_taker", "cancel_maker", "cancel_both", "decrement", "none"],
        help="self-trade prevention mode of an order (needs --account)",
    )
    publish.set_defaults(handler=_publish)

    trades = commands.add_parser(
        "trades",
        help="print the pair's trades as JSON lines",
        description="Print trades:{P}. With --group, read as a consumer of that consumer group "
        "and acknowledge each trade printed.",
    )
    _common(trades)
    trades.add_argument("--follow", action="store_true", help="keep printing new trades")
    trades.add_argument("--group", help="consumer group (created if missing)")
    trades.add_argument("--consumer", help="consumer name in the group (default host-pid)")
    trades.set_defaults(handler=_trades)

    book = commands.add_parser(
        "book",
        help="print the pair's order book (L2), spread and ticker",
        description="Sync a local copy of book:{P} and depth:{P} (checking every entry's seq "
        "and checksum) and print the ladder: asks above bids with price, quantity, orders and "
        "cumulative quantity, the spread, and the ticker:{P} fields there are.",
    )
    _common(book)
    book.add_argument(
        "--depth", type=int, help="levels a side (default 10 on the ladder, all with --json)"
    )
    book.add_argument(
        "--follow", action="store_true", help="redraw as the book changes; report resyncs"
    )
    book.add_argument(
        "--json",
        action="store_true",
        help="print the snapshot as JSON, integers as in the contract (a line per change "
        "with --follow)",
    )
    book.set_defaults(handler=_book)

    up = commands.add_parser(
        "up",
        help="local cluster: an embedded Redis-compatible server and one daemon per pair",
    )
    up.add_argument("--pairs", default="BTC-USDT", help="comma-separated pairs")
    up.add_argument(
        "--redis-url",
        help="use this server instead of starting one (env REDIS_URL; a password is safer there)",
    )
    up.add_argument("--data-dir", default=".shard-data", help="server files (append-only file)")
    up.add_argument(
        "--cluster",
        type=int,
        nargs="?",
        const=3,
        default=0,
        metavar="MASTERS",
        help="start a Redis Cluster instead: MASTERS masters (3) with a replica each, on "
        "--port and the ports after it",
    )
    up.add_argument(
        "--port",
        type=int,
        default=REDIS_PORT,
        help="port of the embedded server (default %(default)s, where the other commands look)",
    )
    up.add_argument(
        "--gateway-port",
        type=int,
        default=GATEWAY_PORT,
        help="port of the gateway and its trading page (default %(default)s; 0: none)",
    )
    up.set_defaults(handler=_up)

    gateway = commands.add_parser(
        "gateway",
        help="HTTP and WebSocket gateway in front of the shards, with a trading page",
        description="Serve REST order entry, market data and a WebSocket feed for the pairs "
        "(docs/gateway.md).",
    )
    gateway.add_argument("--pairs", help="comma-separated pairs (env SHARD_GATEWAY_PAIRS)")
    gateway.add_argument("--redis-url", help="redis:// or rediss:// URL (env REDIS_URL)")
    gateway.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    gateway.add_argument("--port", type=int, help=f"port to listen on (default {GATEWAY_PORT})")
    gateway.add_argument(
        "--config", help="TOML file with [gateway] and [shard] tables (env SHARD_CONFIG)"
    )
    gateway.add_argument(
        "--hash-key",
        action="store_true",
        help="read an API key on standard input and print its config line (a SHA-256)",
    )
    gateway.set_defaults(handler=_gateway)

    from shard.load.main import add_arguments

    load = commands.add_parser(
        "load",
        help="open-loop load test: publish at a set rate, report end-to-end latency",
        description="Publish the seeded standard mix to running shards on a schedule (constant, "
        "ramp or spike), time each input to its event, print a live line each second, then a "
        "summary, and write report.json and report.png to --out.",
    )
    add_arguments(load)
    load.set_defaults(handler=_load)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))
