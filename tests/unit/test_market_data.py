"""The engine's market data, without a server: the contract's checksum, depth after a restore,
and the trade totals carried by snapshots (older snapshots still restore)."""

from __future__ import annotations

import zlib

import msgspec

from shard.book import BookSide
from shard.decode import decode_json
from shard.engine import Engine
from shard.l2 import checksum
from shard.messages import Cancel, Order, Trade
from shard.state import LevelState
from shard.workload import standard_mix


def test_the_contracts_checksum_example() -> None:
    """Bids 101x5 and 100x7 with one ask 102x3 give ``101:5,100:7|102:3``."""
    assert checksum([(101, 5, 1), (100, 7, 2)], [(102, 3, 1)]) == zlib.crc32(b"101:5,100:7|102:3")
    assert checksum([], []) == zlib.crc32(b"|")
    eleven = [(100 - i, 1) for i in range(11)]  # only the 10 best of a side count
    assert checksum(eleven, []) == checksum(eleven[:10], [])


def test_a_batch_reports_each_changed_level_once_with_its_final_value() -> None:
    engine = Engine(track_depth=True)
    trades: list[Trade] = []
    book = [("a", "buy", 5, 101), ("b", "buy", 7, 100), ("c", "sell", 3, 102)]
    for oid, side, qty, price in book:
        engine.apply(Order(oid, side, qty, price, "limit", 1), "1-1", trades)
    engine.apply(Order("d", "buy", 2, 100, "limit", 1), "1-2", trades)  # 100 changes twice
    depth = engine.take_depth()
    assert depth is not None
    assert depth.bids == [(101, 5, 1), (100, 9, 2)] and depth.asks == [(102, 3, 1)]
    assert (depth.best_bid, depth.best_ask) == ((101, 5, 1), (102, 3, 1))
    assert depth.checksum == zlib.crc32(b"101:5,100:9|102:3")
    assert engine.take_depth() is None  # nothing changed since
    engine.apply(Order("e", "sell", 8, 100, "limit", 2), "1-3", trades)  # 101 gone, 100 left
    depth = engine.take_depth()
    assert depth is not None and depth.bids == [(101, 0, 0), (100, 6, 2)] and depth.asks == []
    assert engine.ticker() == (2, 8, 101 * 5 + 100 * 3, trades[-1])


def test_a_level_made_and_emptied_within_a_batch_is_not_reported() -> None:
    engine = Engine(track_depth=True)
    engine.apply(Order("a", "buy", 5, 101, "limit", 1), "1-1", [])
    engine.apply(Order("b", "sell", 5, 101, "limit", 1), "1-2", [])  # trades it away
    assert engine.take_depth() is None  # the client never had it: nothing to say
    engine.apply(Order("c", "buy", 5, 99, "limit", 1), "1-3", [])
    engine.take_depth()
    engine.apply(Order("d", "sell", 5, 99, "limit", 1), "1-4", [])  # reported, then gone
    engine.apply(Order("e", "buy", 2, 99, "limit", 1), "1-5", [])  # a new level at 99
    depth = engine.take_depth()
    assert depth is not None and depth.bids == [(99, 2, 1)]


def test_an_engine_without_tracking_records_nothing() -> None:
    engine = Engine()
    engine.apply(Order("a", "buy", 5, 101, "limit", 1), "1-1", [])
    assert engine.book.changed == [] and engine.take_depth() is None


def test_a_restored_engine_continues_the_ticker_and_reports_no_restored_level() -> None:
    msgs = [decode_json(msgspec.json.encode(m)) for m in standard_mix(3000, seed=5)]
    original = Engine(track_depth=True)
    for n, msg in enumerate(msgs[:2000]):
        original.apply(msg, f"1-{n}", [])
    original.take_depth()
    restored = Engine.restore(original.snapshot(), track_depth=True)
    assert restored.ticker() == original.ticker() and restored.ticker().volume > 0
    assert restored.take_depth() is None  # the levels it restored are not changes
    writer = original.snapshot_writer()  # sliced encoding carries the totals too
    sliced = b"".join(writer.step(100) for _ in iter(lambda: writer.done, True))
    assert sliced == original.snapshot()
    for n, msg in enumerate(msgs[2000:], 2000):
        original.apply(msg, f"1-{n}", [])
        restored.apply(msg, f"1-{n}", [])
        assert restored.take_depth() == original.take_depth()
    assert restored.ticker() == original.ticker()


def test_a_version_1_snapshot_restores_with_totals_from_zero() -> None:
    """Snapshots written before the trade totals (version 1, four fields) still restore."""
    old = msgspec.msgpack.encode(
        [1, 4, [LevelState(100, ["a", "b"], [3, 4])], [LevelState(105, ["c"], [2])]]
    )
    engine = Engine.restore(old)
    assert engine.book.get("b") == ("buy", 100, 4) and engine.book.next_trade_id == 4
    assert engine.ticker() == (3, 0, 0, None)


def _top(side: BookSide) -> list[tuple[int, int]]:
    """A side's 10 best levels as ``(price, quantity)``, from its levels alone."""
    return [(lv.price, lv.total) for _, lv in sorted(side.levels.items())[:10]]


def test_the_checksum_follows_every_change_near_and_behind_the_top() -> None:
    """take_depth keeps a side's checksummed text while its changes lie behind its 10 best
    levels: after each batch the checksum must still be that of the book as it stands."""
    engine = Engine(track_depth=True)
    trades: list[Trade] = []
    n = 0

    def apply(*orders: tuple[str, int, int]) -> None:
        nonlocal n
        for side, qty, price in orders:
            n += 1
            engine.apply(Order(f"o{n}", side, qty, price, "limit", 1), None, trades)
        depth = engine.take_depth()
        assert depth is not None
        book = engine.book
        assert depth.checksum == checksum(_top(book.bids), _top(book.asks))

    apply(*[("buy", 1, 100 - i) for i in range(15)], *[("sell", 1, 200 + i) for i in range(15)])
    apply(("buy", 5, 86))  # behind the 10 best bids: the bid text is kept
    apply(("sell", 5, 213))  # behind the asks' 10 best
    apply(("buy", 2, 91))  # the 10th bid: inside
    apply(("buy", 3, 95), ("sell", 4, 214))  # one side inside, the other behind
    engine.apply(Order("x", "sell", 20, 90, "ioc", 1), None, trades)  # sweeps the top bids
    depth = engine.take_depth()
    book = engine.book
    assert depth is not None and depth.checksum == checksum(_top(book.bids), _top(book.asks))
    restored = Engine.restore(engine.snapshot(), track_depth=True)  # no text known yet
    restored.apply(Order("y", "sell", 1, 230, "limit", 1), None, trades)
    depth = restored.take_depth()
    book = restored.book
    assert depth is not None and depth.checksum == checksum(_top(book.bids), _top(book.asks))


def test_the_checksum_follows_levels_made_and_dropped_among_the_top() -> None:
    """take_depth reuses a side's list of 10 best levels while none is made or dropped: a
    level made or emptied among them, or both in one batch at one price, must renew it."""
    engine = Engine(track_depth=True)
    trades: list[Trade] = []
    n = 0

    def batch(*inputs: Order | Cancel) -> None:
        for msg in inputs:
            engine.apply(msg, None, trades)
        depth = engine.take_depth()
        book = engine.book
        assert depth is not None
        assert depth.checksum == checksum(_top(book.bids), _top(book.asks))

    def buy(qty: int, price: int) -> Order:
        nonlocal n
        n += 1
        return Order(f"o{n}", "buy", qty, price, "limit", 1)

    batch(*[buy(1, 100 - 2 * i) for i in range(12)])  # bids 100, 98, ... 78
    batch(buy(4, 98))  # a change among the 10 best: the same levels
    batch(buy(1, 95))  # a level made among them: 80 drops out of the 10 best
    batch(Cancel("o2", 1))  # 98 emptied: 80 comes back
    batch(Cancel("o1", 1), buy(3, 100))  # 100 emptied and made again in one batch
    batch(Order("s", "sell", 5, 94, "ioc", 1))  # a sweep that empties the best levels
