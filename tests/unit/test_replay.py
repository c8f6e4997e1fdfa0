"""`shard replay`: the command line, streaming, bad lines, determinism."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import msgspec

from shard.replay import replay
from shard.workload import standard_mix

from ..seed import SEED_LINES, SEED_TRADE


def shard(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "shard", *args],
        input=stdin,
        capture_output=True,
        check=True,
        timeout=60,
    )


def test_seed_example_through_the_cli() -> None:
    out = shard("replay", stdin=b"\n".join(SEED_LINES) + b"\n").stdout
    assert [json.loads(x) for x in out.splitlines()] == [SEED_TRADE]


def test_events_follow_their_trades(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([*SEED_LINES, b"", b"garbage", b"  "]))
    lines = [json.loads(x) for x in shard("replay", str(path), "--events").stdout.splitlines()]
    assert [x.get("status", "trade") for x in lines] == [
        "resting",
        "trade",
        "filled",
        "cancelled",
        "rejected",
    ]
    assert lines[-1]["reason"] == "malformed" and "garbage" in lines[-1]["detail"]


def test_same_input_same_bytes() -> None:
    data = b"".join(msgspec.json.encode(m) + b"\n" for m in standard_mix(5000, 11))
    first = shard("replay", "--events", stdin=data).stdout
    assert first == shard("replay", "--events", stdin=data).stdout
    assert first.count(b"\n") > 5000


def test_chunking_does_not_change_output() -> None:
    lines = [msgspec.json.encode(m) for m in standard_mix(3000, 5)]
    outputs = set()
    for chunk in (1, 7, 4096):
        out = io.BytesIO()
        replay(lines, out, events=True, chunk_lines=chunk)
        outputs.add(out.getvalue())
    assert len(outputs) == 1


def test_output_is_written_while_input_streams() -> None:
    """Memory follows the book: output leaves in chunks, before the input ends."""
    writes: list[int] = []

    class Sink(io.RawIOBase):
        def write(self, b) -> int:  # type: ignore[override]
            writes.append(len(b))
            return len(b)

    def lines():
        for m in standard_mix(20_000, 2):
            yield msgspec.json.encode(m)

    replay(lines(), Sink(), events=True, chunk_lines=1000)  # type: ignore[arg-type]
    assert len(writes) >= 20


def test_broken_pipe_is_quiet() -> None:
    data = b"".join(msgspec.json.encode(m) + b"\n" for m in standard_mix(50_000, 1))
    proc = subprocess.run(
        f"{sys.executable} -m shard replay --events | head -n 1",
        shell=True,
        input=data,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.count(b"\n") == 1
    assert b"Traceback" not in proc.stderr


def test_replay_loads_no_client_or_event_loop() -> None:
    """`shard replay` is the engine and a file: the Redis client and asyncio are a third of
    its start time and its empty RSS, so it must not import them (the parser it shares with
    the daemon's commands once did)."""
    probe = (
        "import sys, os; from shard.cli import main; main(['replay', os.devnull]); "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, check=True, timeout=60
    ).stdout.split()
    assert not {b"redis", b"asyncio", b"uvloop", b"ssl", b"subprocess"} & set(loaded)
