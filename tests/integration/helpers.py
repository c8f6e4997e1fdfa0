"""Plain helpers for the integration tests: publish input, read output, drive a daemon
subprocess. The pytest fixtures (``server``, ``r``, ``keys``) live in conftest.py."""

from __future__ import annotations

import asyncio
import json
import os
import random
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
from shard.l2 import checksum
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
    url: str, *extra: str, env: dict[str, str] | None = None, pair: str = PAIR
) -> subprocess.Popen[bytes]:
    """Start ``python -m shard run`` for ``pair`` (PAIR) on ``url`` (stderr piped, env added to
    ours) and return once it handles SIGTERM itself, so a test may stop it at once."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "shard", "run", "--pair", pair, "--redis-url", url, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    wait_until_it_handles_sigterm(proc)
    return proc


def wait_until_it_handles_sigterm(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Poll the process's caught-signal mask (Linux ``/proc``) until SIGTERM is in it, or the
    process has exited; before that, SIGTERM kills the interpreter as it starts up."""
    deadline = time.monotonic() + timeout
    status = f"/proc/{proc.pid}/status"
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with open(status) as f:
                caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        except (FileNotFoundError, StopIteration):
            return  # no /proc here (or it has gone): nothing to wait for
        if caught >> (signal.SIGTERM - 1) & 1:
            return
        time.sleep(0.005)


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


def assert_exactly_once(client: Any, keys: Keys, entries: list[Any]) -> None:
    """The outputs are those an uninterrupted run makes of ``entries`` (one event each, in
    order), trade IDs 1..N, and market data that follows the book with no seq gap."""
    trades, events = read_outputs(client, keys)
    want_trades, want_events = expected_outputs(entries)
    assert len(events) == len(want_events)
    assert events == want_events
    assert trades == want_trades
    assert [t.trade_id for t in trades] == list(range(1, len(trades) + 1))
    assert_market_data(client, keys, entries)


def kill_at_random_points(
    client: Any,
    keys: Keys,
    url: str,
    total: int,
    *,
    env: dict[str, str],
    rng: random.Random,
    most_ahead: int,
    kills: int,
    pair: str = PAIR,
) -> list[int]:
    """Start the daemon for ``pair`` on ``url`` and SIGKILL it, again and again, until the
    events stream holds ``total`` entries or ``kills`` kills were made; the events stream's
    length after each kill.

    A third of the kills land at a random instant from launch (start-up, recovery); the rest
    once up to ``most_ahead`` more events are committed, then a little later (mid-batch,
    mid-commit, mid-snapshot). Counting output rather than seconds keeps the kills spread
    over the stream however fast the server is."""
    progress: list[int] = []
    while (done := client.xlen(keys.events)) < total and len(progress) < kills:
        proc = start_daemon(url, env=env, pair=pair)
        try:
            if rng.random() < 0.3:
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                wait_events(client, keys, min(done + rng.randint(1, most_ahead), total))
                time.sleep(rng.uniform(0.0, 0.02))
        finally:
            stop_daemon(proc, signal.SIGKILL)
        progress.append(client.xlen(keys.events))
    return progress


def no_input_id(items: list[Any]) -> list[Any]:
    """The trades or events with ``input_id`` cleared, to compare runs whose entry IDs differ."""
    return [msgspec.structs.replace(x, input_id=None) for x in items]


def run_until_idle(url: str, **overrides: Any) -> Any:
    """Run a daemon in process until a read that blocked finds nothing; the Shard."""
    from shard.daemon import Shard

    shard = Shard(config(url, **overrides), exit_when_idle=True)
    asyncio.run(shard.run(install_signals=False))
    return shard


L2 = dict[tuple[str, int], tuple[int, int]]
"""An L2 book: (side, price) -> (quantity, orders)."""


def engine_book(engine: Engine) -> L2:
    """The engine's L2 book."""
    return {
        (side.name, level.price): (level.total, len(level.orders))
        for side in (engine.book.bids, engine.book.asks)
        for level in side
    }


def sides(book: L2) -> tuple[list[tuple[int, int]], ...]:
    """The bids (best first) and asks (best first) of ``book`` as (price, quantity)."""
    bids = sorted(((p, q) for (s, p), (q, _) in book.items() if s == "buy"), reverse=True)
    asks = sorted((p, q) for (s, p), (q, _) in book.items() if s == "sell")
    return bids, asks


def follow(
    r: redis.Redis, keys: Keys, entries: list[tuple[str, dict[bytes, bytes]]] | None = None
) -> L2:
    """Apply every depth:{P} entry to an empty book as the contract says, asserting that seq
    goes 1, 2, 3 … with no gap or repeat, and that after each entry the book equals the
    engine's after its ``input_id`` (run on ``entries``, else on the input stream), with the
    entry's checksum and best levels; the final book."""
    book: L2 = {}
    if entries is None:
        entries = [(i.decode(), f) for i, f in r.xrange(keys.orders)]
    engine, limit, inputs = Engine(), Config(pair=PAIR).max_entry_bytes, iter(entries)
    depth = r.xrange(keys.depth)
    assert depth, "the stream made no depth entry"
    for seq, (_, raw) in enumerate(depth, 1):
        f = {k.decode(): v.decode() for k, v in raw.items()}
        assert int(f["seq"]) == seq, "seq is contiguous from 1"
        for side, text in (("buy", f["bids"]), ("sell", f["asks"])):
            for level in filter(None, text.split(",")):
                price, qty, orders = map(int, level.split(":"))
                if qty:
                    book[(side, price)] = (qty, orders)
                else:
                    del book[(side, price)]
        for entry_id, fields in inputs:  # the engine, up to this entry's input
            pairs = [x for kv in fields.items() for x in kv]
            apply_entries(engine, [(entry_id, pairs)], limit, [], [])
            if entry_id == f["input_id"]:
                break
        assert book == engine_book(engine), f"the book after {f['input_id']}"
        bids, asks = sides(book)
        assert int(f["checksum"]) == checksum(bids, asks)
        assert f["best_bid"] == (f"{bids[0][0]}:{bids[0][1]}" if bids else "")
        assert f["best_ask"] == (f"{asks[0][0]}:{asks[0][1]}" if asks else "")
    return book


def stored_book(r: redis.Redis, keys: Keys) -> dict[str, str]:
    """``book:{P}`` as text."""
    return {k.decode(): v.decode() for k, v in r.hgetall(keys.book).items()}


def as_fields(book: L2) -> dict[str, str]:
    """An L2 book as ``book:{P}``'s level fields."""
    return {f"{'b' if s == 'buy' else 'a'}:{p}": f"{q}:{n}" for (s, p), (q, n) in book.items()}


def assert_market_data(
    r: redis.Redis, keys: Keys, entries: list[tuple[str, dict[bytes, bytes]]] | None = None
) -> None:
    """The market data is exactly once: ``depth:{P}`` followed from seq 1 holds the engine's
    book after every entry (:func:`follow`), and ``book:{P}`` holds the final book with the
    last entry's ``seq``, which is the checkpoint's."""
    book = follow(r, keys, entries)
    stored = stored_book(r, keys)
    assert {k: v for k, v in stored.items() if k[1] == ":"} == as_fields(book)
    ((last_id, last),) = r.xrevrange(keys.depth, count=1)
    assert stored["seq"] == last[b"seq"].decode() == r.hget(keys.checkpoint, "seq").decode()
    assert stored["depth_id"] == last_id.decode()
