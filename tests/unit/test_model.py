"""The engine against the reference model: random order/cancel/amend sequences of every kind."""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shard.engine import Engine
from shard.l2 import checksum
from shard.messages import Amend, Cancel, Event, Order, Trade

from .reference import ReferenceBook

# A narrow price band (0 included) makes crossing, level creation and removal frequent.
prices = st.integers(min_value=0, max_value=6)
quantities = st.one_of(st.integers(min_value=1, max_value=12), st.just(2**63 - 1))
sides = st.sampled_from(["buy", "sell"])
order_types = st.sampled_from(["limit", "limit", "market", "ioc", "fok", "post_only"])


def without_detail(event: Event) -> Event:
    """Events are compared without ``detail``, whose wording the reference does not restate."""
    return msgspec.structs.replace(event, detail=None)


class EngineMatchesReference(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(track_depth=True)
        self.reference = ReferenceBook()
        self.ids: list[str] = []
        self.n = 0
        # The L2 book a market-data client holds: built only from take_depth() after each input.
        self.l2: dict[tuple[str, int], tuple[int, int]] = {}
        self.volume = self.notional = 0

    def _apply(self, msg) -> None:
        self.n += 1
        input_id = f"1-{self.n}"
        got_trades: list[Trade] = []
        want_trades: list[Trade] = []
        got = self.engine.apply(msg, input_id, got_trades)
        want = self.reference.apply(msg, input_id, want_trades)
        assert got_trades == want_trades
        self._follow_depth(got_trades)
        assert without_detail(got) == without_detail(want)
        if got.reason:
            assert got.detail, f"{got.reason} without a detail sentence"

    def _follow_depth(self, trades: list[Trade]) -> None:
        """Apply this input's depth changes to the client's L2 book, as the contract says."""
        depth = self.engine.take_depth()
        if depth is not None:
            assert depth.bids or depth.asks, "a depth entry changes at least one level"
            for side, levels in (("buy", depth.bids), ("sell", depth.asks)):
                prices = [price for price, _, _ in levels]
                assert prices == sorted(prices, reverse=side == "buy"), "best first"
                assert len(set(prices)) == len(prices), "each level once: conflated"
                for price, qty, orders in levels:
                    if qty == 0:
                        assert orders == 0 and (side, price) in self.l2
                        del self.l2[(side, price)]
                    else:
                        self.l2[(side, price)] = (qty, orders)
            bids, asks = self._l2_sides()
            assert depth.best_bid == (bids[0] if bids else None)
            assert depth.best_ask == (asks[0] if asks else None)
            assert depth.checksum == checksum(bids, asks)
        for t in trades:
            self.volume += t.quantity
            self.notional += t.price * t.quantity
        ticker = self.engine.ticker()
        assert (ticker.volume, ticker.notional) == (self.volume, self.notional)
        if trades:
            assert ticker.last_trade == trades[-1]

    def _l2_sides(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        bids = sorted(((p, q, n) for (s, p), (q, n) in self.l2.items() if s == "buy"), reverse=True)
        asks = sorted((p, q, n) for (s, p), (q, n) in self.l2.items() if s == "sell")
        return bids, asks

    def _new_id(self) -> str:
        oid = f"o{len(self.ids)}"
        self.ids.append(oid)
        return oid

    @rule(side=sides, kind=order_types, price=prices, qty=quantities, ts=st.integers(0, 10**13))
    def order(self, side, kind, price, qty, ts) -> None:
        self._apply(Order(self._new_id(), side, qty, None if kind == "market" else price, kind, ts))

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), side=sides, price=prices, qty=quantities)
    def reuse_id(self, data, side, price, qty) -> None:
        """A live ID is a duplicate; a finished one may be used again."""
        oid = data.draw(st.sampled_from(self.ids))
        self._apply(Order(oid, side, qty, price, "limit", 7))

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def cancel(self, data) -> None:
        self._apply(Cancel(data.draw(st.sampled_from([*self.ids, "nope"])), 8))

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), qty=st.none() | quantities, price=st.none() | prices)
    def amend(self, data, qty, price) -> None:
        if qty is None and price is None:
            qty = 1
        self._apply(Amend(data.draw(st.sampled_from(self.ids)), qty, price, 9))

    @invariant()
    def book_is_sound(self) -> None:
        self.engine.book.check()
        book = self.engine.book
        want = {o.order_id: (o.side, o.price, o.quantity) for o in self.reference.orders}
        assert {oid: book.get(oid) for oid in want} == want
        assert len(book) == len(want)
        # The client's L2 book, from depth changes only, is the reference book aggregated.
        levels: dict[tuple[str, int], tuple[int, int]] = {}
        for o in self.reference.orders:
            qty, n = levels.get((o.side, o.price), (0, 0))
            levels[(o.side, o.price)] = (qty + o.quantity, n + 1)
        assert self.l2 == levels


EngineMatchesReference.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineMatchesReference = EngineMatchesReference.TestCase
