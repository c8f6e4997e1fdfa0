"""Plain helpers for the integration tests: publish input, read output, drive a daemon
subprocess. The pytest fixtures (``server``, ``r``, ``keys``) live in conftest.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import msgspec
import redis

from shard.batch import apply_entries
from shard.config import Config, Keys
from shard.engine import Engine
from shard.messages import Event, Trade
from shard.wire import event_from_fields, trade_from_fields

PAIR = "BTC-USDT"


def config(url: str, **overrides: Any) -> Config:
    """A Config for PAIR on ``url`` with a short (100 ms) block, plus ``overrides``."""
    return Config(pair=PAIR, redis_url=url, block_ms=100, **overrides)


def flat(msg: dict[str, Any]) -> dict[str, str]:
    """A message as flat stream fields: every value as its ``str()``."""
    return {k: str(v) for k, v in msg.items()}


def publish(
    client: redis.Redis,
    messages: list[dict[str, Any]],
    key: str = f"orders:{{{PAIR}}}",
    as_data: bool = False,
) -> list[str]:
    """XADD messages (flat fields, or one JSON data field); their entry IDs."""
    ids: list[str] = []
    pipe = client.pipeline(transaction=False)
    for i, msg in enumerate(messages):
        pipe.xadd(key, {"data": json.dumps(msg)} if as_data else flat(msg))
        if i % 1000 == 999:
            ids += [x.decode() for x in pipe.execute()]
    ids += [x.decode() for x in pipe.execute()]
    return ids


def read_outputs(client: redis.Redis, keys: Keys) -> tuple[list[Trade], list[Event]]:
    """Every trade and event published so far, decoded, in stream order."""
    trades = [trade_from_fields(f) for _, f in client.xrange(keys.trades)]
    events = [event_from_fields(f) for _, f in client.xrange(keys.events)]
    return trades, events


def expected_outputs(
    entries: list[tuple[str, dict[bytes, bytes]]],
    max_entry_bytes: int | None = None,
) -> tuple[list[Trade], list[Event]]:
    """The trades and events an uninterrupted run publishes for these input entries: applied in
    order to one fresh Engine by the daemon's own decode-and-apply path
    (:func:`shard.batch.apply_entries`), in process, with no Redis."""
    trades: list[Trade] = []
    events: list[Event] = []
    pairs = [(entry_id, [x for kv in fields.items() for x in kv]) for entry_id, fields in entries]
    limit = max_entry_bytes or Config(pair=PAIR).max_entry_bytes  # the daemon's default
    apply_entries(Engine(), pairs, limit, trades, events)
    return trades, events


def encoded(fields: dict[str, str]) -> dict[bytes, bytes]:
    """Flat fields as bytes, the way a stream read returns them."""
    return {k.encode(): v.encode() for k, v in fields.items()}


def start_daemon(
    url: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m shard run`` for PAIR on ``url`` (stderr piped, env added to ours)."""
    return subprocess.Popen(
        [sys.executable, "-m", "shard", "run", "--pair", PAIR, "--redis-url", url, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def wait_events(client: redis.Redis, keys: Keys, n: int, timeout: float = 60) -> None:
    """Poll until the events stream holds ``n`` entries; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while client.xlen(keys.events) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{client.xlen(keys.events)} of {n} events after {timeout} s")
        time.sleep(0.02)


def finish_daemon(proc: subprocess.Popen[bytes], timeout: float = 60) -> tuple[int, str]:
    """Wait for a daemon to exit (killing it after ``timeout``); its exit code and log."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise
    return proc.returncode, err.decode()


def stop_daemon(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30
) -> tuple[int, str]:
    """Send ``sig`` (SIGTERM) and wait for the exit, as finish_daemon; exit code and log."""
    proc.send_signal(sig)
    return finish_daemon(proc, timeout)


def no_input_id(items: list[Any]) -> list[Any]:
    """The trades or events with ``input_id`` cleared, to compare runs whose entry IDs differ."""
    return [msgspec.structs.replace(x, input_id=None) for x in items]


def run_until_idle(url: str, **overrides: Any) -> Any:
    """Run a daemon in process until a read that blocked finds nothing; the Shard."""
    from shard.daemon import Shard

    shard = Shard(config(url, **overrides), exit_when_idle=True)
    asyncio.run(shard.run(install_signals=False))
    return shard
