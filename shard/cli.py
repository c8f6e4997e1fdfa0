"""The ``shard`` command line (``python -m shard``)."""

from __future__ import annotations

import argparse
import contextlib
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))
