#!/usr/bin/env python3
"""Write a seeded workload as JSON lines (the seed's message format) to stdout or a file.

  scripts/gen_workload.py mix 200000 --seed 1 > mix.jsonl       # the standard mix
  scripts/gen_workload.py resting 1000000 -o resting.jsonl       # non-crossing resting orders

The mixes are described in shard/workload.py.
"""

from __future__ import annotations

import argparse
import sys

import msgspec

from shard.workload import resting_orders, standard_mix


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=["mix", "resting"])
    parser.add_argument("count", type=int)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--levels", type=int, default=1000, help="resting: levels per side")
    parser.add_argument("-o", "--output", help="file to write (default: stdout)")
    args = parser.parse_args()
    if args.kind == "mix":
        messages = standard_mix(args.count, args.seed)
    else:
        messages = resting_orders(args.count, args.seed, levels=args.levels)
    data = msgspec.json.Encoder().encode_lines(list(messages))
    if args.output:
        with open(args.output, "wb") as out:
            out.write(data)
    else:
        sys.stdout.buffer.write(data)


if __name__ == "__main__":
    main()
