"""Accounts: ownership of cancels and amends, self-trade prevention in every mode and order type,
order events, cancel_all and fees (README "Accounts", docs/engine.md)."""

from __future__ import annotations

import pytest

from shard.engine import Engine
from shard.fees import Fees, check_rates, fee
from shard.messages import Amend, Cancel, CancelAll, Event, Order, Trade

STP = "self_trade_prevented"


class Run:
    """An engine, the trades and every event (order events included), one helper per input."""

    def __init__(self, fees: Fees | None = None, stp_default: str = "cancel_taker") -> None:
        self.engine = Engine(fees=fees, stp_default=stp_default)
        self.trades: list[Trade] = []
        self.events: list[Event] = []
        self.order_events: list[Event] = []
        self.n = 0

    def _apply(self, msg: object) -> Event:
        self.n += 1
        event = self.engine.apply(msg, f"0-{self.n}", self.trades)  # type: ignore[arg-type]
        self.order_events = list(self.engine.order_events)
        self.engine.order_events.clear()
        self.events += [*self.order_events, event]
        self.engine.book.check()
        return event

    def order(self, oid, side, qty, price=None, kind="limit", account=None, stp=None) -> Event:
        return self._apply(Order(oid, side, qty, price, kind, 1, account, stp))

    def cancel(self, oid, account=None) -> Event:
        return self._apply(Cancel(oid, 1, account))

    def amend(self, oid, qty=None, price=None, account=None) -> Event:
        return self._apply(Amend(oid, qty, price, 1, account))

    def cancel_all(self, account, side=None) -> Event:
        return self._apply(CancelAll(account, side, 1))

    def fills(self) -> list[tuple[str, str, int]]:
        """(taker, maker, quantity) of every trade so far."""
        return [(t.taker_order_id, t.maker_order_id, t.quantity) for t in self.trades]

    def live(self, oid: str) -> tuple[str, int, int] | None:
        return self.engine.book.get(oid)


@pytest.fixture
def run() -> Run:
    return Run()


def balanced(event: Event, quantity: int) -> bool:
    """An order's event accounts for all of it: filled + remaining + cancelled."""
    parts = (event.filled_quantity, event.remaining_quantity, event.cancelled_quantity)
    return sum(x or 0 for x in parts) == quantity


# -- accounts on trades and events; ownership ---------------------------------------------------


def test_trades_and_events_carry_the_accounts(run: Run) -> None:
    assert run.order("m1", "sell", 5, 100, account="alice").account == "alice"
    run.order("m2", "sell", 5, 100)
    event = run.order("t1", "buy", 8, 100, account="bob")
    assert event == Event("0-3", "t1", "filled", 8, 0, account="bob")
    assert [(t.maker_account, t.taker_account) for t in run.trades] == [
        ("alice", "bob"),
        (None, "bob"),
    ]
    run.order("t2", "sell", 3, 90)  # no account: rests against no one
    run.order("t3", "buy", 1, 90)
    assert (run.trades[-1].maker_account, run.trades[-1].taker_account) == (None, None)


def test_orders_without_accounts_publish_exactly_what_they_did() -> None:
    run = Run()
    run.order("a", "sell", 5, 100)
    assert run.order("b", "buy", 2, 100) == Event("0-2", "b", "filled", 2, 0)
    assert run.trades == [Trade(1, "b", "a", 100, 2, 1, "buy", "0-2")]
    assert run.engine.book.owners.of == {}


def test_a_cancel_or_amend_with_an_account_applies_only_to_its_orders(run: Run) -> None:
    run.order("a1", "buy", 5, 100, account="alice")
    run.order("n1", "buy", 5, 99)
    for event in (
        run.cancel("a1", account="bob"),
        run.amend("a1", qty=1, account="bob"),
        run.cancel("n1", account="bob"),  # an order without an account is no one's
        run.cancel("zz", account="bob"),
    ):
        assert (event.status, event.reason, event.account) == ("rejected", "unknown_order", "bob")
    # The same sentence as for an order that does not exist: nothing is revealed.
    other, missing = run.cancel("a1", account="bob"), run.cancel("zz", account="bob")
    assert other.detail == (missing.detail or "").replace("'zz'", "'a1'")
    event = run.amend("a1", qty=3, account="alice")
    assert event == Event("0-9", "a1", "amended", 0, 3, account="alice")
    assert run.cancel("a1").status == "cancelled"  # without an account, as before
    assert run.cancel("n1", account=None).status == "cancelled"


def test_an_amend_keeps_the_account(run: Run) -> None:
    run.order("a1", "buy", 5, 100, account="alice")
    run.amend("a1", price=101)  # re-enters
    run.order("t1", "sell", 5, 101, account="bob")
    assert run.trades[-1].maker_account == "alice"


# -- self-trade prevention, per mode ------------------------------------------------------------


def book_of_alice(run: Run) -> None:
    """Asks: 100 alice a1 (4), then other o1 (3); 101 alice a2 (5)."""
    run.order("a1", "sell", 4, 100, account="alice")
    run.order("o1", "sell", 3, 100, account="carol")
    run.order("a2", "sell", 5, 101, account="alice")


def test_cancel_taker_cancels_the_incoming_rest_and_keeps_the_maker(run: Run) -> None:
    run.order("o0", "sell", 2, 99)
    book_of_alice(run)
    event = run.order("t", "buy", 10, 101, account="alice", stp="cancel_taker")
    assert run.fills() == [("t", "o0", 2)]  # what it traded before stands
    assert (event.status, event.filled_quantity, event.cancelled_quantity) == ("cancelled", 2, 8)
    assert event.remaining_quantity == 0 and event.reason == STP and balanced(event, 10)
    assert "t" not in run.engine.book and run.live("a1") == ("sell", 100, 4)
    assert run.order_events == []


def test_cancel_taker_is_the_pair_default(run: Run) -> None:
    book_of_alice(run)
    event = run.order("t", "buy", 10, 101, account="alice")
    assert (event.status, event.reason, run.trades) == ("cancelled", STP, [])


def test_the_pair_default_is_configurable() -> None:
    run = Run(stp_default="cancel_maker")
    book_of_alice(run)
    run.order("t", "buy", 3, 100, account="alice")
    assert run.fills() == [("t", "o1", 3)] and "a1" not in run.engine.book


def test_cancel_maker_removes_own_orders_and_goes_on(run: Run) -> None:
    book_of_alice(run)
    event = run.order("t", "buy", 10, 101, account="alice", stp="cancel_maker")
    assert run.fills() == [("t", "o1", 3)]
    assert event == Event("0-4", "t", "partially_filled", 3, 7, account="alice")
    assert run.live("t") == ("buy", 101, 7)  # rests at 101, where a2 was
    assert [
        (e.order_id, e.status, e.cancelled_quantity, e.remaining_quantity) for e in run.order_events
    ] == [
        ("a1", "cancelled", 4, 0),
        ("a2", "cancelled", 5, 0),
    ]
    for e in run.order_events:
        assert (e.input_id, e.reason, e.account, e.resting_order) == ("0-4", STP, "alice", 1)
    assert run.events[-1] is event  # the input's own event comes after its order events


def test_cancel_both_removes_the_maker_and_the_taker_rest(run: Run) -> None:
    book_of_alice(run)
    event = run.order("t", "buy", 10, 101, account="alice", stp="cancel_both")
    assert run.fills() == []
    assert (event.status, event.cancelled_quantity, event.reason) == ("cancelled", 10, STP)
    assert [e.order_id for e in run.order_events] == ["a1"]
    assert run.live("o1") == ("sell", 100, 3) and run.live("a2") == ("sell", 101, 5)


def test_decrement_takes_the_smaller_quantity_off_both(run: Run) -> None:
    book_of_alice(run)
    event = run.order("t", "buy", 10, 101, account="alice", stp="decrement")
    # a1 (4) decremented away, o1 trades 3, a2 (5) decremented by the 3 left: 2 stay.
    assert run.fills() == [("t", "o1", 3)]
    assert [
        (e.order_id, e.status, e.cancelled_quantity, e.remaining_quantity) for e in run.order_events
    ] == [
        ("a1", "cancelled", 4, 0),
        ("a2", "reduced", 3, 2),
    ]
    assert (event.status, event.filled_quantity, event.remaining_quantity) == ("cancelled", 3, 0)
    assert event.cancelled_quantity == 7 and event.reason == STP and balanced(event, 10)
    assert run.live("a2") == ("sell", 101, 2)


def test_decrement_leaves_the_taker_resting_with_what_is_left(run: Run) -> None:
    run.order("a1", "sell", 4, 100, account="alice")
    event = run.order("t", "buy", 10, 100, account="alice", stp="decrement")
    assert (event.status, event.filled_quantity, event.remaining_quantity) == ("resting", 0, 6)
    assert (event.cancelled_quantity, event.reason) == (4, STP) and balanced(event, 10)
    assert run.live("t") == ("buy", 100, 6) and "a1" not in run.engine.book


def test_decrement_of_a_bigger_maker_ends_the_taker(run: Run) -> None:
    run.order("a1", "sell", 9, 100, account="alice")
    event = run.order("t", "buy", 4, 100, account="alice", stp="decrement")
    assert (event.status, event.cancelled_quantity, event.remaining_quantity) == ("cancelled", 4, 0)
    assert run.live("a1") == ("sell", 100, 5) and run.order_events[0].status == "reduced"


def test_none_lets_them_trade(run: Run) -> None:
    book_of_alice(run)
    run.order("t", "buy", 5, 100, account="alice", stp="none")
    assert run.fills() == [("t", "a1", 4), ("t", "o1", 1)]
    assert run.trades[0].maker_account == run.trades[0].taker_account == "alice"


def test_a_mix_at_one_level_keeps_time_priority(run: Run) -> None:
    run.order("o1", "sell", 1, 100, account="carol")
    run.order("a1", "sell", 1, 100, account="alice")
    run.order("o2", "sell", 1, 100)
    run.order("a2", "sell", 1, 100, account="alice")
    run.order("o3", "sell", 1, 100, account="dave")
    run.order("t", "buy", 3, 100, account="alice", stp="cancel_maker")
    assert run.fills() == [("t", "o1", 1), ("t", "o2", 1), ("t", "o3", 1)]
    assert [e.order_id for e in run.order_events] == ["a1", "a2"]
    assert len(run.engine.book) == 0


def test_other_accounts_and_no_account_never_trigger_prevention(run: Run) -> None:
    run.order("a1", "sell", 2, 100, account="alice")
    run.order("t1", "buy", 1, 100, account="bob")
    run.order("t2", "buy", 1, 100)
    assert run.fills() == [("t1", "a1", 1), ("t2", "a1", 1)]


# -- per order type -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["market", "ioc"])
def test_market_and_ioc_under_cancel_taker(run: Run, kind: str) -> None:
    run.order("o0", "sell", 2, 99)
    book_of_alice(run)
    price = None if kind == "market" else 101
    event = run.order("t", "buy", 10, price, kind, account="alice")
    assert run.fills() == [("t", "o0", 2)]
    assert (event.status, event.reason, event.cancelled_quantity) == ("cancelled", STP, 8)


def test_ioc_decrement_then_no_liquidity(run: Run) -> None:
    run.order("a1", "sell", 2, 100, account="alice")
    run.order("o1", "sell", 3, 100)
    event = run.order("t", "buy", 10, 100, "ioc", account="alice", stp="decrement")
    assert run.fills() == [("t", "o1", 3)]
    assert (event.status, event.filled_quantity, event.cancelled_quantity) == ("cancelled", 3, 7)
    assert event.reason == STP and "no more liquidity for 5" in (event.detail or "")


def test_fok_counts_only_the_liquidity_it_could_take(run: Run) -> None:
    book_of_alice(run)  # 4 alice, 3 carol at 100; 5 alice at 101
    # cancel_taker: matching would stop at a1, first in line: nothing is liquidity.
    event = run.order("f1", "buy", 3, 101, "fok", account="alice")
    assert (event.status, event.reason) == ("cancelled", "fok_unfilled")
    assert run.fills() == [] and run.order_events == [] and run.live("a1") == ("sell", 100, 4)
    # cancel_maker: alice's orders are skipped, carol's 3 are there.
    assert run.order("f2", "buy", 4, 101, "fok", account="alice", stp="cancel_maker").status == (
        "cancelled"
    )
    assert run.live("a1") == ("sell", 100, 4)  # a fok that cannot fill changes nothing
    event = run.order("f3", "buy", 3, 101, "fok", account="alice", stp="cancel_maker")
    assert event.status == "filled" and run.fills() == [("f3", "o1", 3)]
    assert [e.order_id for e in run.order_events] == ["a1"]  # met on the way, so cancelled
    # Without prevention the same-account orders are liquidity like any other.
    assert run.order("f4", "buy", 5, 101, "fok", account="alice", stp="none").status == "filled"


def test_fok_of_another_account_sees_all_the_liquidity(run: Run) -> None:
    book_of_alice(run)
    assert run.order("f", "buy", 12, 101, "fok", account="bob").status == "filled"


def test_post_only_is_unaffected(run: Run) -> None:
    run.order("a1", "sell", 4, 100, account="alice")
    event = run.order("p", "buy", 1, 100, "post_only", account="alice", stp="cancel_maker")
    assert (event.status, event.reason) == ("rejected", "would_cross")
    assert run.live("a1") == ("sell", 100, 4)
    assert run.order("p2", "buy", 1, 99, "post_only", account="alice").account == "alice"
    assert run.engine.book.owners.account_of("p2") == "alice"


def test_an_amend_that_reenters_meets_its_own_orders(run: Run) -> None:
    run.order("a1", "sell", 4, 101, account="alice")
    run.order("o1", "sell", 3, 101)
    run.order("b1", "buy", 5, 99, account="alice", stp="cancel_maker")
    event = run.amend("b1", price=101)  # crosses a1 (own: cancelled), trades o1
    assert [e.order_id for e in run.order_events] == ["a1"]
    assert run.fills() == [("b1", "o1", 3)]
    assert event == Event("0-4", "b1", "amended", 3, 2)
    assert run.live("b1") == ("buy", 101, 2)
    assert run.engine.book.owners.mode_of("b1") == "cancel_maker"  # the mode stays with it


def test_an_amend_under_cancel_taker_loses_its_rest(run: Run) -> None:
    run.order("a1", "sell", 4, 101, account="alice")
    run.order("b1", "buy", 5, 99, account="alice")
    event = run.amend("b1", price=102, account="alice")
    assert (event.status, event.cancelled_quantity, event.reason) == ("cancelled", 5, STP)
    assert "b1" not in run.engine.book and run.live("a1") == ("sell", 100 + 1, 4)


def test_a_multi_level_sweep_with_own_orders_on_several_levels(run: Run) -> None:
    for i, price in enumerate((100, 101, 102)):
        run.order(f"a{i}", "sell", 1, price, account="alice")
        run.order(f"o{i}", "sell", 2, price)
    event = run.order("t", "buy", 6, 102, account="alice", stp="cancel_maker")
    assert run.fills() == [("t", "o0", 2), ("t", "o1", 2), ("t", "o2", 2)]
    assert event.status == "filled" and len(run.engine.book) == 0
    assert [e.order_id for e in run.order_events] == ["a0", "a1", "a2"]


# -- cancel_all ---------------------------------------------------------------------------------


def test_cancel_all_removes_every_order_of_the_account(run: Run) -> None:
    run.order("a1", "buy", 5, 99, account="alice")
    run.order("b1", "buy", 5, 99, account="bob")
    run.order("a2", "sell", 7, 105, account="alice")
    run.order("a3", "buy", 1, 98, account="alice")
    event = run.cancel_all("alice")
    assert event == Event(
        "0-5", None, "cancelled", None, None, 13, cancelled_orders=3, account="alice"
    )
    # In the book's order: the bids best first, then the asks.
    assert [(e.order_id, e.cancelled_quantity, e.reason) for e in run.order_events] == [
        ("a1", 5, "cancel_all"),
        ("a3", 1, "cancel_all"),
        ("a2", 7, "cancel_all"),
    ]
    assert len(run.engine.book) == 1 and "alice" not in run.engine.book.owners.accounts


def test_cancel_all_of_one_side(run: Run) -> None:
    run.order("a1", "buy", 5, 99, account="alice")
    run.order("a2", "sell", 7, 105, account="alice")
    event = run.cancel_all("alice", side="sell")
    assert (event.cancelled_orders, event.cancelled_quantity) == (1, 7)
    assert run.live("a1") == ("buy", 99, 5)


def test_cancel_all_with_nothing_to_cancel(run: Run) -> None:
    event = run.cancel_all("nobody")
    assert (event.status, event.cancelled_orders, event.cancelled_quantity) == ("cancelled", 0, 0)
    assert run.order_events == []


def test_cancel_all_costs_the_accounts_orders_not_the_book() -> None:
    run = Run()
    for i in range(2000):
        run.engine.apply(Order(f"x{i}", "buy", 1, 10 + i % 50, "limit", 1), None, run.trades)
    run.order("a1", "buy", 1, 5, account="alice")
    owned = run.engine.book.owners.accounts
    assert list(owned) == ["alice"] and len(owned["alice"].orders) == 1  # only owned ones
    assert run.cancel_all("alice").cancelled_orders == 1


# -- fees -----------------------------------------------------------------------------------------


def test_fee_rounding() -> None:
    assert fee(1_000_000, 1) == 1  # exact
    assert fee(1_000_001, 1) == 2  # a charge rounds up
    assert fee(999_999, 1) == 1
    assert fee(0, 25) == 0
    assert fee(1_000_001, -1) == -1  # a rebate rounds towards zero
    assert fee(999_999, -1) == 0
    assert fee(3_000_000, -2) == -6
    big = (2**63 - 1) * (2**63 - 1)
    assert fee(big, 1_000_000) == big and fee(big, -1_000_000) == -big  # exact, no overflow
    assert fee(big, 7) == -(-big * 7 // 1_000_000)


def test_rates_must_not_pay_out() -> None:
    assert check_rates(-2, 5) is None and check_rates(0, 0) is None
    assert "negative" in (check_rates(-6, 5) or "")
    assert "only the maker" in (check_rates(5, -1) or "")
    assert "100%" in (check_rates(0, 1_000_001) or "")


def test_trades_carry_fees() -> None:
    run = Run(fees=Fees(-100, 250))
    run.order("m", "sell", 3, 123_456_789)
    run.order("t", "buy", 2, 123_456_789)
    (trade,) = run.trades
    notional = 123_456_789 * 2
    assert trade.maker_fee == -(notional * 100 // 1_000_000)
    assert trade.taker_fee == -(-notional * 250 // 1_000_000)
    assert trade.maker_account is None  # fees alone put no account on a trade


def test_no_fees_no_fee_fields() -> None:
    run = Run(fees=Fees(0, 0))
    run.order("m", "sell", 3, 100)
    run.order("t", "buy", 2, 100)
    assert (run.trades[0].maker_fee, run.trades[0].taker_fee) == (None, None)


def test_fees_on_an_amend_reentry() -> None:
    run = Run(fees=Fees(10, 20))
    run.order("m", "sell", 3, 100_000_000)
    run.order("b", "buy", 3, 99_000_000)
    run.amend("b", price=100_000_000)
    assert [(t.maker_fee, t.taker_fee) for t in run.trades] == [(3000, 6000)]


def test_a_sliced_snapshot_keeps_the_accounts_of_orders_cancelled_under_it() -> None:
    """The cut copies a level before its first change, accounts included: an owned order
    cancelled after the cut opened is in the snapshot with its account and mode."""
    run = Run()
    for i in range(6):
        run.order(f"a{i}", "buy", 1, 90 - i, account="alice", stp="decrement")
    whole = run.engine.snapshot()
    writer = run.engine.snapshot_writer()
    part = writer.step(1)  # the first level only
    run.cancel("a5")  # a level not reached yet
    run.cancel("a0")  # a level already encoded
    rest = b""
    while not writer.done:
        rest += writer.step(1)
    assert part + rest == whole
    restored = Engine.restore(whole)
    assert restored.book.owners.account_of("a5") == "alice"
    assert restored.book.owners.mode_of("a5") == "decrement"


def test_cancel_all_reports_the_same_order_after_a_restore() -> None:
    """The order events of a cancel_all are in the book's order, which a snapshot keeps (the
    order in which the orders arrived is not state)."""
    run = Run()
    for oid, side, price in (("a", "buy", 90), ("b", "sell", 120), ("c", "buy", 95)):
        run.order(oid, side, 1, price, account="alice")
    run.order("d", "buy", 1, 90, account="alice")  # behind a at 90
    run.amend("a", price=91)  # a moves: now alone at 91
    restored = Run()
    restored.engine = Engine.restore(run.engine.snapshot())
    for r in (run, restored):
        r.cancel_all("alice")
        assert [e.order_id for e in r.order_events] == ["c", "a", "d", "b"]


# -- the sum of fees over a stream; rule cases the tests above leave out ------------------------


def _fee_by_the_rule(notional: int, ppm: int) -> int:
    """The fee rule restated with divmod: a charge rounds a remainder up; a rebate drops it."""
    whole, remainder = divmod(notional * abs(ppm), 1_000_000)
    return whole + (remainder > 0) if ppm >= 0 else -whole


@pytest.mark.parametrize("rates", [Fees(-100, 250), Fees(0, 1), Fees(7, 0), Fees(-999, 999)])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_sum_of_fees_over_a_stream_equals_an_independent_computation(
    rates: Fees, seed: int
) -> None:
    """The engine's fees summed over every trade of a stream with accounts (prevention,
    cancel_all, rebates) equal the rule computed per trade of the reference model's trades
    (tests/unit/reference.py, which shares no code with the engine)."""
    import msgspec

    from shard.decode import decode_json
    from shard.messages import CancelAll as Mass
    from shard.workload import standard_mix

    from .reference import ReferenceBook

    engine = Engine(fees=rates, stp_default="decrement")
    reference = ReferenceBook(rates, "decrement")
    got: list[Trade] = []
    want: list[Trade] = []
    reasons: set[str | None] = set()
    for n, m in enumerate(standard_mix(2_000, seed, accounts=3)):
        msg = decode_json(msgspec.json.encode(m))
        if n % 97 == 96:
            msg = Mass(f"acct{n % 3}", None, m["timestamp"])
        engine.apply(msg, f"1-{n}", got)
        reasons |= {e.reason for e in engine.order_events}
        engine.order_events.clear()
        reference.apply(msg, f"1-{n}", want)
    assert len(got) == len(want) > 100
    assert reasons == {STP, "cancel_all"}
    notionals = [t.price * t.quantity for t in want]
    assert sum(t.maker_fee + t.taker_fee for t in got) == sum(  # type: ignore[operator]
        _fee_by_the_rule(x, rates.maker_ppm) + _fee_by_the_rule(x, rates.taker_ppm)
        for x in notionals
    )
    # Per trade, not on the total: rounding each trade up costs the taker at most 1 more each.
    exact = sum(notionals) * rates.taker_ppm
    assert 0 <= sum(t.taker_fee for t in got) * 1_000_000 - exact < len(got) * 1_000_000  # type: ignore[misc]
    assert got == want  # the same trades, so the sums above are over the same stream
    assert any(t.maker_account for t in got) and any(t.taker_account for t in got)


def test_prevention_follows_the_takers_mode_not_the_makers(run: Run) -> None:
    """The mode is the incoming order's (or the pair's): the resting order's own does not apply."""
    run.order("a1", "sell", 2, 100, account="alice", stp="none")
    event = run.order("t1", "buy", 2, 100, account="alice")  # the pair's cancel_taker
    assert (event.status, event.reason, run.trades) == ("cancelled", STP, [])
    run.order("a2", "sell", 2, 101, account="bob", stp="cancel_maker")
    run.order("t2", "buy", 1, 101, account="bob", stp="none")
    assert run.fills() == [("t2", "a1", 1)]  # a1 at 100 came first, and alice is not bob
    run.order("t3", "buy", 3, 101, account="alice", stp="none")
    assert run.fills()[1:] == [("t3", "a1", 1), ("t3", "a2", 2)]


def test_cancel_taker_after_other_accounts_at_the_same_level(run: Run) -> None:
    run.order("o1", "sell", 2, 100, account="carol")
    run.order("o2", "sell", 1, 100)
    run.order("a1", "sell", 4, 100, account="alice")
    run.order("o3", "sell", 5, 100, account="bob")
    event = run.order("t", "buy", 6, 100, account="alice")
    assert run.fills() == [("t", "o1", 2), ("t", "o2", 1)]
    assert (event.status, event.filled_quantity, event.remaining_quantity) == ("cancelled", 3, 0)
    assert (event.cancelled_quantity, event.reason) == (3, STP) and balanced(event, 6)
    assert [run.live(o) for o in ("a1", "o3")] == [("sell", 100, 4), ("sell", 100, 5)]
    assert list(run.engine.book.asks.best.orders) == ["a1", "o3"]  # type: ignore[union-attr]


def test_cancel_both_after_a_partial_fill(run: Run) -> None:
    run.order("o1", "sell", 2, 99)
    run.order("a1", "sell", 4, 100, account="alice")
    run.order("o2", "sell", 5, 100)
    event = run.order("t", "buy", 9, 100, account="alice", stp="cancel_both")
    assert run.fills() == [("t", "o1", 2)]
    assert (event.status, event.filled_quantity, event.cancelled_quantity) == ("cancelled", 2, 7)
    assert event.reason == STP and balanced(event, 9) and "t" not in run.engine.book
    assert [(e.order_id, e.status, e.cancelled_quantity) for e in run.order_events] == [
        ("a1", "cancelled", 4)
    ]
    assert run.live("o2") == ("sell", 100, 5)


def test_decrement_of_equal_quantities_ends_both(run: Run) -> None:
    run.order("a1", "sell", 4, 100, account="alice")
    event = run.order("t", "buy", 4, 100, account="alice", stp="decrement")
    assert event == Event("0-2", "t", "cancelled", 0, 0, 4, STP, event.detail, account="alice")
    assert [
        (e.order_id, e.status, e.remaining_quantity, e.cancelled_quantity) for e in run.order_events
    ] == [("a1", "cancelled", 0, 4)]
    assert len(run.engine.book) == 0 and run.trades == []


def test_a_limit_trades_then_is_decremented_then_rests(run: Run) -> None:
    run.order("o1", "sell", 3, 99)
    run.order("a1", "sell", 2, 100, account="alice")
    event = run.order("t", "buy", 10, 100, account="alice", stp="decrement")
    assert event == Event(
        "0-3", "t", "partially_filled", 3, 5, 2, STP, event.detail, account="alice"
    )
    assert run.live("t") == ("buy", 100, 5) and run.engine.book.owners.mode_of("t") == "decrement"


@pytest.mark.parametrize("mode", ["decrement", "cancel_both", "cancel_taker"])
def test_fok_stops_at_its_own_order_under_every_mode_but_cancel_maker_and_none(
    run: Run, mode: str
) -> None:
    run.order("o1", "sell", 2, 100)
    run.order("a1", "sell", 2, 100, account="alice")
    run.order("o2", "sell", 9, 101)
    event = run.order("f1", "buy", 3, 101, "fok", account="alice", stp=mode)
    assert (event.status, event.reason, event.cancelled_quantity) == (
        "cancelled",
        "fok_unfilled",
        3,
    )
    assert run.trades == [] and run.order_events == [] and len(run.engine.book) == 3
    # What it reaches before its own order is liquidity: it fills, the own order untouched.
    assert run.order("f2", "buy", 2, 101, "fok", account="alice", stp=mode).status == "filled"
    assert run.fills() == [("f2", "o1", 2)] and run.live("a1") == ("sell", 100, 2)


@pytest.mark.parametrize(
    ("mode", "fills", "gone"),
    [
        ("cancel_maker", [("m", "o1", 1), ("m", "o2", 3)], ["a1", "a2"]),
        ("decrement", [("m", "o1", 1)], ["a1", "a2"]),  # 2 + 3 taken off, 1 traded
        ("none", [("m", "a1", 2), ("m", "o1", 1), ("m", "a2", 3)], ["a1", "a2"]),
    ],
)
def test_a_market_order_meeting_its_own_orders(
    run: Run, mode: str, fills: list[tuple[str, str, int]], gone: list[str]
) -> None:
    run.order("a1", "sell", 2, 100, account="alice")
    run.order("o1", "sell", 1, 100)
    run.order("a2", "sell", 3, 101, account="alice")
    run.order("o2", "sell", 3, 102)
    event = run.order("m", "buy", 6, None, "market", account="alice", stp=mode)
    assert run.fills() == fills and all(o not in run.engine.book for o in gone)
    assert balanced(event, 6) and event.remaining_quantity == 0
    if mode == "decrement":  # nothing left for o2
        assert (event.filled_quantity, event.cancelled_quantity) == (1, 5)
        assert run.live("o2") == ("sell", 102, 3)


def test_a_pure_size_reduction_keeps_place_account_and_mode(run: Run) -> None:
    run.order("a1", "buy", 5, 100, account="alice", stp="cancel_maker")
    run.order("b1", "buy", 5, 100, account="bob")
    assert run.amend("a1", qty=2, account="alice") == Event(
        "0-3", "a1", "amended", 0, 2, account="alice"
    )
    assert list(run.engine.book.bids.best.orders) == ["a1", "b1"]  # type: ignore[union-attr]
    assert run.engine.book.owners.mode_of("a1") == "cancel_maker"
    run.order("t", "sell", 3, 100, account="bob", stp="cancel_maker")
    assert run.fills() == [("t", "a1", 2)] and [e.order_id for e in run.order_events] == ["b1"]


def test_an_amend_reentry_under_decrement_stays_amended(run: Run) -> None:
    run.order("a1", "sell", 2, 101, account="alice")
    run.order("b1", "buy", 5, 99, account="alice", stp="decrement")
    event = run.amend("b1", price=101, account="alice")
    assert event == Event("0-3", "b1", "amended", 0, 3, 2, STP, event.detail, account="alice")
    assert run.live("b1") == ("buy", 101, 3) and "a1" not in run.engine.book


def test_an_amend_reentry_under_cancel_both(run: Run) -> None:
    run.order("a1", "sell", 2, 101, account="alice")
    run.order("b1", "buy", 5, 99, account="alice", stp="cancel_both")
    event = run.amend("b1", price=101)
    assert (event.status, event.cancelled_quantity, event.reason) == ("cancelled", 5, STP)
    assert event.account is None  # the amend gave none: its event carries none
    assert len(run.engine.book) == 0 and [e.order_id for e in run.order_events] == ["a1"]


def test_a_reentry_takes_the_pair_default_at_the_time_of_the_amend() -> None:
    """An order that gave no stp meets its own orders under the default in force when it is
    amended (a restart may have changed it); one that gave a mode keeps it."""
    run = Run(stp_default="cancel_taker")
    run.order("a1", "sell", 2, 101, account="alice")
    run.order("b1", "buy", 5, 99, account="alice")
    run.order("b2", "buy", 5, 98, account="alice", stp="cancel_taker")
    run.engine = Engine.restore(run.engine.snapshot(), stp_default="cancel_maker")
    run.amend("b2", price=101)  # its own cancel_taker: the rest is cancelled, a1 stays
    assert "b2" not in run.engine.book and run.live("a1") == ("sell", 101, 2)
    event = run.amend("b1", price=101)  # the new default: a1 cancelled, b1 rests
    assert event == Event("0-5", "b1", "amended", 0, 5)
    assert [e.order_id for e in run.order_events] == ["a1"] and run.live("b1") == ("buy", 101, 5)


def test_inputs_events_carry_the_inputs_account(run: Run) -> None:
    run.order("a1", "buy", 5, 100, account="alice")
    assert run.order("a1", "buy", 1, 90, account="bob").account == "bob"  # duplicate
    assert (run.order("p", "sell", 1, 100, "post_only", account="bob").reason) == "would_cross"
    assert run.events[-1].account == "bob"
    assert run.cancel("a1", account="alice") == Event(
        "0-4", "a1", "cancelled", None, 0, 5, account="alice"
    )
    assert run.cancel("zz").account is None


def test_one_rate_zero_still_puts_both_fee_fields() -> None:
    """Only Fees(0, 0) means no fees: with one rate 0, that fee is there and 0."""
    run = Run(fees=Fees(0, 3))
    run.order("m", "sell", 1, 1_000_000)
    run.order("t", "buy", 1, 1_000_000)
    assert (run.trades[0].maker_fee, run.trades[0].taker_fee) == (0, 3)
