"""`shard load` end to end: short runs against a real server and daemon; the report's files
exist and its counts agree with what the streams hold."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from shard.config import Keys
from shard.server import LocalServer

from .helpers import PAIR, start_daemon, stop_daemon


def shard_load(*args: str, timeout: float = 100) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "shard", "load", *args],
        capture_output=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_load_against_a_running_shard(
    server: LocalServer, r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    daemon = start_daemon(server.url)
    try:
        code, out, err = shard_load(
            "--pairs", PAIR, "--redis-url", server.url, "--rate", "400", "--duration", "2",
            "--seed", "4", "--out", str(tmp_path),
        )  # fmt: skip
    finally:
        stop_daemon(daemon)
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    totals = report["totals"]
    assert totals["offered"] == totals["sent"] == totals["completed"] == 800
    assert totals["missing"] == 0
    assert r.xlen(keys.orders) == r.xlen(keys.events) == 800
    assert totals["trades"] == r.xlen(keys.trades) > 0
    market_data = report["market_data"]
    assert market_data["depth_entries"] == r.xlen(keys.depth) > 0
    assert market_data["bytes_per_entry"] > 50
    assert report["latency_us"]["count"] == 800
    assert sum(row["completed"] for row in report["seconds"]) == 800
    assert 0 < report["latency_us"]["p50"] <= report["latency_us"]["p99"]
    assert report["latency_us"]["p99"] <= report["latency_us"]["max"]
    # Timed from the due time, an input can only look slower than timed from its send.
    assert report["latency_from_schedule_us"]["count"] == 800
    assert report["latency_from_schedule_us"]["p50"] >= report["latency_us"]["p50"]
    # The daemon runs here: its memory was sampled through the pid in its heartbeat.
    assert report["shard_rss_mb"]["peak"] > 10
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report.txt").read_text() in out
    assert "[   1s] offered     400/s" in err  # the live line


def test_load_local_with_preload_and_two_pairs(tmp_path: Path) -> None:
    code, out, err = shard_load(
        "--local", "--pairs", "AAA,BBB", "--preload", "2000", "--profile", "spike",
        "--rate", "100", "--spike-rate", "600", "--duration", "3", "--spike-every", "1.5",
        "--spike-seconds", "0.5", "--out", str(tmp_path), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    # Per pair: 2 x (1 s at 100 + 0.5 s at 600) = 800.
    assert report["totals"]["offered"] == report["totals"]["completed"] == 1600
    assert report["preload"]["orders_per_pair"] == 2000
    assert [row["offered_rate"] for row in report["steps"]] == [200, 1200, 200, 1200]
    assert report["shard_rss_mb"]["peak"] > 10
    assert "spike profile, 2 pair(s) (AAA, BBB)" in out


def test_floor_relay_answers_every_input(tmp_path: Path) -> None:
    """--floor runs the relay in place of the shards: every input gets one event, no trade."""
    code, out, err = shard_load(
        "--local", "--floor", "--preload", "500", "--rate", "300", "--duration", "2",
        "--out", str(tmp_path), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["run"]["floor"] is True
    assert report["totals"]["offered"] == report["totals"]["completed"] == 600
    assert report["totals"]["trades"] == 0  # the standard mix trades; the relay never does
    assert report["market_data"]["depth_entries"] == 0
    assert "market data" not in out
    assert report["preload"]["orders_per_pair"] == 500
    assert "FLOOR" in out


def test_floor_needs_local(tmp_path: Path) -> None:
    code, _, err = shard_load("--floor", "--out", str(tmp_path), "--quiet")
    assert code != 0
    assert "--floor needs --local" in err


def test_relay_answers_from_the_newest_input_and_stops_on_sigterm(
    server: LocalServer, r: redis.Redis, keys: Keys
) -> None:
    before = r.xadd(keys.orders, {"x": "old"})  # there before the relay: not answered
    env = {**os.environ, "SHARD_KEY_PREFIX": ""}
    relay = subprocess.Popen(
        [sys.executable, "-m", "shard.load.relay", "--pair", PAIR, "--redis-url", server.url],
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while not r.exists(keys.health):
            assert time.monotonic() < deadline and relay.poll() is None, "no heartbeat"
            time.sleep(0.05)
        ids = [r.xadd(keys.orders, {"n": str(i)}) for i in range(50)]
        while r.xlen(keys.events) < 50:
            assert time.monotonic() < deadline, "events missing"
            time.sleep(0.05)
        events = r.xrange(keys.events)
        assert [e[1][b"input_id"] for e in events] == ids
        assert before not in ids
        assert {e[1][b"status"] for e in events} == {b"relayed"}
    finally:
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(10) == 0
    assert not r.exists(keys.health)
