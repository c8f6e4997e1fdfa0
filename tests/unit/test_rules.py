"""One test per matching rule and per engine reject reason (CONTRACT.md, "Matching rules")."""

from __future__ import annotations

import pytest

from shard.engine import Engine
from shard.messages import Amend, Cancel, Event, Order, Trade

BIG = 2**63 - 1


class Run:
    """An engine plus the trades and events it produced, one helper per message kind."""

    def __init__(self) -> None:
        self.engine = Engine()
        self.trades: list[Trade] = []
        self.n = 0

    def _apply(self, msg) -> Event:
        self.n += 1
        event = self.engine.apply(msg, f"0-{self.n}", self.trades)
        self.engine.book.check()
        return event

    def order(self, oid, side, qty, price=None, kind="limit", ts=1) -> Event:
        return self._apply(Order(oid, side, qty, price, kind, ts))

    def cancel(self, oid, ts=1) -> Event:
        return self._apply(Cancel(oid, ts))

    def amend(self, oid, qty=None, price=None, ts=1) -> Event:
        return self._apply(Amend(oid, qty, price, ts))

    def fills(self) -> list[tuple[str, str, int, int]]:
        """(taker, maker, price, quantity) of every trade so far."""
        return [(t.taker_order_id, t.maker_order_id, t.price, t.quantity) for t in self.trades]


@pytest.fixture
def run() -> Run:
    return Run()


def test_seed_example(run: Run) -> None:
    assert run.order("order1", "buy", 10, 1_000_000_000, ts=1678886400000).status == "resting"
    event = run.order("order2", "sell", 5, 1_000_000_000, ts=1678886400001)
    assert event == Event("0-2", "order2", "filled", 5, 0)
    assert run.trades == [
        Trade(1, "order2", "order1", 1_000_000_000, 5, 1678886400001, "sell", "0-2")
    ]
    assert run.engine.book.get("order1") == ("buy", 1_000_000_000, 5)
    assert run.cancel("order1", ts=1678886400002) == Event("0-3", "order1", "cancelled", None, 0, 5)
    assert len(run.engine.book) == 0


def test_price_priority_then_time_priority(run: Run) -> None:
    run.order("a1", "sell", 5, 102)
    run.order("a2", "sell", 5, 101)
    run.order("a3", "sell", 5, 101)
    run.order("a4", "sell", 5, 100)
    run.order("b", "buy", 20, 105)
    assert [maker for _, maker, _, _ in run.fills()] == ["a4", "a2", "a3", "a1"]


def test_trade_at_maker_price_with_taker_timestamp(run: Run) -> None:
    run.order("m", "buy", 5, 200, ts=10)
    run.order("t", "sell", 5, 150, ts=99)
    (trade,) = run.trades
    assert (trade.price, trade.timestamp, trade.taker_side) == (200, 99, "sell")


def test_partial_fills_across_orders_and_levels(run: Run) -> None:
    run.order("a", "sell", 3, 100)
    run.order("b", "sell", 4, 100)
    run.order("c", "sell", 10, 101)
    event = run.order("t", "buy", 12, 101)
    assert event == Event("0-4", "t", "filled", 12, 0)
    assert run.fills() == [("t", "a", 100, 3), ("t", "b", 100, 4), ("t", "c", 101, 5)]
    assert run.engine.book.get("c") == ("sell", 101, 5)


def test_limit_rest_rests_after_partial_fill(run: Run) -> None:
    run.order("a", "sell", 3, 100)
    assert run.order("t", "buy", 10, 100) == Event("0-2", "t", "partially_filled", 3, 7)
    assert run.engine.book.best_bid() == 100
    assert run.engine.book.best_ask() is None


def test_trade_ids_are_contiguous(run: Run) -> None:
    for i in range(5):
        run.order(f"m{i}", "sell", 1, 100 + i)
    run.order("t", "buy", 3, 200)
    run.order("u", "buy", 5, 200)
    assert [t.trade_id for t in run.trades] == [1, 2, 3, 4, 5]


def test_price_zero_is_a_valid_limit(run: Run) -> None:
    assert run.order("free", "buy", 5, 0).status == "resting"
    event = run.order("dump", "sell", 2, 0)
    assert event.status == "filled"
    assert run.fills() == [("dump", "free", 0, 2)]


def test_sell_at_zero_sweeps_every_bid(run: Run) -> None:
    run.order("b1", "buy", 1, 50)
    run.order("b2", "buy", 1, 7)
    run.order("s", "sell", 5, 0)
    assert run.fills() == [("s", "b1", 50, 1), ("s", "b2", 7, 1)]
    assert run.engine.book.best_ask() == 0


def test_extreme_quantity(run: Run) -> None:
    run.order("big", "sell", BIG, 10)
    assert run.order("t", "buy", BIG - 1, 10).status == "filled"
    assert run.engine.book.get("big") == ("sell", 10, 1)


def test_market_trades_what_is_there_and_cancels_the_rest(run: Run) -> None:
    run.order("a", "sell", 3, 100)
    run.order("b", "sell", 3, 10**12)
    event = run.order("m", "buy", 10, kind="market")
    assert (event.status, event.filled_quantity, event.cancelled_quantity, event.reason) == (
        "cancelled",
        6,
        4,
        "no_liquidity",
    )
    assert "m" not in run.engine.book


def test_market_into_empty_book(run: Run) -> None:
    event = run.order("m", "sell", 10, kind="market")
    assert (event.status, event.filled_quantity, event.cancelled_quantity) == ("cancelled", 0, 10)
    assert run.trades == []


def test_ioc_trades_up_to_its_price_and_never_rests(run: Run) -> None:
    run.order("a", "sell", 3, 100)
    run.order("b", "sell", 3, 101)
    event = run.order("i", "buy", 10, 100, kind="ioc")
    assert event == Event("0-3", "i", "cancelled", 3, 0, 7, "no_liquidity", event.detail)
    assert "i" not in run.engine.book
    assert run.engine.book.best_ask() == 101


def test_ioc_filled(run: Run) -> None:
    run.order("a", "sell", 3, 100)
    assert run.order("i", "buy", 3, 100, kind="ioc") == Event("0-2", "i", "filled", 3, 0)


def test_fok_fills_in_full_across_levels(run: Run) -> None:
    run.order("a", "sell", 3, 100)
    run.order("b", "sell", 3, 101)
    assert run.order("f", "buy", 6, 101, kind="fok").status == "filled"
    assert len(run.engine.book) == 0


def test_fok_that_cannot_fill_changes_nothing(run: Run) -> None:
    run.order("a", "sell", 3, 100)
    run.order("b", "sell", 3, 102)
    before = run.engine.snapshot()
    event = run.order("f", "buy", 6, 101, kind="fok")
    assert (event.status, event.reason, event.cancelled_quantity) == (
        "cancelled",
        "fok_unfilled",
        6,
    )
    assert run.trades == []
    assert run.engine.snapshot() == before


def test_post_only_rests_or_is_rejected(run: Run) -> None:
    run.order("a", "sell", 3, 100)
    assert run.order("p", "buy", 5, 99, kind="post_only") == Event("0-2", "p", "resting", 0, 5)
    before = run.engine.snapshot()
    event = run.order("q", "buy", 5, 100, kind="post_only")
    assert (event.status, event.reason) == ("rejected", "would_cross")
    assert "100" in event.detail
    assert run.engine.snapshot() == before


def test_cancel_unknown_and_finished_orders(run: Run) -> None:
    assert run.cancel("ghost").reason == "unknown_order"
    run.order("a", "sell", 3, 100)
    run.order("t", "buy", 3, 100)
    assert run.cancel("a").reason == "unknown_order"  # filled
    run.order("b", "sell", 3, 100)
    run.cancel("b")
    assert run.cancel("b").reason == "unknown_order"  # already cancelled


def test_duplicate_live_order_id_is_rejected_and_changes_nothing(run: Run) -> None:
    run.order("a", "sell", 3, 100)
    before = run.engine.snapshot()
    event = run.order("a", "buy", 3, 100)
    assert (event.status, event.reason) == ("rejected", "duplicate_order_id")
    assert run.engine.snapshot() == before


def test_finished_order_id_may_be_used_again(run: Run) -> None:
    run.order("a", "sell", 3, 100)
    run.cancel("a")
    assert run.order("a", "sell", 4, 100).status == "resting"


def test_amend_reduce_keeps_priority(run: Run) -> None:
    run.order("a", "sell", 5, 100)
    run.order("b", "sell", 5, 100)
    assert run.amend("a", qty=2) == Event("0-3", "a", "amended", 0, 2)
    run.order("t", "buy", 3, 100)
    assert run.fills() == [("t", "a", 100, 2), ("t", "b", 100, 1)]


def test_amend_increase_loses_priority(run: Run) -> None:
    run.order("a", "sell", 5, 100)
    run.order("b", "sell", 5, 100)
    run.amend("a", qty=6)
    run.order("t", "buy", 6, 100)
    assert run.fills() == [("t", "b", 100, 5), ("t", "a", 100, 1)]


def test_amend_same_values_changes_nothing(run: Run) -> None:
    run.order("a", "sell", 5, 100)
    run.order("b", "sell", 5, 100)
    before = run.engine.snapshot()
    assert run.amend("a", qty=5, price=100).status == "amended"
    assert run.engine.snapshot() == before


def test_amend_price_requeues_at_back_of_new_level(run: Run) -> None:
    run.order("a", "sell", 5, 101)
    run.order("b", "sell", 5, 100)
    run.amend("a", price=100)
    assert run.engine.book.get("a") == ("sell", 100, 5)
    run.order("t", "buy", 6, 100)
    assert run.fills() == [("t", "b", 100, 5), ("t", "a", 100, 1)]


def test_amend_that_crosses_trades_as_taker_with_amend_timestamp(run: Run) -> None:
    run.order("bid", "buy", 4, 99, ts=1)
    run.order("a", "sell", 10, 105, ts=2)
    event = run.amend("a", price=98, ts=50)
    assert event == Event("0-3", "a", "amended", 4, 6)
    assert run.trades == [Trade(1, "a", "bid", 99, 4, 50, "sell", "0-3")]
    assert run.engine.book.get("a") == ("sell", 98, 6)


def test_amend_fully_filled_on_reentry(run: Run) -> None:
    run.order("bid", "buy", 10, 99)
    run.order("a", "sell", 10, 105)
    assert run.amend("a", qty=3, price=99) == Event("0-3", "a", "amended", 3, 0)
    assert "a" not in run.engine.book
    assert run.engine.book.get("bid") == ("buy", 99, 7)


def test_amend_unknown_order_changes_nothing(run: Run) -> None:
    run.order("a", "sell", 5, 100)
    before = run.engine.snapshot()
    assert run.amend("zzz", qty=1).reason == "unknown_order"
    assert run.engine.snapshot() == before


def test_cancel_middle_of_level_keeps_others_in_order(run: Run) -> None:
    for oid in "abc":
        run.order(oid, "buy", 1, 100)
    run.cancel("b")
    run.order("t", "sell", 2, 100)
    assert run.fills() == [("t", "a", 100, 1), ("t", "c", 100, 1)]


def test_emptied_best_level_hands_over_to_next(run: Run) -> None:
    run.order("a", "buy", 1, 100)
    run.order("b", "buy", 1, 90)
    run.cancel("a")
    assert run.engine.book.best_bid() == 90
    run.order("t", "sell", 1, 0)
    assert run.engine.book.best_bid() is None
