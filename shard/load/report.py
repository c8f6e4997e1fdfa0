"""The run's report: a dict of every figure, a terminal table, a JSON file and a PNG plot.

Step figures (ramp and spike profiles) cover the whole seconds inside each segment. A step
*holds* when the shard completed at least 95% of what was offered in it; the saturation rate is
the highest offered rate of a step that held, with every step below it holding too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from shard.load.latency import PERCENTILES, Recorder, new_histogram, summary
from shard.load.schedule import Schedule

HOLDS = 0.95


def step_figures(schedule: Schedule, recorder: Recorder, pairs: int = 1) -> list[dict[str, Any]]:
    """Offered and completed rate and latency for each segment of the schedule."""
    rows = []
    for seg in schedule.segments:
        first, last = math.ceil(seg.start - 1e-9), math.floor(seg.start + seg.seconds + 1e-9)
        windows = [w for w in recorder.windows[first:last]]
        hist = new_histogram()
        completed = 0
        for w in windows:
            hist.add(w.hist)
            completed += w.completed
        seconds = max(1, last - first)
        offered = seg.rate * pairs
        done = completed / seconds
        rows.append({
            "start_s": round(seg.start, 3),
            "seconds": round(seg.seconds, 3),
            "offered_rate": round(offered),
            "completed_rate": round(done),
            "holds": bool(windows) and done >= HOLDS * offered,
            "latency_us": summary(hist),
        })  # fmt: skip
    return rows


def saturation(steps: list[dict[str, Any]]) -> int | None:
    """The highest offered rate of a held step with every lower step held (None if none held)."""
    best = None
    for row in sorted(steps, key=lambda r: r["offered_rate"]):
        if not row["holds"]:
            break
        best = row["offered_rate"]
    return best


def build(run: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Every figure of a finished :class:`~shard.load.runner.LoadRun` as JSON-ready data."""
    spec, rec = run.spec, run.recorder
    total_offered = spec.schedule.total * len(spec.pairs)
    completed = run.completed
    seconds = []
    for w in rec.windows:
        row: dict[str, Any] = {
            "t": w.second,
            "offered": w.offered,
            "sent": w.sent,
            "completed": w.completed,
        }
        row["latency_us"] = summary(w.hist)
        row.update(w.samples)
        seconds.append(row)
    lags = [w.samples["lag"] for w in rec.windows if "lag" in w.samples]
    rss = [w.samples["shard_rss_mb"] for w in rec.windows if "shard_rss_mb" in w.samples]
    cpu = [w.samples["shard_cpu_pct"] for w in rec.windows if "shard_cpu_pct" in w.samples]
    server_cpu = [w.samples["server_cpu_pct"] for w in rec.windows if "server_cpu_pct" in w.samples]
    gen_cpu = [w.samples["loadgen_cpu_pct"] for w in rec.windows if "loadgen_cpu_pct" in w.samples]
    behind = [w.samples.get("send_behind_ms", 0.0) for w in rec.windows]
    report: dict[str, Any] = {
        "run": {
            **meta,
            "profile": spec.schedule.name,
            "pairs": spec.pairs,
            "seed": spec.seed,
            "server": run.server_version,
            "schedule_seconds": spec.schedule.duration,
        },
        "preload": run.preload,
        "totals": {
            "offered": total_offered,
            "sent": run.sent,
            "completed": completed,
            "missing": total_offered - completed,
            "trades": run.trades,
            "seconds": round(run.elapsed, 3),
            "completed_rate": round(completed / spec.schedule.duration),
        },
        "market_data": {
            "depth_entries": run.depth["entries"],
            "depth_entries_per_second": round(run.depth["entries"] / spec.schedule.duration),
            "bytes_per_entry": (
                round(run.depth["payload_bytes"] / run.depth["sampled"])
                if run.depth["sampled"]
                else None
            ),
        },
        "outages": {
            **(run.outages() if hasattr(run, "outages") else {}),
            "skipped_samples": getattr(run, "skipped_samples", 0),
        },
        "latency_us": summary(rec.total()),
        "latency_from_schedule_us": summary(run.from_schedule.total()),
        "lag": {"max": max(lags, default=0), "end": lags[-1] if lags else 0},
        "send_behind_ms_max": max(behind, default=0.0),
        "cpu_pct_mean": {
            "shard": _mean(cpu),
            "server": _mean(server_cpu),
            "loadgen": _mean(gen_cpu),
        },
        "shard_snapshots": sum(w.samples.get("shard_snapshots", 0) for w in rec.windows),
        "server_forks": sum(w.samples.get("server_forks", 0) for w in rec.windows),
        "shard_rss_mb": {
            "max_sampled": max(rss, default=None),
            "peak": sum(run.peak_rss_mb.values()) if run.peak_rss_mb else None,
        },
        "seconds": seconds,
    }
    if spec.schedule.name != "constant":
        steps = step_figures(spec.schedule, rec, len(spec.pairs))
        report["steps"] = steps
        report["peak_completed_rate"] = max((w.completed for w in rec.windows), default=0)
        if spec.schedule.name == "ramp":
            report["saturation_rate"] = saturation(steps)
    return report


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def table(report: dict[str, Any]) -> str:
    """The summary as aligned text for the terminal."""
    run, totals, lat = report["run"], report["totals"], report["latency_us"]
    sched = report["latency_from_schedule_us"]
    lines = [
        f"shard load: {run['profile']} profile, {len(run['pairs'])} pair(s) "
        f"({', '.join(run['pairs'])}), seed {run['seed']}, server {run['server']}",
    ]
    if run.get("floor"):
        lines.append(
            "  FLOOR         the harness alone: shard.load.relay answered each input in place "
            "of the shards (its figures are in the shard rows)"
        )
    if report["preload"]:
        pre = report["preload"]
        lines.append(
            f"  preload       {pre['orders_per_pair']:,} resting orders per pair in "
            f"{pre['seconds']} s ({pre['rate']:,} msgs/s)"
        )
    lines += [
        f"  inputs        {totals['completed']:,} of {totals['offered']:,} completed "
        f"({totals['missing']:,} missing), {totals['trades']:,} trades",
        f"  throughput    {totals['completed_rate']:,} msgs/s over "
        f"{run['schedule_seconds']:g} s of schedule",
        "  latency       "
        + "  ".join(f"p{p:g} {_ms(lat[f'p{p:g}'])}" for p in PERCENTILES)
        + f"  max {_ms(lat['max'])}  ({lat['count']:,} inputs, publish -> event read)",
        "  from schedule "
        + "  ".join(f"p{p:g} {_ms(sched[f'p{p:g}'])}" for p in PERCENTILES)
        + f"  max {_ms(sched['max'])}  (due time -> event read)",
        f"  lag           max {report['lag']['max']:,}, at the end {report['lag']['end']:,} "
        f"entries; the sender ran at most {report['send_behind_ms_max']:.1f} ms behind schedule",
    ]
    out = report.get("outages") or {}
    if out.get("reconnects"):
        lines.append(
            f"  failovers     {out['owner_changes']} owner change(s) followed, "
            f"{out['reconnects']} reconnect(s); in doubt {out['in_doubt_landed']:,} found "
            f"in the stream, {out['in_doubt_resent']:,} sent again"
        )
    rss = report["shard_rss_mb"]
    if rss["peak"] is not None or rss["max_sampled"] is not None:
        lines.append(
            f"  shard memory  peak RSS {rss['peak'] or rss['max_sampled']:.0f} MB "
            "(all pairs' daemons)"
        )
    lines.append(
        f"  stalls        {report['shard_snapshots']} snapshot(s) stored by the shard(s), "
        f"{report['server_forks']} server fork(s) (AOF rewrite) during the run"
    )
    md = report["market_data"]
    if md["depth_entries"]:
        lines.append(
            f"  market data   {md['depth_entries']:,} depth entries "
            f"({md['depth_entries_per_second']:,}/s), {md['bytes_per_entry']:,} bytes of fields "
            "per entry (the last 1,000)"
        )
    cpu = report["cpu_pct_mean"]
    parts = [f"{k} {v:.0f}%" for k, v in cpu.items() if v is not None]
    if parts:
        lines.append("  cpu (mean)    " + ", ".join(parts) + " of one core")
    if "steps" in report:
        lines.append("  steps         offered -> completed msgs/s, p99, holds")
        for row in report["steps"]:
            lines.append(
                f"    {row['start_s']:>7g} s  {row['offered_rate']:>8,} -> "
                f"{row['completed_rate']:>8,}  p99 {_ms(row['latency_us']['p99'])}"
                f"  {'yes' if row['holds'] else 'no'}"
            )
        lines.append(f"  peak          {report['peak_completed_rate']:,} msgs/s in one second")
    if "saturation_rate" in report:
        sat = report["saturation_rate"]
        lines.append(
            "  saturation    " + (f"{sat:,} msgs/s (highest step held)" if sat else "no step held")
        )
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path


def plot(report: dict[str, Any], path: Path) -> Path:
    """Latency percentiles, throughput and backlog over time as a PNG. Needs matplotlib
    (``pip install 'shard[load]'``); raises ImportError without it."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["seconds"]
    t = [r["t"] + 1 for r in rows]
    fig, (ax_lat, ax_rate, ax_lag) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    run = report["run"]
    fig.suptitle(
        f"shard load: {run['profile']}, {', '.join(run['pairs'])}, "
        f"{report['totals']['completed']:,} inputs, server {run['server']}"
        + (" (harness floor: no shard)" if run.get("floor") else "")
    )
    for key, style in (("p50", "-"), ("p90", "-"), ("p99", "-"), ("p99.9", "-"), ("max", ":")):
        ys = [max(r["latency_us"][key], 1) / 1000 for r in rows]
        ax_lat.plot(t, ys, style, label=key)
    ax_lat.set_yscale("log")
    ax_lat.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax_lat.set_ylabel("latency, ms (log)")
    ax_lat.legend(loc="upper left", ncol=5, fontsize="small")
    ax_lat.grid(True, which="both", alpha=0.3)

    ax_rate.plot(t, [r["offered"] for r in rows], label="offered")
    ax_rate.plot(t, [r["completed"] for r in rows], label="completed")
    ax_rate.set_ylabel("msgs/s")
    ax_rate.legend(loc="upper left", fontsize="small")
    ax_rate.grid(True, alpha=0.3)

    ax_lag.plot(t, [r.get("in_flight", 0) for r in rows], label="in flight (sent, no event)")
    ax_lag.plot(t, [r.get("lag", 0) for r in rows], label="consumer-group lag")
    ax_lag.set_ylabel("entries")
    ax_lag.set_xlabel("seconds since the timed phase started")
    ax_lag.grid(True, alpha=0.3)
    if any("shard_rss_mb" in r for r in rows):
        ax_rss = ax_lag.twinx()
        ax_rss.plot(
            t, [r.get("shard_rss_mb", math.nan) for r in rows], "k--", label="shard RSS (MB)"
        )
        ax_rss.set_ylabel("shard RSS, MB")
        ax_rss.set_ylim(bottom=0)
        ax_rss.legend(loc="upper right", fontsize="small")
    ax_lag.legend(loc="upper left", fontsize="small")
    # Mark the seconds in which a shard stored a snapshot or the server forked.
    for r in rows:
        for key, colour in (("shard_snapshots", "tab:purple"), ("server_forks", "tab:red")):
            if r.get(key):
                for ax in (ax_lat, ax_rate, ax_lag):
                    ax.axvline(r["t"] + 1, color=colour, alpha=0.25, linewidth=3)
    ax_lat.set_title(
        "shaded: purple = a shard stored a snapshot, red = the server forked (AOF rewrite)",
        fontsize="small",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
