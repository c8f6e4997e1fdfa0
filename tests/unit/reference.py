"""A tiny, obviously correct order book: a flat list scanned in full on every message.

It restates the contract's rules in the plainest code, with none of the engine's data
structures, so the property tests can hold the engine to it: price-time priority, every order
type, cancel and amend, and the accounts of issue 17 (ownership of cancels and amends,
self-trade prevention in its five modes, the fok rule, order events, cancel_all and fees). It
shares no code with ``shard/book.py``, ``shard/owners.py`` or ``shard/fees.py``: only the message
types. O(n) per message by design.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from shard.messages import Amend, Cancel, CancelAll, Event, Input, Invalid, Order, Trade

STP = "self_trade_prevented"


def fee(notional: int, ppm: int) -> int:
    """The rule as written: a charge is ceil(notional x rate / 10^6); a rebate pays
    -floor(notional x |rate| / 10^6). Exact fractions, nothing clever."""
    if ppm >= 0:
        return math.ceil(Fraction(notional * ppm, 1_000_000))
    return -math.floor(Fraction(notional * -ppm, 1_000_000))


@dataclass
class Resting:
    seq: int
    order_id: str
    side: str
    price: int
    quantity: int
    account: str | None = None
    stp: str | None = None
    """The mode the order gave; None: it takes the pair's default whenever it matters."""


class ReferenceBook:
    def __init__(
        self, fees: tuple[int, int] | None = None, stp_default: str = "cancel_taker"
    ) -> None:
        self.orders: list[Resting] = []
        self.seq = 0
        self.trade_id = 1
        self.fees = None if fees is None or tuple(fees) == (0, 0) else tuple(fees)
        self.stp_default = stp_default
        self.order_events: list[Event] = []
        """The order events of the last apply (resting orders removed or reduced without a
        trade), in the order they happened."""

    def find(self, order_id: str) -> Resting | None:
        return next((o for o in self.orders if o.order_id == order_id), None)

    def _queue(self, side: str, price: int | None) -> list[Resting]:
        """Opposite orders a taker on ``side`` at ``price`` may trade with, in priority order."""
        if side == "buy":
            makers = [
                o for o in self.orders if o.side == "sell" and (price is None or o.price <= price)
            ]
            return sorted(makers, key=lambda o: (o.price, o.seq))
        makers = [o for o in self.orders if o.side == "buy" and (price is None or o.price >= price)]
        return sorted(makers, key=lambda o: (-o.price, o.seq))

    def _own(self, maker: Resting, account: str | None, mode: str) -> bool:
        """Whether prevention applies between a taker of ``account`` and ``maker``."""
        return account is not None and maker.account == account and mode != "none"

    def _order_event(self, input_id, maker: Resting, cut: int, reason: str) -> None:
        """Report a resting order that lost ``cut`` without a trade (maker.quantity: left)."""
        left = maker.quantity
        self.order_events.append(
            Event(
                input_id,
                maker.order_id,
                "reduced" if left else "cancelled",
                remaining_quantity=left,
                cancelled_quantity=cut,
                reason=reason,
                account=maker.account,
                resting_order=1,
            )
        )

    def _take(self, oid, side, price, qty, ts, input_id, trades, account, mode):
        """Walk the makers in priority order; return (rest, decremented, stopped)."""
        decremented = 0
        stopped = False
        for maker in self._queue(side, price):
            if qty == 0:
                break
            if self._own(maker, account, mode):
                if mode == "cancel_taker":
                    stopped = True
                    break
                cut = min(maker.quantity, qty) if mode == "decrement" else maker.quantity
                maker.quantity -= cut
                self._order_event(input_id, maker, cut, STP)
                if mode == "decrement":
                    qty -= cut
                    decremented += cut
                if mode == "cancel_both":
                    stopped = True
                    break
                continue
            q = min(qty, maker.quantity)
            trade = Trade(self.trade_id, oid, maker.order_id, maker.price, q, ts, side, input_id)
            trade.maker_account, trade.taker_account = maker.account, account
            if self.fees is not None:
                trade.maker_fee = fee(maker.price * q, self.fees[0])
                trade.taker_fee = fee(maker.price * q, self.fees[1])
            trades.append(trade)
            self.trade_id += 1
            maker.quantity -= q
            qty -= q
        self.orders = [o for o in self.orders if o.quantity > 0]
        return qty, decremented, stopped

    def _fok_can_fill(self, side, price, qty, account, mode) -> bool:
        """The liquidity it could really take: own makers under cancel_maker are skipped, under
        cancel_taker/cancel_both/decrement the walk ends there."""
        for maker in self._queue(side, price):
            if self._own(maker, account, mode):
                if mode == "cancel_maker":
                    continue
                return False
            qty -= maker.quantity
            if qty <= 0:
                return True
        return False

    def _rest(self, oid, side, price, qty, account=None, stp=None) -> None:
        self.seq += 1
        self.orders.append(Resting(self.seq, oid, side, price, qty, account, stp))

    @staticmethod
    def _outcome(input_id, oid, qty, rest, decremented, stopped, rests, amend) -> Event:
        """The taker's event: what it filled, what rests, what was cancelled (decremented +
        the rest that may not rest), and their status and reason."""
        live = rest if rests and not stopped else 0
        filled = qty - rest - decremented
        cancelled = qty - filled - live
        if live:
            status = "amended" if amend else "partially_filled" if filled else "resting"
        elif filled == qty:
            status = "amended" if amend else "filled"
        else:
            status = "cancelled"
        if not cancelled:
            return Event(input_id, oid, status, filled, live)
        reason = STP if stopped or decremented else "no_liquidity"
        return Event(input_id, oid, status, filled, live, cancelled, reason)

    def apply(self, msg: Input, input_id, trades: list[Trade]) -> Event:
        self.order_events = []

        def rejected(reason: str, account: str | None = None) -> Event:
            return Event(input_id, msg.order_id, "rejected", reason=reason, account=account)  # type: ignore[union-attr]

        if isinstance(msg, Invalid):
            return Event(input_id, msg.order_id, "rejected", reason=msg.reason, detail=msg.detail)
        if isinstance(msg, CancelAll):
            mine = [
                o
                for o in self.orders
                if o.account == msg.account and (msg.side is None or o.side == msg.side)
            ]
            total = 0
            # In the book's order: the bids best first, then the asks, each level by arrival.
            for o in sorted(
                mine,
                key=lambda o: (o.side == "sell", -o.price if o.side == "buy" else o.price, o.seq),
            ):
                self.orders.remove(o)
                cut, o.quantity = o.quantity, 0
                self._order_event(input_id, o, cut, "cancel_all")
                total += cut
            return Event(
                input_id,
                None,
                "cancelled",
                cancelled_quantity=total,
                cancelled_orders=len(mine),
                account=msg.account,
            )
        if isinstance(msg, Cancel):
            o = self.find(msg.order_id)
            if o is None or (msg.account is not None and o.account != msg.account):
                return rejected("unknown_order", msg.account)
            self.orders.remove(o)
            return Event(
                input_id,
                o.order_id,
                "cancelled",
                remaining_quantity=0,
                cancelled_quantity=o.quantity,
                account=msg.account,
            )
        if isinstance(msg, Amend):
            o = self.find(msg.order_id)
            if o is None or (msg.account is not None and o.account != msg.account):
                return rejected("unknown_order", msg.account)
            price = o.price if msg.price is None else msg.price
            qty = o.quantity if msg.quantity is None else msg.quantity
            if price == o.price and qty <= o.quantity:
                o.quantity = qty
                return Event(input_id, o.order_id, "amended", 0, qty, account=msg.account)
            self.orders.remove(o)
            mode = o.stp or self.stp_default
            rest, decremented, stopped = self._take(
                o.order_id, o.side, price, qty, msg.timestamp, input_id, trades, o.account, mode
            )
            if rest and not stopped:
                self._rest(o.order_id, o.side, price, rest, o.account, o.stp)
            event = self._outcome(input_id, o.order_id, qty, rest, decremented, stopped, True, True)
            event.account = msg.account
            return event
        assert isinstance(msg, Order)
        oid, side, price, qty, kind = (
            msg.order_id,
            msg.side,
            msg.price,
            msg.quantity,
            msg.order_type,
        )
        account = msg.account
        if self.find(oid):
            return rejected("duplicate_order_id", account)
        mode = msg.stp or self.stp_default
        if kind == "post_only":
            if self._queue(side, price):
                return rejected("would_cross", account)
            self._rest(oid, side, price, qty, account, msg.stp)
            return Event(input_id, oid, "resting", 0, qty, account=account)
        if kind == "fok" and not self._fok_can_fill(side, price, qty, account, mode):
            return Event(input_id, oid, "cancelled", 0, 0, qty, "fok_unfilled", account=account)
        rest, decremented, stopped = self._take(
            oid, side, price, qty, msg.timestamp, input_id, trades, account, mode
        )
        if kind == "limit" and rest and not stopped:
            self._rest(oid, side, price, rest, account, msg.stp)
        event = self._outcome(
            input_id, oid, qty, rest, decremented, stopped, kind == "limit", False
        )
        event.account = account
        return event
