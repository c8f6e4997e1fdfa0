"""``shard load``: arguments, the optional local cluster, and the report files.

The problem statement's scenario (1M resting orders, then 10k msgs/s for 60 s) is::

    shard load --local --preload 1000000 --rate 10000 --duration 60 --out reports/scenario

and the saturation point::

    shard load --local --profile ramp --ramp-from 10000 --ramp-to 100000 --ramp-step 10000 \\
        --step-seconds 4 --out reports/ramp
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# The import names of what the load extra (`pip install 'shard[load]'`) brings and the harness
# cannot run without; matplotlib is optional (no PNG without it).
EXTRA_MODULES = frozenset({"hdrh"})
NEEDS_EXTRA = (
    "shard load: the load generator's packages are not installed; "
    "install them with pip install 'shard[load]'"
)

# Order-ID prefixes of successive runs differ, so a rerun against the same live book does not
# collide with the orders a previous run left resting.
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pairs", help="comma-separated pairs (default: --pair, SHARD_PAIR or BTC-USDT)"
    )
    p.add_argument("--pair", help=argparse.SUPPRESS)
    p.add_argument("--redis-url", help="server the shards run on (env REDIS_URL)")
    p.add_argument("--config", help="TOML file with a [shard] table (env SHARD_CONFIG)")
    p.add_argument(
        "--local",
        action="store_true",
        help="start an embedded server (append-only, everysec) and one `shard run` per pair in "
        "a temporary directory, and sample the daemons' RSS and CPU",
    )
    p.add_argument(
        "--server-config",
        action="append",
        default=[],
        metavar="'NAME VALUE'",
        help="with --local: a server setting, e.g. 'appendfsync always' (repeatable)",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="with --local: run the harness floor (shard.load.relay: one event per input, "
        "nothing else) in place of the shards, to see what the harness costs on its own",
    )
    prof = p.add_argument_group("schedule (rates are per pair)")
    prof.add_argument(
        "--profile", choices=["constant", "ramp", "spike"], default="constant", help="%(default)s"
    )
    prof.add_argument(
        "--rate", type=float, default=10_000, help="msgs/s (constant; spike base); %(default)g"
    )
    prof.add_argument(
        "--duration", type=float, default=60, help="seconds (constant, spike); %(default)g"
    )
    prof.add_argument(
        "--ramp-from", type=float, default=10_000, help="first step, msgs/s; %(default)g"
    )
    prof.add_argument(
        "--ramp-to", type=float, default=100_000, help="last step, msgs/s; %(default)g"
    )
    prof.add_argument(
        "--ramp-step", type=float, default=10_000, help="increment, msgs/s; %(default)g"
    )
    prof.add_argument(
        "--step-seconds", type=float, default=4, help="seconds of each ramp step; %(default)g"
    )
    prof.add_argument(
        "--spike-rate", type=float, default=50_000, help="msgs/s during a spike; %(default)g"
    )
    prof.add_argument(
        "--spike-every", type=float, default=10, help="seconds between spikes; %(default)g"
    )
    prof.add_argument(
        "--spike-seconds", type=float, default=1, help="seconds of a spike; %(default)g"
    )
    work = p.add_argument_group("workload")
    work.add_argument("--seed", type=int, default=1, help="seed of the standard mix; %(default)s")
    work.add_argument(
        "--preload",
        type=int,
        default=0,
        help="resting orders per pair published before the timed phase; %(default)s",
    )
    work.add_argument(
        "--preload-levels", type=int, default=1000, help="price levels a side; %(default)s"
    )
    work.add_argument("--id-prefix", help="order-ID prefix (default: a new one per run)")
    out = p.add_argument_group("report")
    out.add_argument(
        "--out", default="load-report", help="directory for report.json/.png/.txt; %(default)s"
    )
    out.add_argument(
        "--drain", type=float, default=30, help="seconds to wait for the last events; %(default)g"
    )
    out.add_argument("--quiet", action="store_true", help="no live progress line")


def schedule_of(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from shard.load.schedule import constant, ramp, spike

    try:
        if args.profile == "ramp":
            return ramp(args.ramp_from, args.ramp_to, args.ramp_step, args.step_seconds)
        if args.profile == "spike":
            return spike(
                args.rate, args.spike_rate, args.duration, args.spike_every, args.spike_seconds
            )
        return constant(args.rate, args.duration)
    except ValueError as exc:
        raise SystemExit(f"shard load: {exc}") from None


def run_tag(now: float | None = None) -> str:
    """A short tag that differs from run to run (base 36 of the time in tenths of a second)."""
    n = int((time.time() if now is None else now) * 10)
    digits = ""
    while n:
        n, d = divmod(n, 36)
        digits = _B36[d] + digits
    return "L" + digits[-6:]


def main(args: argparse.Namespace) -> int:
    """Run ``shard load``; 0, or 1 if an input got no event, or 2 without the load extra."""
    try:
        from shard.load.report import build, plot, table, write_json
        from shard.load.runner import LoadSpec, run_load
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in EXTRA_MODULES:
            raise
        print(NEEDS_EXTRA, file=sys.stderr)
        return 2
    from shard.config import TLS_FILES, ConfigError, load
    from shard.up import Cluster

    pairs = [x.strip() for x in (args.pairs or args.pair or "").split(",") if x.strip()]
    try:
        # The pair only matters for validation here; the URL and key prefix are shared.
        config = load(
            args.config,
            pair=pairs[0] if pairs else os.environ.get("SHARD_PAIR") or "BTC-USDT",
            redis_url=args.redis_url,
        )
        for pair in pairs:
            load(args.config, pair=pair, redis_url=args.redis_url)
    except ConfigError as exc:
        raise SystemExit(f"shard load: {exc}") from None
    pairs = pairs or [config.pair]
    schedule = schedule_of(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = LoadSpec(
        pairs=pairs,
        schedule=schedule,
        url=config.redis_url,
        tls=config.tls_options(),
        seed=args.seed,
        preload=args.preload,
        preload_levels=args.preload_levels,
        id_prefix=(args.id_prefix if args.id_prefix is not None else run_tag()) + "-",
        key_prefix=config.key_prefix,
        drain_seconds=args.drain,
        progress=None if args.quiet else sys.stderr,
    )
    meta = {
        "command": ["shard", *sys.argv[2:]] if sys.argv[1:2] == ["load"] else sys.argv,
        "local": args.local,
        "cores": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "preload_orders": args.preload,
        "server_config": args.server_config,
        "floor": args.floor,
    }
    if args.floor and not args.local:
        raise SystemExit("shard load: --floor needs --local (it replaces the shards it starts)")
    if args.local:
        with tempfile.TemporaryDirectory(prefix="shard-load-") as tmp:
            env = {
                "SHARD_LOG_LEVEL": os.environ.get("SHARD_LOG_LEVEL", "WARNING"),
                # The local server is plain redis://: TLS keys in the environment would be
                # refused by each daemon.
                **{f"SHARD_{name.upper()}": "" for name in TLS_FILES},
                "SHARD_TLS_CHECK_HOSTNAME": "true",
            }
            server_args: list[str] = []
            for setting in args.server_config:  # 'NAME VALUE' -> --NAME VALUE
                name, _, value = setting.strip().partition(" ")
                server_args += (f"--{name}", value.strip())
            with Cluster(
                pairs, None, Path(tmp), None, env=env, server_args=server_args, floor=args.floor
            ) as cluster:
                assert cluster.server is not None
                spec.url, spec.tls = cluster.server.url, {}  # a plain local server
                spec.shard_pids = {p: c.pid for p, c in cluster.children.items()}
                result = run_load(spec)
    else:
        spec.find_local_shards = True
        result = run_load(spec)
    report = build(result, meta)
    text = table(report)
    print(text)
    (out / "report.txt").write_text(text + "\n")
    written = [write_json(report, out / "report.json"), out / "report.txt"]
    try:
        written.append(plot(report, out / "report.png"))
    except ImportError:
        print(
            "shard load: no PNG (matplotlib is not installed: pip install 'shard[load]')",
            file=sys.stderr,
        )
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0 if report["totals"]["missing"] == 0 else 1
