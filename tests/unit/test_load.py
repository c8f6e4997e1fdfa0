"""The load generator's own logic: schedules, the latency recorder, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shard.load.latency import Recorder, summary
from shard.load.main import run_tag
from shard.load.report import build, plot, saturation, step_figures, table, write_json
from shard.load.schedule import Schedule, constant, ramp, spike


def test_constant_schedule_spaces_messages_evenly() -> None:
    s = constant(1000, 2)
    assert (s.total, s.duration) == (2000, 2)
    assert s.due_at(0) == 0
    assert s.due_at(1) == pytest.approx(0.001)
    assert s.due_at(1999) == pytest.approx(1.999)
    assert s.due_by(0) == 1  # the first message is due at once
    assert s.due_by(0.0105) == 11
    assert s.due_by(5) == 2000
    assert s.due_by(-1) == 0
    with pytest.raises(IndexError):
        s.due_at(2000)


def test_ramp_is_a_staircase_of_steps() -> None:
    s = ramp(100, 300, 100, 2)
    assert [(seg.start, seg.rate, seg.count) for seg in s.segments] == [
        (0, 100, 200),
        (2, 200, 400),
        (4, 300, 600),
    ]
    assert s.total == 1200
    assert s.rate_at(3) == 200
    assert s.rate_at(6) == 0
    assert s.due_at(200) == pytest.approx(2.0)  # the first message of the second step
    assert s.due_by(2.0) == 201


def test_spike_alternates_base_and_bursts() -> None:
    s = spike(100, 1000, 10, every=5, spike_seconds=1)
    assert [(seg.seconds, seg.rate) for seg in s.segments] == [
        (4, 100),
        (1, 1000),
        (4, 100),
        (1, 1000),
    ]
    assert s.total == 2 * (400 + 1000)
    assert s.rate_at(4.5) == 1000


@pytest.mark.parametrize(
    "make",
    [
        lambda: constant(-1, 1),
        lambda: constant(10, 0),
        lambda: constant(math.inf, 1),
        lambda: ramp(10, 5, 1, 1),
        lambda: ramp(1, 5, 0, 1),
        lambda: spike(1, 2, 10, every=1, spike_seconds=1),
    ],
)
def test_bad_schedules_are_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


@given(
    st.lists(
        st.tuples(
            st.floats(0.01, 5, allow_nan=False),
            st.sampled_from([0.0, 1.0, 7.0, 333.3, 2500.0]),
        ),
        min_size=1,
        max_size=6,
    ),
    st.data(),
)
def test_due_by_and_due_at_agree(parts: list[tuple[float, float]], data: st.DataObject) -> None:
    """Message i is due at due_at(i): due_by counts it from then on, and not a moment before;
    due times never decrease; the count due by the end is the whole schedule."""
    s = Schedule.of("test", parts)
    assert s.due_by(s.duration + 1) == s.total
    if s.total == 0:
        return
    i = data.draw(st.integers(0, s.total - 1))
    t = s.due_at(i)
    assert 0 <= t < s.duration + 1e-9
    assert s.due_by(t + 1e-9) >= i + 1
    assert s.due_by(t - 1e-6) <= i
    if i + 1 < s.total:
        assert s.due_at(i + 1) >= t


def test_recorder_windows_and_total() -> None:
    rec = Recorder()
    for v in range(1, 1001):
        rec.record(0, v)  # 1..1000 µs in the first second
    rec.record(2, 50_000)
    rec.window(1).sent = 5
    assert [w.completed for w in rec.windows] == [1000, 0, 1]
    first = summary(rec.windows[0].hist)
    assert first["count"] == 1000
    assert first["p50"] == pytest.approx(500, rel=0.01)
    assert first["p99"] == pytest.approx(990, rel=0.01)
    assert first["max"] == pytest.approx(1000, rel=0.01)
    assert rec.total(before=1).get_total_count() == 1000
    total = rec.total()
    assert total.get_total_count() == 1001
    assert total.get_max_value() == pytest.approx(50_000, rel=0.001)
    rec.record(3, 0)  # clamped to the lowest trackable value, not lost
    assert rec.total().get_total_count() == 1002


def test_summary_of_an_empty_histogram_is_zeros() -> None:
    out = summary(Recorder().total())
    assert out["count"] == 0 and out["p99"] == 0 and out["max"] == 0


def _run(schedule: Schedule, rec: Recorder, **extra: object) -> SimpleNamespace:
    spec = SimpleNamespace(schedule=schedule, pairs=["P"], seed=3)
    fields = {
        "spec": spec,
        "recorder": rec,
        "completed": sum(w.completed for w in rec.windows),
        "sent": schedule.total,
        "preload": {},
        "trades": 7,
        "elapsed": schedule.duration,
        "server_version": "valkey 9",
        "peak_rss_mb": {"P": 123.4},
        "from_schedule": Recorder(),
        "depth": {"entries": 0, "payload_bytes": 0, "sampled": 0},
    }
    fields.update(extra)
    return SimpleNamespace(**fields)


def test_ramp_saturation_is_the_highest_step_held() -> None:
    s = ramp(100, 400, 100, 2)
    rec = Recorder()
    # Steps of 100 and 200 msgs/s are kept up with; at 300 the shard manages 250; at 400, 390.
    for second, done in enumerate([100, 100, 200, 200, 250, 250, 390, 390]):
        for _ in range(done):
            rec.record(second, 1000 * (second + 1))
    steps = step_figures(s, rec)
    assert [r["completed_rate"] for r in steps] == [100, 200, 250, 390]
    assert [r["holds"] for r in steps] == [True, True, False, True]
    assert saturation(steps) == 200  # a held step above a failed one does not count
    assert steps[1]["latency_us"]["p50"] == pytest.approx(3000, rel=0.01)
    report = build(_run(s, rec), {"command": ["shard", "load"]})
    assert report["saturation_rate"] == 200
    assert report["peak_completed_rate"] == 390
    assert "saturation    200 msgs/s" in table(report)


def test_report_counts_add_up_and_files_are_written(tmp_path: Path) -> None:
    s = constant(10, 3)
    rec = Recorder()
    for second in range(3):
        w = rec.window(second)
        w.offered = w.sent = 10
        w.samples.update(lag=second, in_flight=1, shard_rss_mb=100.0 + second)
        for _ in range(10 if second < 2 else 9):
            rec.record(second, 1500)
    depth = {"entries": 24, "payload_bytes": 2000, "sampled": 10}
    report = build(_run(s, rec, depth=depth), {"command": ["shard", "load"]})
    totals = report["totals"]
    assert (totals["offered"], totals["completed"], totals["missing"]) == (30, 29, 1)
    assert report["market_data"] == {
        "depth_entries": 24,
        "depth_entries_per_second": 8,
        "bytes_per_entry": 200,
    }
    assert sum(row["completed"] for row in report["seconds"]) == totals["completed"]
    assert report["latency_us"]["count"] == 29
    assert report["lag"] == {"max": 2, "end": 2}
    assert report["shard_rss_mb"] == {"max_sampled": 102.0, "peak": 123.4}
    text = table(report)
    assert "29 of 30 completed (1 missing)" in text
    assert "p99 1.50 ms" in text
    assert "market data   24 depth entries (8/s), 200 bytes of fields per entry" in text
    assert "from schedule p50 0.00 ms" in text  # nothing recorded from the schedule here
    path = write_json(report, tmp_path / "report.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    png = plot(report, tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_tags_differ_between_runs() -> None:
    assert run_tag(1_700_000_000.0) != run_tag(1_700_000_000.1)
    assert run_tag(1_700_000_000.0).startswith("L")


def test_messages_are_stamped_before_their_send_can_block() -> None:
    """While a send waits for the server, the readers may already complete its messages: their
    send times must be set by then (an unset one, 0, was read as an hour of latency)."""
    import asyncio

    from shard.load.pair import PairLoad, clock
    from shard.load.runner import LoadRun, LoadSpec

    spec = LoadSpec(pairs=["P"], schedule=constant(20_000, 0.05), url="", progress=None)
    run = LoadRun(spec)
    pair = PairLoad(run, "P", 0)
    unstamped: list[int] = []

    class BlockingConnection:
        async def send_packed_command(self, commands: list[bytes], check_health: bool) -> None:
            start = pair.sent
            unstamped.extend(k for k in range(start, start + len(commands)) if not pair.sent_at[k])
            await asyncio.sleep(0.002)  # the server is not reading

    async def go() -> None:
        run.t0 = clock()
        await pair.send_loop(BlockingConnection())  # type: ignore[arg-type]

    asyncio.run(go())
    assert pair.sent == spec.schedule.total == 1000
    assert unstamped == []


def test_describe_server_names_the_server_and_its_allocator() -> None:
    from shard.load.probes import describe_server

    valkey = {"server_name": "valkey", "valkey_version": "9.1.2", "redis_version": "7.2.4"}
    assert describe_server(valkey, {"mem_allocator": "libc"}) == "valkey 9.1.2, libc malloc"
    redis_70 = {"redis_version": "7.0.15"}  # Redis 7.0 has no server_name
    assert describe_server(redis_70, {"mem_allocator": "jemalloc-5.3.0"}) == (
        "redis 7.0.15, jemalloc-5.3.0 malloc"
    )


def test_main_thread_cpu_adds_user_and_system_time() -> None:
    from shard.load.probes import main_thread_cpu

    info = {"used_cpu_user_main_thread": "1.25", "used_cpu_sys_main_thread": 0.5}
    assert main_thread_cpu(info) == pytest.approx(1.75)


def test_proc_stat_reads_a_live_process_and_none_for_a_missing_one() -> None:
    import os

    from shard.load.probes import ProcStat

    if not Path(f"/proc/{os.getpid()}/status").exists():
        pytest.skip("no /proc here")
    live = ProcStat(os.getpid())
    assert (live.rss_mb() or 0) > 1
    assert live.cpu_pct() is None  # the first call only sets the baseline
    assert (live.cpu_pct() or 0.0) >= 0
    # Every pid is below pid_max: this one cannot exist.
    missing = ProcStat(int(Path("/proc/sys/kernel/pid_max").read_text()))
    assert missing.rss_mb() is None and missing.cpu_pct() is None
