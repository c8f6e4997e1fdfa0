"""BookView and `shard book` against a real server, on book:{P} and depth:{P} written by hand as
the contract says (the daemon's own writing is tested with the daemon)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis

from shard.l2 import checksum
from shard.marketdata import BookView, Level, Update, connect
from shard.server import LocalServer, free_port

from .helpers import PAIR, config

BOOK = f"book:{{{PAIR}}}"
DEPTH = f"depth:{{{PAIR}}}"
TICKER = f"ticker:{{{PAIR}}}"


class Publisher:
    """Writes what the daemon's commit writes for a batch, in one MULTI: the depth entry (its
    ID explicit, as the daemon's are input IDs), the book hash's changed fields, seq, depth_id
    and input_id. ``bids``/``asks`` are the true book: price -> (quantity, orders)."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.seq = 0
        self.bids: dict[int, tuple[int, int]] = {}
        self.asks: dict[int, tuple[int, int]] = {}
        r.hset(BOOK, mapping={"seq": 0, "depth_id": "0-0", "input_id": "0-0"})

    def batch(
        self,
        bids: dict[int, tuple[int, int]] | None = None,
        asks: dict[int, tuple[int, int]] | None = None,
    ) -> str:
        """One batch changing these levels ((0, 0): gone); its entry ID."""
        bids, asks = bids or {}, asks or {}
        self.seq += 1
        entry_id = f"{1000 + self.seq}-0"
        pipe = self.r.pipeline(transaction=True)
        for prefix, side, changes in (("b", self.bids, bids), ("a", self.asks, asks)):
            for price, (qty, orders) in changes.items():
                if qty:
                    side[price] = (qty, orders)
                    pipe.hset(BOOK, f"{prefix}:{price}", f"{qty}:{orders}")
                else:
                    side.pop(price, None)
                    pipe.hdel(BOOK, f"{prefix}:{price}")
        top_b, top_a = self.expected()
        pipe.xadd(
            DEPTH,
            {
                "seq": self.seq,
                "input_id": entry_id,
                "bids": ",".join(
                    f"{p}:{q}:{o}" for p, (q, o) in sorted(bids.items(), reverse=True)
                ),
                "asks": ",".join(f"{p}:{q}:{o}" for p, (q, o) in sorted(asks.items())),
                "best_bid": f"{top_b[0].price}:{top_b[0].quantity}" if top_b else "",
                "best_ask": f"{top_a[0].price}:{top_a[0].quantity}" if top_a else "",
                "checksum": checksum(top_b, top_a),
            },
            id=entry_id,
        )
        pipe.hset(BOOK, mapping={"seq": self.seq, "depth_id": entry_id, "input_id": entry_id})
        pipe.execute()
        return entry_id

    def expected(self) -> tuple[list[Level], list[Level]]:
        """The true book, best first."""
        return (
            [Level(p, q, o) for p, (q, o) in sorted(self.bids.items(), reverse=True)],
            [Level(p, q, o) for p, (q, o) in sorted(self.asks.items())],
        )


def in_sync(view: BookView, pub: Publisher) -> bool:
    return view.synced and view.seq == pub.seq and (view.bids(), view.asks()) == pub.expected()


async def until(
    updates: AsyncIterator[Update], done: Callable[[], bool], timeout: float = 20
) -> list[Update]:
    """Take updates until ``done()``; the updates taken."""
    taken: list[Update] = []
    async with asyncio.timeout(timeout):
        while not done():
            taken.append(await anext(updates))
    return taken


async def wait_for(done: Callable[[], bool], timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.01)


@pytest.fixture
async def view(server: LocalServer) -> AsyncIterator[BookView]:
    client = connect(config(server.url))
    yield BookView(client, PAIR, block_ms=100)
    await client.aclose()


def some_levels(pub: Publisher, n: int) -> None:
    for i in range(n):
        pub.batch(bids={100 - i: (5 + i, 1)}, asks={110 + i: (3 + i, 2)})


async def test_view_syncs_and_follows(r: redis.Redis, view: BookView) -> None:
    pub = Publisher(r)
    some_levels(pub, 3)
    updates = view.updates()
    first = await anext(updates)
    assert (first.seq, first.entry, first.resync) == (3, None, None)
    assert in_sync(view, pub)
    pub.batch(bids={100: (0, 0), 99: (1, 1)})  # the best bid goes, another changes
    pub.batch(asks={105: (4, 1)})
    pub.batch(bids={101: (2, 1)}, asks={110: (0, 0)})
    taken = await until(updates, lambda: view.seq == 6)
    assert [u.seq for u in taken] == [4, 5, 6]
    assert all(u.entry is not None and u.resync is None for u in taken)
    assert in_sync(view, pub)
    assert view.best_bid == Level(101, 2, 1)
    assert view.best_ask == Level(105, 4, 1)
    assert view.input_id == "1006-0"
    assert view.resyncs == {}


async def test_view_starts_on_a_pair_with_no_market_data_yet(
    r: redis.Redis, view: BookView
) -> None:
    updates = view.updates()
    first = await anext(updates)
    assert (first.seq, view.bids(), view.asks(), view.best_bid) == (0, [], [], None)
    pub = Publisher(r)
    some_levels(pub, 2)
    await until(updates, lambda: view.seq == 2)
    assert in_sync(view, pub)


async def test_view_resyncs_after_its_stream_is_trimmed_under_it(
    r: redis.Redis, view: BookView
) -> None:
    pub = Publisher(r)
    some_levels(pub, 3)
    updates = view.updates()
    await anext(updates)
    some_levels(pub, 5)  # seq 4..8
    r.xtrim(DEPTH, maxlen=2, approximate=False)  # 4..6 are gone
    taken = await until(updates, lambda: in_sync(view, pub))
    assert [(u.seq, u.entry, u.resync) for u in taken] == [(8, None, "trimmed")]
    assert view.resyncs == {"trimmed": 1}
    assert view.problem is not None and "expected 4" in view.problem
    pub.batch(bids={50: (1, 1)})
    await until(updates, lambda: view.seq == 9)
    assert in_sync(view, pub)


async def test_view_resyncs_after_a_reconnect(r: redis.Redis, view: BookView) -> None:
    pub = Publisher(r)
    some_levels(pub, 3)
    taken: list[Update] = []

    async def follow() -> None:
        async for update in view.updates():
            taken.append(update)

    task = asyncio.create_task(follow())
    try:
        await wait_for(lambda: view.synced)

        def reader() -> int | None:
            ids = [c["id"] for c in r.client_list() if c["cmd"] == "xread"]
            return int(ids[0]) if ids else None

        await wait_for(lambda: reader() is not None)
        r.client_kill_filter(_id=reader())
        pub.batch(bids={100: (1, 1)})
        await wait_for(lambda: in_sync(view, pub))
    finally:
        task.cancel()
    assert view.resyncs == {"reconnect": 1}
    assert (None, "reconnect") in [(u.entry, u.resync) for u in taken]


async def test_view_refuses_a_corrupted_book_until_it_is_right_again(
    r: redis.Redis, view: BookView
) -> None:
    pub = Publisher(r)
    some_levels(pub, 3)
    r.hset(BOOK, "b:100", "6:1")  # the truth is 5:1
    task = asyncio.create_task(view.sync())
    try:
        await wait_for(lambda: view.resyncs["bad_snapshot"] >= 2)
        assert not task.done() and not view.synced
        r.hset(BOOK, "b:100", "5:1")
        update = await asyncio.wait_for(task, 20)
    finally:
        task.cancel()
    assert update.resync == "bad_snapshot"
    assert in_sync(view, pub)


async def test_a_corrupted_book_field_is_found_by_the_next_entry(
    r: redis.Redis, view: BookView
) -> None:
    """With the entry at the book's depth_id trimmed, the snapshot cannot be checked when it is
    read: the next entry's checksum shows it wrong, and the view resyncs until the hash is
    right again."""
    pub = Publisher(r)
    some_levels(pub, 3)
    r.hset(BOOK, "b:99", "7:1")  # the truth is 6:1
    r.xtrim(DEPTH, maxlen=0, approximate=False)
    updates = view.updates()
    await anext(updates)
    assert view.synced and view.seq == 3 and not in_sync(view, pub)  # the bad copy
    pub.batch(asks={111: (1, 1)})
    task = asyncio.create_task(until(updates, lambda: in_sync(view, pub)))
    try:
        await wait_for(lambda: view.resyncs["bad_snapshot"] >= 1)
        assert view.resyncs["mismatch"] == 1
        r.hset(BOOK, "b:99", "6:1")
        await asyncio.wait_for(task, 20)
    finally:
        task.cancel()
    assert in_sync(view, pub)


async def test_a_malformed_entry_is_a_resync_not_a_crash(r: redis.Redis, view: BookView) -> None:
    pub = Publisher(r)
    some_levels(pub, 1)
    updates = view.updates()
    await anext(updates)
    r.xadd(DEPTH, {"seq": "2", "bids": "oops"}, id="1500-0")
    task = asyncio.create_task(until(updates, lambda: view.resyncs["malformed"] >= 1))
    await asyncio.wait_for(task, 20)
    assert view.problem is not None and "no input_id field" in view.problem


# `shard book`


def shard_book(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shard", "book", "--pair", PAIR, "--redis-url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def with_ticker(r: redis.Redis) -> Publisher:
    pub = Publisher(r)
    pub.batch(bids={999_000_000: (10, 4), 1_000_000_000: (3, 1)})
    pub.batch(asks={1_001_000_000: (5, 1), 1_005_000_000: (7, 2)})
    r.hset(
        TICKER,
        mapping={
            "last_trade_id": 17,
            "last_price": 1_000_000_000,
            "last_quantity": 5,
            "last_timestamp": 1678886400001,
            "last_taker_side": "sell",
            "trade_count": 17,
            "volume": 120,
            "notional": 120_000_000_000,
        },
    )
    return pub


def test_shard_book_prints_the_ladder(r: redis.Redis, server: LocalServer) -> None:
    with_ticker(r)
    result = shard_book(server.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split() for line in lines[2:7]] == [
        ["ask", "10.05", "7", "2", "12"],
        ["ask", "10.01", "5", "1", "5"],
        ["--", "spread", "0.01", "--"],
        ["bid", "10.00", "3", "1", "3"],
        ["bid", "9.99", "10", "4", "13"],
    ]
    assert lines[7] == (
        "ticker: last 10.00 x 5 (taker sell) at 2023-03-15T13:20:00.001Z trade #17; "
        "trade_count 17, volume 120, notional 1200.00"
    )


def test_shard_book_says_when_it_cannot_read_the_book() -> None:
    result = shard_book(f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 1
    assert result.stderr.startswith(f"shard book: cannot read the book of {PAIR}: ")


def test_shard_book_json(r: redis.Redis, server: LocalServer) -> None:
    with_ticker(r)
    result = shard_book(server.url, "--json", "--depth", "1")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["seq"] == 2 and out["input_id"] == "1002-0"
    assert out["bids"] == [[1_000_000_000, 3, 1]]
    assert out["asks"] == [[1_001_000_000, 5, 1]]
    assert out["ticker"]["last_price"] == 1_000_000_000
    assert out["ticker"]["last_taker_side"] == "sell"


def test_shard_book_follow_redraws_and_reports_resyncs(r: redis.Redis, server: LocalServer) -> None:
    pub = with_ticker(r)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shard",
            "book",
            "--pair",
            PAIR,
            "--redis-url",
            server.url,
            "--follow",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout or []), daemon=True)
    reader.start()

    def wait_text(words: str) -> None:
        deadline = time.monotonic() + 20
        while not any(words in line for line in list(seen)):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(seen)
            time.sleep(0.02)

    try:
        wait_text("in sync; no resync")
        pub.batch(bids={1_000_000_000: (0, 0)})
        wait_text("seq 3")
        for c in r.client_list():
            if c["cmd"] == "xread":
                r.client_kill_filter(_id=c["id"])
        pub.batch(asks={2_000_000_000: (1, 1)})
        wait_text("resyncs: reconnect 1")
        wait_text("seq 4")
    finally:
        proc.send_signal(signal.SIGINT)
        reader.join(timeout=20)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    last = [f for f in "".join(seen).split("\n\n") if "seq 4" in f][-1]
    assert [line.split()[:2] for line in last.splitlines()[2:5]] == [
        ["ask", "20.00"],
        ["ask", "10.05"],
        ["ask", "10.01"],
    ]
    bids = [line.split() for line in last.splitlines() if line.startswith("bid")]
    assert bids == [["bid", "9.99", "10", "4", "10"]]
