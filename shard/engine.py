"""The matching engine: applies decoded inputs to the book and says what happened.

For each input, :meth:`Engine.apply` appends the input's trades to a list the caller owns and
returns exactly one :class:`~shard.messages.Event`. The engine is pure: no I/O, no clock, no
randomness. The same inputs give the same outputs byte for byte, which is what recovery and
``shard replay`` stand on.

Order types
-----------
=============== ===========================================================================
``limit``       trades while it crosses; the rest rests.   -> resting / partially_filled / filled
``market``      no price; trades against whatever is there; the rest is cancelled.
``ioc``         like limit, but the rest is cancelled.     -> filled / cancelled (no_liquidity)
``fok``         trades in full at its price or better, or not at all.  -> filled / cancelled
                (fok_unfilled)
``post_only``   rests; rejected (would_cross) if it would trade at all.
=============== ===========================================================================

* ``cancel`` removes a live order (``cancelled``, ``cancelled_quantity`` = what was open). An
  unknown or finished order: ``rejected``/``unknown_order``.
* ``amend`` sets the order's *remaining* quantity and/or its price. A pure size reduction (same
  price, smaller quantity) keeps the order's place; the same price and quantity changes nothing.
  Any other change takes the order out and re-enters it as a new ``limit`` order at the back of
  its new level, where it may trade as a taker with the amend's timestamp. The event is
  ``amended`` with what re-entry filled and what rests now (0 if the re-entry filled in full).
* A new order whose ``order_id`` is live is ``rejected``/``duplicate_order_id``; an ID may be
  used again once its order has left the book. Rejections change nothing.

Cost: the book's (O(1) per order and fill, O(log L) per level created or removed) plus O(1)
per input here.
"""

from __future__ import annotations

import hashlib
from typing import Final, NamedTuple

import msgspec

from shard.book import LevelView, OrderBook
from shard.l2 import CHECKSUM_LEVELS, checksum
from shard.messages import (
    AMENDED,
    CANCELLED,
    FILLED,
    PARTIALLY_FILLED,
    REJECTED,
    RESTING,
    Amend,
    Cancel,
    Event,
    Input,
    Invalid,
    Order,
    Trade,
    show,
)
from shard.state import EngineState, SnapshotWriter, book_state, encode_state, load_state

DUPLICATE_ORDER_ID: Final = "duplicate_order_id"
UNKNOWN_ORDER: Final = "unknown_order"
WOULD_CROSS: Final = "would_cross"
FOK_UNFILLED: Final = "fok_unfilled"
NO_LIQUIDITY: Final = "no_liquidity"

DIGEST_SCHEME: Final = "d2:"
"""Prefix of :meth:`Engine.digest`; digests stored under another scheme are not compared."""

_digest_encoder = msgspec.msgpack.Encoder()


class Depth(NamedTuple):
    """A batch's market data: the levels that changed, best first, as ``(price, quantity,
    orders)`` (0, 0 when gone), the best level of each side after it (None when empty), and the
    contract's checksum of the 10 best levels of each side."""

    bids: list[LevelView]
    asks: list[LevelView]
    best_bid: LevelView | None
    best_ask: LevelView | None
    checksum: int


class Ticker(NamedTuple):
    """Trade totals: how many, the sum of quantities, the sum of price x quantity, the last."""

    trade_count: int
    volume: int
    notional: int
    last_trade: Trade | None


class Engine:
    """One pair's matching engine: a book plus the message semantics of the contract."""

    __slots__ = ("book",)

    def __init__(self, track_depth: bool = False) -> None:
        """``track_depth``: record which levels change, for :meth:`take_depth` (the daemon);
        without it the book records nothing and costs nothing more."""
        self.book = OrderBook(track_depth)

    def apply(self, msg: Input, input_id: str | None, trades: list[Trade]) -> Event:
        """Apply one input: append its trades to ``trades`` and return its one event."""
        # Exact types, most common first: cheaper than a class match (docs/benchmarks.md).
        if type(msg) is Order:
            return self._order(msg, input_id, trades)
        if type(msg) is Cancel:
            return self._cancel(msg, input_id)
        if type(msg) is Amend:
            return self._amend(msg, input_id, trades)
        if type(msg) is Invalid:
            return Event(input_id, msg.order_id, REJECTED, None, None, None, msg.reason, msg.detail)
        raise TypeError(f"not an input message: {msg!r}")  # a bug in the caller, not bad input

    def _order(self, msg: Order, input_id: str | None, trades: list[Trade]) -> Event:
        book = self.book
        order_id = msg.order_id
        if order_id in book:
            return Event(
                input_id,
                order_id,
                REJECTED,
                None,
                None,
                None,
                DUPLICATE_ORDER_ID,
                f"order_id {show(order_id)} is already live in the book",
            )
        side = msg.side
        price = msg.price
        quantity = msg.quantity
        order_type = msg.order_type
        if order_type == "limit":
            rest = book.take(order_id, side, price, quantity, msg.timestamp, input_id, trades)
            if not rest:
                return Event(input_id, order_id, FILLED, quantity, 0)
            book.add(order_id, side, price, rest)  # type: ignore[arg-type]
            status = RESTING if rest == quantity else PARTIALLY_FILLED
            return Event(input_id, order_id, status, quantity - rest, rest)
        if order_type == "post_only":
            if book.crosses(side, price):  # type: ignore[arg-type]
                best = book.best_ask() if side == "buy" else book.best_bid()
                return Event(
                    input_id,
                    order_id,
                    REJECTED,
                    None,
                    None,
                    None,
                    WOULD_CROSS,
                    f"post_only {side} at price {price} would trade against the best "
                    f"{'ask' if side == 'buy' else 'bid'} at {best}",
                )
            book.add(order_id, side, price, quantity)  # type: ignore[arg-type]
            return Event(input_id, order_id, RESTING, 0, quantity)
        if order_type == "fok" and not book.can_fill(side, price, quantity):
            return Event(
                input_id,
                order_id,
                CANCELLED,
                0,
                0,
                quantity,
                FOK_UNFILLED,
                f"fok {side} of quantity {quantity} at price {price} cannot fill in "
                "full; nothing traded",
            )
        rest = book.take(order_id, side, price, quantity, msg.timestamp, input_id, trades)
        if not rest:
            return Event(input_id, order_id, FILLED, quantity, 0)
        limit = "" if price is None else f" at price {price} or better"
        return Event(
            input_id,
            order_id,
            CANCELLED,
            quantity - rest,
            0,
            rest,
            NO_LIQUIDITY,
            f"{order_type} {side}: no more liquidity{limit}; quantity {rest} of "
            f"{quantity} cancelled",
        )

    def _cancel(self, msg: Cancel, input_id: str | None) -> Event:
        removed = self.book.cancel(msg.order_id)
        if removed is None:
            return _unknown(msg.order_id, input_id)
        return Event(input_id, msg.order_id, CANCELLED, None, 0, removed)

    def _amend(self, msg: Amend, input_id: str | None, trades: list[Trade]) -> Event:
        book = self.book
        order_id = msg.order_id
        live = book.get(order_id)
        if live is None:
            return _unknown(order_id, input_id)
        side, price, remaining = live
        new_price = price if msg.price is None else msg.price
        new_quantity = remaining if msg.quantity is None else msg.quantity
        if new_price == price and new_quantity <= remaining:
            if new_quantity < remaining:
                book.reduce(order_id, new_quantity)
            return Event(input_id, order_id, AMENDED, 0, new_quantity)
        book.cancel(order_id)
        rest = book.take(order_id, side, new_price, new_quantity, msg.timestamp, input_id, trades)
        if rest:
            book.add(order_id, side, new_price, rest)
        return Event(input_id, order_id, AMENDED, new_quantity - rest, rest)

    # -- state -----------------------------------------------------------------------------------

    def state(self) -> EngineState:
        """The engine's whole state as plain data. O(orders)."""
        return book_state(self.book)

    def snapshot(self) -> bytes:
        """The engine's whole state as msgpack bytes; :meth:`restore` continues from it."""
        return encode_state(self.book)

    def snapshot_writer(self) -> SnapshotWriter:
        """A :class:`~shard.state.SnapshotWriter` of the state now, for encoding in slices."""
        return SnapshotWriter(self.book)

    @classmethod
    def restore(cls, data: bytes, track_depth: bool = False) -> Engine:
        """An engine that continues exactly like the one :meth:`snapshot` was taken from; the
        levels it restores are not changes."""
        engine = cls(track_depth)
        load_state(engine.book, data)
        return engine

    # -- market data -----------------------------------------------------------------------------

    def take_depth(self) -> Depth | None:
        """The market data of what changed since the last call (a batch): the changed levels,
        conflated, with their final values, the best levels and the top-10 checksum; None if no
        level changed. O(c log c) for c levels changed, plus O(1) for the checksum."""
        bids, asks = self.book.take_changes()
        if not bids and not asks:
            return None
        book = self.book
        top_bids = book.top("buy", CHECKSUM_LEVELS)
        top_asks = book.top("sell", CHECKSUM_LEVELS)
        return Depth(
            bids,
            asks,
            top_bids[0] if top_bids else None,
            top_asks[0] if top_asks else None,
            checksum(top_bids, top_asks),
        )

    def ticker(self) -> Ticker:
        """The trade totals so far and the last trade. O(1)."""
        book = self.book
        return Ticker(book.next_trade_id - 1, book.volume, book.notional, book.last_trade)

    def digest(self) -> str:
        """A short fingerprint of the state, O(1), computed after every batch: the next trade
        ID, the number of live orders and, per side, the number of levels, the resting quantity
        and the best level's price, total and order count. Prefixed with its scheme
        (:data:`DIGEST_SCHEME`), so a digest of another scheme is recognised, not compared."""
        book = self.book
        shape = [book.next_trade_id, len(book)]
        for side in (book.bids, book.asks):
            best = side.best
            shape += (len(side.levels), side.quantity)
            shape += (best.price, best.total, len(best.orders)) if best else (0, 0, 0)
        return (
            DIGEST_SCHEME
            + hashlib.blake2b(_digest_encoder.encode(shape), digest_size=16).hexdigest()
        )


def _unknown(order_id: str, input_id: str | None) -> Event:
    return Event(
        input_id,
        order_id,
        REJECTED,
        None,
        None,
        None,
        UNKNOWN_ORDER,
        f"order_id {show(order_id)} is not live (never seen, filled or cancelled)",
    )
