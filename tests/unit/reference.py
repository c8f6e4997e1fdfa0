"""A tiny, obviously correct order book: a flat list scanned in full on every message.

It restates the contract's rules in the plainest code, with none of the engine's data
structures, so the property tests can hold the engine to it. O(n) per message by design.
"""

from __future__ import annotations

from dataclasses import dataclass

from shard.messages import Amend, Cancel, Event, Input, Invalid, Order, Trade


@dataclass
class Resting:
    seq: int
    order_id: str
    side: str
    price: int
    quantity: int


class ReferenceBook:
    def __init__(self) -> None:
        self.orders: list[Resting] = []
        self.seq = 0
        self.trade_id = 1

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

    def _take(self, oid, side, price, qty, ts, input_id, trades) -> int:
        for maker in self._queue(side, price):
            if qty == 0:
                break
            q = min(qty, maker.quantity)
            trades.append(
                Trade(self.trade_id, oid, maker.order_id, maker.price, q, ts, side, input_id)
            )
            self.trade_id += 1
            maker.quantity -= q
            qty -= q
        self.orders = [o for o in self.orders if o.quantity > 0]
        return qty

    def _rest(self, oid, side, price, qty) -> None:
        self.seq += 1
        self.orders.append(Resting(self.seq, oid, side, price, qty))

    def apply(self, msg: Input, input_id, trades: list[Trade]) -> Event:
        def rejected(reason: str) -> Event:
            return Event(input_id, msg.order_id, "rejected", reason=reason)

        if isinstance(msg, Invalid):
            return Event(input_id, msg.order_id, "rejected", reason=msg.reason, detail=msg.detail)
        if isinstance(msg, Cancel):
            o = self.find(msg.order_id)
            if o is None:
                return rejected("unknown_order")
            self.orders.remove(o)
            return Event(
                input_id,
                o.order_id,
                "cancelled",
                remaining_quantity=0,
                cancelled_quantity=o.quantity,
            )
        if isinstance(msg, Amend):
            o = self.find(msg.order_id)
            if o is None:
                return rejected("unknown_order")
            price = o.price if msg.price is None else msg.price
            qty = o.quantity if msg.quantity is None else msg.quantity
            if price == o.price and qty <= o.quantity:
                o.quantity = qty
                return Event(input_id, o.order_id, "amended", 0, qty)
            self.orders.remove(o)
            rest = self._take(o.order_id, o.side, price, qty, msg.timestamp, input_id, trades)
            if rest:
                self._rest(o.order_id, o.side, price, rest)
            return Event(input_id, o.order_id, "amended", qty - rest, rest)
        assert isinstance(msg, Order)
        if self.find(msg.order_id):
            return rejected("duplicate_order_id")
        oid, side, price, qty, kind = (
            msg.order_id,
            msg.side,
            msg.price,
            msg.quantity,
            msg.order_type,
        )
        available = sum(o.quantity for o in self._queue(side, price))
        if kind == "post_only":
            if available:
                return rejected("would_cross")
            self._rest(oid, side, price, qty)
            return Event(input_id, oid, "resting", 0, qty)
        if kind == "fok" and available < qty:
            return Event(input_id, oid, "cancelled", 0, 0, qty, "fok_unfilled")
        rest = self._take(oid, side, price, qty, msg.timestamp, input_id, trades)
        if rest == 0:
            return Event(input_id, oid, "filled", qty, 0)
        if kind == "limit":
            self._rest(oid, side, price, rest)
            return Event(
                input_id, oid, "resting" if rest == qty else "partially_filled", qty - rest, rest
            )
        return Event(input_id, oid, "cancelled", qty - rest, 0, rest, "no_liquidity")
