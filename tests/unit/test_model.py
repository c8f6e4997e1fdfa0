"""The engine against the reference model: random order/cancel/amend sequences of every kind,
without accounts (the contract as it was) and with accounts, stp modes, cancel_all and fees."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from shard.engine import Engine
from shard.fees import Fees
from shard.l2 import checksum
from shard.messages import STP_MODES, Amend, Cancel, CancelAll, Event, Order, Trade

from .reference import ReferenceBook, fee

# A narrow price band (0 included) makes crossing, level creation and removal frequent.
prices = st.integers(min_value=0, max_value=6)
quantities = st.one_of(st.integers(min_value=1, max_value=12), st.just(2**63 - 1))
sides = st.sampled_from(["buy", "sell"])
order_types = st.sampled_from(["limit", "limit", "market", "ioc", "fok", "post_only"])

ACCOUNTS = ("alice", "bob", "carol")
accounts = st.sampled_from([None, *ACCOUNTS])
stp_modes = st.sampled_from([None, *STP_MODES])
# Every kind of taker meets its own account's orders often enough: more fok, ioc and market.
owned_order_types = st.sampled_from(
    ["limit", "limit", "limit", "market", "ioc", "fok", "fok", "post_only"]
)
# Mostly small quantities, so that partial fills, decrements that leave a maker reduced and
# takers that rest after prevention are frequent; the int64 edge stays.
owned_quantities = st.one_of(*[st.integers(min_value=1, max_value=12)] * 3, st.just(2**63 - 1))
# Rates in ppm: rebates included (maker + taker >= 0), the 100% edge, and no fees at all.
fee_rates = st.one_of(
    st.none(),
    st.just(Fees(0, 0)),
    st.integers(-1_000, 1_000).flatmap(
        lambda m: st.builds(Fees, st.just(m), st.integers(max(0, -m), 3_000))
    ),
    st.sampled_from([Fees(-1_000_000, 1_000_000), Fees(0, 1), Fees(7, 0), Fees(-1, 1)]),
)
# The terms a restart of the accounts machine may bring.
RESTART_TERMS = [
    (None, "cancel_taker"),
    (Fees(-100, 250), "cancel_maker"),
    (Fees(0, 1), "decrement"),
    (Fees(0, 0), "cancel_both"),
    (Fees(7, 0), "none"),
    (Fees(-1_000_000, 1_000_000), "decrement"),
]
# Price scales: small notionals (rounding of tiny fees), and ones that are not a multiple of 10^6.
price_scales = st.sampled_from([1, 10**8, 123_456_789, 999_999])


def without_detail(event: Event) -> Event:
    """Events are compared without ``detail``, whose wording the reference does not restate."""
    return msgspec.structs.replace(event, detail=None)


class EngineMatchesReference(RuleBasedStateMachine):
    """Orders without accounts on a pair without fees: every input's trades, order events (there
    are none) and event, the book and the L2 view, after every step."""

    def __init__(self) -> None:
        super().__init__()
        self._start(Engine(track_depth=True), ReferenceBook())

    def _start(self, engine: Engine, reference: ReferenceBook) -> None:
        self.engine = engine
        self.reference = reference
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
        assert self.engine.order_events == []
        got = self.engine.apply(msg, input_id, got_trades)
        got_side = list(self.engine.order_events)
        self.engine.order_events.clear()  # the caller's duty after each apply
        want = self.reference.apply(msg, input_id, want_trades)
        assert got_trades == want_trades
        self._check_trades(got_trades)
        assert [without_detail(e) for e in got_side] == [
            without_detail(e) for e in self.reference.order_events
        ]
        self._follow_depth(got_trades)
        assert without_detail(got) == without_detail(want)
        for e in (*got_side, got):
            if e.reason:
                assert e.detail, f"{e.reason} without a detail sentence"
            event(  # what was covered: pytest --hypothesis-show-statistics
                f"{type(msg).__name__} {e.status} {e.reason}"
                + (" (order event)" * bool(e.resting_order))
            )

    def _check_trades(self, trades: list[Trade]) -> None:
        """Without accounts and fees a trade carries neither."""
        for t in trades:
            assert (t.maker_account, t.taker_account, t.maker_fee, t.taker_fee) == (None,) * 4

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

    def _queues(self) -> dict[tuple[str, int], list[str]]:
        """The reference's levels: (side, price) -> its order IDs by arrival."""
        queues: dict[tuple[str, int], list[str]] = {}
        for o in sorted(self.reference.orders, key=lambda o: o.seq):
            queues.setdefault((o.side, o.price), []).append(o.order_id)
        return queues

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
        # Time priority: each level's queue is the reference's orders there, by arrival.
        assert {
            (side.name, level.price): list(level.orders)
            for side in (book.bids, book.asks)
            for level in side
        } == self._queues()
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


class EngineWithAccountsMatchesReference(EngineMatchesReference):
    """The same, with three accounts and orders without one, random ``stp`` (None included),
    the pair's ``stp_default`` and fees, cancels and amends that name an account (the owner's,
    another's or none), and cancel_all with and without a side. Trades are compared with their
    accounts and fees, every order event and event field but the wording, the account index."""

    @initialize(fees=fee_rates, stp_default=st.sampled_from(STP_MODES), scale=price_scales)
    def configure(self, fees: Fees | None, stp_default: str, scale: int) -> None:
        self.scale = scale
        self.rates = fees
        self._start(
            Engine(track_depth=True, fees=fees, stp_default=stp_default),
            ReferenceBook(fees, stp_default),
        )

    def _check_trades(self, trades: list[Trade]) -> None:
        """Each fee is the rule's integer on the trade's notional; no fees, no fee fields."""
        for t in trades:
            if self.rates is None or self.rates == (0, 0):
                assert (t.maker_fee, t.taker_fee) == (None, None)
                continue
            notional = t.price * t.quantity
            assert t.maker_fee == fee(notional, self.rates.maker_ppm)
            assert t.taker_fee == fee(notional, self.rates.taker_ppm)

    # The rules draw few plain values and never data(): draws are most of a step's cost, and
    # a failure shrinks in reasonable time only if steps are cheap. ``pick`` chooses an order
    # ID (even: a live one); ``who`` what account a cancel or amend names, or what else the
    # cancel rule does.
    picks = st.integers(0, 255)
    whos = st.sampled_from(["owner", "owner", "none", "any"])
    cancel_whos = st.sampled_from(["owner", "owner", "none", "any", "cancel_all", "restart"])

    def _target(self, pick: int) -> str:
        live = [o.order_id for o in self.reference.orders]
        pool = live if live and pick % 2 == 0 else [*self.ids, "nope"]
        return pool[pick // 2 % len(pool)]

    def _account_for(self, oid: str, who: str, other: str | None) -> str | None:
        """The account a cancel or amend of ``oid`` names: its owner's, none, or ``other``."""
        if who == "owner":
            live = self.reference.find(oid)
            return None if live is None else live.account
        return None if who == "none" else other

    @rule(
        side=sides,
        kind=owned_order_types,
        price=prices,
        qty=owned_quantities,
        ts=st.integers(0, 10**13),
        account=accounts,
        stp=stp_modes,
    )
    def order(self, side, kind, price, qty, ts, account, stp) -> None:  # type: ignore[override]
        price = None if kind == "market" else price * self.scale
        stp = None if account is None else stp  # the decoder rejects stp without account
        self._apply(Order(self._new_id(), side, qty, price, kind, ts, account, stp))

    # No preconditions here: a machine with few rules enabled at the start gives up too often.
    @rule(
        pick=picks, side=sides, price=prices, qty=owned_quantities, account=accounts, stp=stp_modes
    )
    def reuse_id(self, pick, side, price, qty, account, stp) -> None:  # type: ignore[override]
        stp = None if account is None else stp
        order = Order(self._target(pick), side, qty, price * self.scale, "limit", 7, account, stp)
        self._apply(order)

    @rule(pick=picks, who=cancel_whos, other=accounts)
    def cancel(self, pick, who, other) -> None:  # type: ignore[override]
        """A cancel; or a cancel_all (a rule of its own would empty the accounts' orders too
        often for them to meet); or a restart."""
        if who == "cancel_all":
            side = (None, "buy", "sell")[pick // 3 % 3]
            self._apply(CancelAll(ACCOUNTS[pick % 3], side, 10))
        elif who == "restart":
            self._restart(*RESTART_TERMS[pick % len(RESTART_TERMS)])
        else:
            oid = self._target(pick)
            self._apply(Cancel(oid, 8, self._account_for(oid, who, other)))

    def _restart(self, fees: Fees | None, stp_default: str) -> None:
        """The engine restored from its snapshot under new terms, which apply from the next
        input on (to amends of orders resting already too), as they then do in the reference."""
        if not self._encodable():
            return
        snapshot = self.engine.snapshot()
        self.engine = Engine.restore(snapshot, True, fees, stp_default)
        assert self.engine.take_depth() is None  # the levels it restores are not changes
        assert self.engine.snapshot() == snapshot
        self.rates = fees
        self.reference.fees = None if fees is None or fees == (0, 0) else tuple(fees)
        self.reference.stp_default = stp_default

    def _encodable(self) -> bool:
        """Whether the snapshot's totals fit msgpack's integers (test_snapshot.py has the xfail
        test of totals that do not)."""
        book = self.engine.book
        last = book.last_trade
        fees = () if last is None else (last.maker_fee or 0, last.taker_fee or 0)
        return all(-(2**63) <= x < 2**64 for x in (book.volume, book.notional, *fees))

    @rule(
        pick=picks,
        who=whos,
        other=accounts,
        qty=st.none() | owned_quantities,
        price=st.none() | prices,
        through=st.booleans(),
    )
    def amend(self, pick, who, other, qty, price, through) -> None:  # type: ignore[override]
        """An amend; with ``through``, priced at the far end of the other side, so that its
        re-entry meets whatever rests there, its own account's orders included."""
        if qty is None and price is None:
            qty = 1
        oid = self._target(pick)
        price = None if price is None else price * self.scale
        live = self.reference.find(oid)
        if live is not None and through:
            other_side = [o.price for o in self.reference.orders if o.side != live.side]
            if other_side:
                price = max(other_side) if live.side == "buy" else min(other_side)
        self._apply(Amend(oid, qty, price, 9, self._account_for(oid, who, other)))

    @invariant()
    def book_is_sound(self) -> None:
        super().book_is_sound()
        owners = self.engine.book.owners
        mine = [o for o in self.reference.orders if o.account]
        assert {o: owners.account_of(o) for o in owners.of} == {o.order_id: o.account for o in mine}
        assert {o: owners.mode_of(o) for o in owners.of} == {o.order_id: o.stp for o in mine}
        # The index lists each level's orders of an account in time order (cancel_all relies
        # on it); across levels its order is not state (a restore lists them level by level).
        for account in ACCOUNTS:
            listed = owners.orders_of(account)
            for queue in self._queues().values():
                at_level = set(queue)
                assert [o for o in listed if o in at_level] == [
                    o for o in queue if owners.account_of(o) == account
                ]


EngineWithAccountsMatchesReference.TestCase.settings = settings(
    max_examples=800,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# A passing run takes well under the suite's 120 s per test; a failing one shrinks its long
# programs for up to Hypothesis's own 5 minutes, and must not be killed before it reports.
TestEngineWithAccountsMatchesReference = pytest.mark.timeout(420)(
    EngineWithAccountsMatchesReference.TestCase
)
