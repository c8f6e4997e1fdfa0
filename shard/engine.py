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

from shard.book import NO_LIMIT, BookSide, Level, LevelView, OrderBook
from shard.fees import Fees
from shard.l2 import CHECKSUM_LEVELS, checksum_of
from shard.messages import (
    AMENDED,
    CANCELLED,
    FILLED,
    PARTIALLY_FILLED,
    REDUCED,
    REJECTED,
    RESTING,
    Amend,
    Cancel,
    CancelAll,
    Event,
    Input,
    Invalid,
    Order,
    Trade,
    show,
)
from shard.owners import Account
from shard.state import SnapshotWriter, encode_state, load_state
from shard.terms import STP_DEFAULT, Terms

DUPLICATE_ORDER_ID: Final = "duplicate_order_id"
UNKNOWN_ORDER: Final = "unknown_order"
WOULD_CROSS: Final = "would_cross"
FOK_UNFILLED: Final = "fok_unfilled"
NO_LIQUIDITY: Final = "no_liquidity"
SELF_TRADE_PREVENTED: Final = "self_trade_prevented"
CANCEL_ALL: Final = "cancel_all"

_NOT_PREVENTED: Final[list[tuple[str, int, int, str]]] = []
"""The ``removed`` list of a taker without account: prevention never applies to it, so
:meth:`~shard.book.OrderBook.take_owned` never appends to it."""

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

    __slots__ = (
        "_fees",
        "_live",
        "_of",
        "_top",
        "_top_nth",
        "_top_texts",
        "book",
        "order_events",
        "stp_default",
        "terms",
    )

    def __init__(
        self,
        track_depth: bool = False,
        fees: Fees | None = None,
        stp_default: str = STP_DEFAULT,
    ) -> None:
        """``track_depth``: record which levels change, for :meth:`take_depth` (the daemon);
        without it the book records nothing and costs nothing more. ``fees``: the pair's
        rates; ``stp_default``: the self-trade prevention mode of an order that gives none."""
        self.book = OrderBook(track_depth, fees)
        self._live = self.book.index
        self._of = self.book.owners.of
        self._fees = self.book.fees
        self.stp_default = stp_default
        self.terms = Terms(stp_default, *(fees or Fees()))
        """The trading terms this engine applies."""
        self._top_texts: list[str | None] = [None, None]
        """Each side's checksummed text as :meth:`take_depth` last made it (None: not known
        for the book as it stands), and the key of its 10th level then (NO_LIMIT: fewer)."""
        self._top_nth = [NO_LIMIT, NO_LIMIT]
        self._top: list[tuple[int, list[Level]]] = [(-1, []), (-1, [])]
        """Each side's 10 best levels when the text was made, with its ``reshaped`` count
        then: while no level is made or dropped, a change in the 10 best levels changes
        their texts, not which levels they are."""
        self.order_events: list[Event] = []
        """The order events of the last :meth:`apply` (resting orders it removed or reduced
        without a trade), in the order it made them; they precede its own event in the output.
        Whoever applies inputs takes them (and clears the list) after each one."""

    def adopt(self, terms: Terms) -> None:
        """Apply ``terms`` from the next input on (a start whose configuration changed them)."""
        self.book.fees = self._fees = terms.fees
        self.stp_default = terms.stp_default
        self.terms = terms

    def apply(self, msg: Input, input_id: str | None, trades: list[Trade]) -> Event:
        """Apply one input: append its trades to ``trades``, its order events to
        :attr:`order_events`, and return its own event."""
        # Exact types, most common first: cheaper than a class match (docs/benchmarks.md).
        if type(msg) is Order:
            if msg.account is None:
                return self._order(msg, input_id, trades)
            return self._owned_order(msg, input_id, trades)
        if type(msg) is Cancel:
            return self._cancel(msg, input_id)
        if type(msg) is Amend:
            return self._amend(msg, input_id, trades)
        if type(msg) is CancelAll:
            return self._cancel_all(msg, input_id)
        if type(msg) is Invalid:
            return Event(
                input_id, msg.order_id, REJECTED, None, None, None, msg.reason, msg.detail, None,
                msg.account,
            )  # fmt: skip
        raise TypeError(f"not an input message: {msg!r}")  # a bug in the caller, not bad input

    def _order(self, msg: Order, input_id: str | None, trades: list[Trade]) -> Event:
        """An order without an account: it never meets itself, so only the makers' accounts
        and the fees, when in play, take it off the plain :meth:`~shard.book.OrderBook.take`."""
        book = self.book
        order_id = msg.order_id
        if order_id in self._live:
            return _duplicate(input_id, order_id)
        side = msg.side
        price = msg.price
        quantity = msg.quantity
        order_type = msg.order_type
        if order_type == "limit" or order_type == "post_only":
            if not book.crosses(side, price):  # type: ignore[arg-type]
                book.add(order_id, side, price, quantity)  # type: ignore[arg-type]
                return Event(input_id, order_id, RESTING, 0, quantity)
            if order_type == "post_only":
                return self._would_cross(msg, input_id)
        elif order_type == "fok" and not book.can_fill(side, price, quantity):
            return _fok_unfilled(msg, input_id)
        if self._fees is None:  # naming the makers' accounts if any has one
            rest = book.take(
                order_id, side, price, quantity, msg.timestamp, input_id, trades, self._of or None
            )
        else:
            rest = book.take_owned(
                order_id, side, price, quantity, msg.timestamp, input_id, trades, None, "none",
                _NOT_PREVENTED,
            )[0]  # fmt: skip
        if not rest:
            return Event(input_id, order_id, FILLED, quantity, 0)
        if order_type != "limit":
            return _no_liquidity(msg, input_id, rest)
        book.add(order_id, side, price, rest)  # type: ignore[arg-type]
        return Event(input_id, order_id, PARTIALLY_FILLED, quantity - rest, rest)

    def _owned_order(self, msg: Order, input_id: str | None, trades: list[Trade]) -> Event:
        """An order with an account: :meth:`_order`'s rules, plus the account on its trades and
        event, and self-trade prevention against its own account's resting orders."""
        book = self.book
        order_id = msg.order_id
        account = msg.account
        event: Event
        if order_id in self._live:
            event = _duplicate(input_id, order_id)
            event.account = account
            return event
        side = msg.side
        price = msg.price
        quantity = msg.quantity
        order_type = msg.order_type
        if order_type == "limit" or order_type == "post_only":
            if not book.crosses(side, price):  # type: ignore[arg-type]
                book.add(order_id, side, price, quantity, account, msg.stp)  # type: ignore[arg-type]
                return Event(
                    input_id, order_id, RESTING, 0, quantity, None, None, None, None, account
                )
            if order_type == "post_only":
                event = self._would_cross(msg, input_id)
                event.account = account
                return event
        mode = msg.stp or self.stp_default
        if order_type == "fok" and not book.can_fill_owned(side, price, quantity, account, mode):  # type: ignore[arg-type]
            event = _fok_unfilled(msg, input_id)
            event.account = account
            return event
        removed: list[tuple[str, int, int, str]] = []
        rest, decremented, stopped = book.take_owned(
            order_id, side, price, quantity, msg.timestamp, input_id, trades, account, mode,
            removed,
        )  # fmt: skip
        if removed:
            self._prevented(removed, input_id, order_id, mode)
        if order_type == "limit" and rest and not stopped:
            book.add(order_id, side, price, rest, account, msg.stp)  # type: ignore[arg-type]
        # _outcome's answer without the call, in the common cases: nothing decremented,
        # and the rest resting or none left.
        if not decremented and (not rest or (order_type == "limit" and not stopped)):
            filled = quantity - rest
            status = FILLED if not rest else PARTIALLY_FILLED if filled else RESTING
            return Event(input_id, order_id, status, filled, rest, None, None, None, None, account)
        event = self._outcome(msg, input_id, quantity, rest, decremented, stopped, mode)
        event.account = account
        return event

    def _outcome(
        self,
        msg: Order | Amend,
        input_id: str | None,
        quantity: int,
        rest: int,
        decremented: int,
        stopped: bool,
        mode: str,
    ) -> Event:
        """The event of an order (or an amend's re-entry) of ``quantity`` that
        :meth:`~shard.book.OrderBook.take_owned` left with ``rest``, after prevention took
        ``decremented`` off it or ``stopped`` it; a limit's or re-entry's rest rests unless
        stopped. Always filled + remaining + cancelled = quantity."""
        order_id = msg.order_id
        amend = type(msg) is Amend
        live = rest if (amend or msg.order_type == "limit") and not stopped else 0  # type: ignore[union-attr]
        filled = quantity - rest - decremented
        cancelled = rest - live + decremented
        if live:
            status = AMENDED if amend else PARTIALLY_FILLED if filled else RESTING
        else:
            status = AMENDED if amend else FILLED
        if not cancelled:
            return Event(input_id, order_id, status, filled, live)
        if not stopped and not decremented:
            return _no_liquidity(msg, input_id, rest)  # type: ignore[arg-type]
        if stopped:
            detail = f"it would trade with a resting order of its own account; {rest} cancelled"
        else:
            detail = f"{decremented} taken off against its own account's orders, no trade"
            if rest > live:
                detail += f"; no more liquidity for {rest}, cancelled"
        what = "amended order" if amend else f"{msg.order_type} {msg.side}"  # type: ignore[union-attr]
        return Event(
            input_id,
            order_id,
            status if live else CANCELLED,
            filled,
            live,
            cancelled,
            SELF_TRADE_PREVENTED,
            f"self-trade prevention ({mode}), {what} of quantity {quantity}: {detail}",
        )

    def _prevented(
        self, removed: list[tuple[str, int, int, str]], input_id: str | None, taker: str, mode: str
    ) -> None:
        """The order events of the resting orders prevention took off or reduced."""
        add = self.order_events.append
        for maker, cut, left, owner in removed:
            add(
                Event(
                    input_id,
                    maker,
                    REDUCED if left else CANCELLED,
                    None,
                    left,
                    cut,
                    SELF_TRADE_PREVENTED,
                    f"self-trade prevention ({mode}): order {show(taker)} of the same account "
                    f"met it; quantity {cut} taken off, {left} left",
                    None,
                    owner,
                    1,
                )
            )

    def _would_cross(self, msg: Order, input_id: str | None) -> Event:
        side = msg.side
        best = self.book.best_ask() if side == "buy" else self.book.best_bid()
        return Event(
            input_id,
            msg.order_id,
            REJECTED,
            None,
            None,
            None,
            WOULD_CROSS,
            f"post_only {side} at price {msg.price} would trade against the best "
            f"{'ask' if side == 'buy' else 'bid'} at {best}",
        )

    def _cancel(self, msg: Cancel, input_id: str | None) -> Event:
        account = msg.account
        order_id = msg.order_id
        if account is None:
            removed = self.book.cancel(order_id)
            if removed is None:
                return _unknown(order_id, input_id)
            return Event(input_id, order_id, CANCELLED, None, 0, removed)
        owner = self._of.get(order_id)
        if owner is None or owner.name != account:
            return _unknown(order_id, input_id, account)
        removed = self.book.cancel(order_id)
        return Event(input_id, order_id, CANCELLED, None, 0, removed, None, None, None, account)

    def _amend(self, msg: Amend, input_id: str | None, trades: list[Trade]) -> Event:
        book = self.book
        order_id = msg.order_id
        live = book.get(order_id)
        account = msg.account
        if live is None:
            return _unknown(order_id, input_id, account)
        owner = self._of.get(order_id) if self._of else None
        if account is not None and (owner is None or owner.name != account):
            return _unknown(order_id, input_id, account)
        side, price, remaining = live
        new_price = price if msg.price is None else msg.price
        new_quantity = remaining if msg.quantity is None else msg.quantity
        if new_price == price and new_quantity <= remaining:
            if new_quantity < remaining:
                book.reduce(order_id, new_quantity)
            event = Event(input_id, order_id, AMENDED, 0, new_quantity)
        elif owner is not None:
            event = self._reenter(msg, input_id, trades, side, new_price, new_quantity, owner)
        else:  # re-entry without an account: as a new order without one (_order)
            book.cancel(order_id)
            if self._fees is None:
                rest = book.take(
                    order_id, side, new_price, new_quantity, msg.timestamp, input_id, trades,
                    self._of or None,
                )  # fmt: skip
            else:
                rest = book.take_owned(
                    order_id, side, new_price, new_quantity, msg.timestamp, input_id, trades,
                    None, "none", _NOT_PREVENTED,
                )[0]  # fmt: skip
            if rest:
                book.add(order_id, side, new_price, rest)
            event = Event(input_id, order_id, AMENDED, new_quantity - rest, rest)
        if account is not None:
            event.account = account
        return event

    def _reenter(
        self,
        msg: Amend,
        input_id: str | None,
        trades: list[Trade],
        side: str,
        price: int,
        quantity: int,
        owner: Account,
    ) -> Event:
        """An amend's re-entry of an order of account ``owner``: it keeps its account and stp
        mode, and meets its own account's orders as that mode says."""
        book = self.book
        order_id = msg.order_id
        name, given = owner.name, owner.orders[order_id]
        mode = given or self.stp_default
        book.cancel(order_id)
        removed: list[tuple[str, int, int, str]] = []
        rest, decremented, stopped = book.take_owned(
            order_id, side, price, quantity, msg.timestamp, input_id, trades, name, mode, removed
        )
        if removed:
            self._prevented(removed, input_id, order_id, mode)
        if rest and not stopped:
            book.add(order_id, side, price, rest, name, given)
        if not decremented and not stopped:  # _outcome's answer without the call
            return Event(input_id, order_id, AMENDED, quantity - rest, rest)
        return self._outcome(msg, input_id, quantity, rest, decremented, stopped, mode)

    def _cancel_all(self, msg: CancelAll, input_id: str | None) -> Event:
        """Every live order of the account (of the side, if given), in the book's order (bids
        best first, then asks, FIFO within a level: the same before and after a restore), each
        with its order event. O(k log k) for the account's k orders, never O(book)."""
        book = self.book
        account, side = msg.account, msg.side
        add = self.order_events.append
        count = total = 0
        for order_id in book.in_priority(book.owners.orders_of(account)):
            if side is not None and book.side_of(order_id) != side:
                continue
            removed = book.cancel(order_id) or 0
            add(
                Event(
                    input_id,
                    order_id,
                    CANCELLED,
                    None,
                    0,
                    removed,
                    CANCEL_ALL,
                    f"cancel_all of account {show(account)}",
                    None,
                    account,
                    1,
                )
            )
            count += 1
            total += removed
        return Event(input_id, None, CANCELLED, None, None, total, None, None, count, account)

    # -- state -----------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The engine's whole state as msgpack bytes; :meth:`restore` continues from it."""
        return encode_state(self.book)

    def snapshot_writer(self) -> SnapshotWriter:
        """A :class:`~shard.state.SnapshotWriter` of the state now, for encoding in slices."""
        return SnapshotWriter(self.book)

    @classmethod
    def restore(
        cls,
        data: bytes,
        track_depth: bool = False,
        fees: Fees | None = None,
        stp_default: str = STP_DEFAULT,
    ) -> Engine:
        """An engine that continues exactly like the one :meth:`snapshot` was taken from (with
        the rules given: they are configuration, not state); the levels it restores are not
        changes."""
        engine = cls(track_depth, fees, stp_default)
        load_state(engine.book, data)
        return engine

    # -- market data -----------------------------------------------------------------------------

    def take_depth(self) -> Depth | None:
        """The market data of what changed since the last call (a batch): the changed levels,
        conflated, with their final values, the best levels and the top-10 checksum; None if no
        level changed. O(c log c) for c levels changed, plus O(1) for the checksum: a side
        whose changes all lie behind its 10 best levels keeps the text it had."""
        book = self.book
        bids, asks = book.take_changes()
        if not bids and not asks:
            return None
        texts, nth = self._top_texts, self._top_nth
        # The levels up to the 10th key a side's text was made from are untouched if every
        # change lies behind it, that is the best change (the first) does: then so are the
        # text and that key.
        if texts[0] is None or (bids and -bids[0][0] <= nth[0]):
            self._top_text(0, book.bids)
        if texts[1] is None or (asks and asks[0][0] <= nth[1]):
            self._top_text(1, book.asks)
        best_bid, best_ask = book.bids.best, book.asks.best
        return Depth(
            bids,
            asks,
            None if best_bid is None else (best_bid.price, best_bid.total, len(best_bid.orders)),
            None if best_ask is None else (best_ask.price, best_ask.total, len(best_ask.orders)),
            checksum_of(texts[0] or "", texts[1] or ""),
        )

    def _top_text(self, i: int, side: BookSide) -> None:
        """Make side ``i``'s checksummed text again, from its cached best levels while it
        has the same levels (:attr:`_top`), else from its keys (a SortedList slice)."""
        reshaped, top = self._top[i]
        if reshaped != side.reshaped:
            top = self.book.best_levels(side, CHECKSUM_LEVELS)
            self._top[i] = (side.reshaped, top)
        self._top_texts[i] = ",".join([level.text for level in top])
        self._top_nth[i] = top[-1].key if len(top) == CHECKSUM_LEVELS else NO_LIMIT

    def discard_depth(self) -> None:
        """Forget the changes recorded since the last :meth:`take_depth` (inputs replayed by a
        recovery, whose market data was published when they were first applied)."""
        self.book.take_changes()
        self._top_texts = [None, None]

    def ticker(self) -> Ticker:
        """The trade totals so far and the last trade. O(1)."""
        book = self.book
        return Ticker(book.next_trade_id - 1, book.volume, book.notional, book.last_trade)

    def digest(self) -> str:
        """A short fingerprint of the state, O(1), computed after every batch: the next trade
        ID, the number of live orders and, per side, the number of levels, the resting quantity
        and the best level's price, total and order count; with accounts, how many orders have
        one, how many accounts and how many orders gave an stp mode. Prefixed with its scheme
        (:data:`DIGEST_SCHEME`), so a digest of another scheme is recognised, not compared."""
        book = self.book
        shape: list[int | str] = [book.next_trade_id, len(book)]
        for side in (book.bids, book.asks):
            best = side.best
            shape += (len(side.levels), _msgpack_int(side.quantity))
            if best:
                shape += (best.price, _msgpack_int(best.total), len(best.orders))
            else:
                shape += (0, 0, 0)
        if book.owners.of:  # so a book without accounts keeps the digest it always had
            shape += (len(book.owners.of), len(book.owners.accounts), book.owners.given)
        return (
            DIGEST_SCHEME
            + hashlib.blake2b(_digest_encoder.encode(shape), digest_size=16).hexdigest()
        )


def _msgpack_int(n: int) -> int | str:
    """``n``, or its decimal text past msgpack's 64 bits (a sum of quantities may be; the
    digest of every smaller book stays what it was)."""
    return n if n < 1 << 64 else str(n)


def _rejected(
    input_id: str | None, order_id: str, reason: str, detail: str, account: str | None = None
) -> Event:
    return Event(input_id, order_id, REJECTED, None, None, None, reason, detail, None, account)


def _unknown(order_id: str, input_id: str | None, account: str | None = None) -> Event:
    detail = f"order_id {show(order_id)} is not live (never seen, filled or cancelled)"
    return _rejected(input_id, order_id, UNKNOWN_ORDER, detail, account)


def _duplicate(input_id: str | None, order_id: str) -> Event:
    detail = f"order_id {show(order_id)} is already live in the book"
    return _rejected(input_id, order_id, DUPLICATE_ORDER_ID, detail)


def _fok_unfilled(msg: Order, input_id: str | None) -> Event:
    return Event(
        input_id,
        msg.order_id,
        CANCELLED,
        0,
        0,
        msg.quantity,
        FOK_UNFILLED,
        f"fok {msg.side} of quantity {msg.quantity} at price {msg.price} cannot fill in "
        "full; nothing traded",
    )


def _no_liquidity(msg: Order, input_id: str | None, rest: int) -> Event:
    quantity, price = msg.quantity, msg.price
    limit = "" if price is None else f" at price {price} or better"
    return Event(
        input_id,
        msg.order_id,
        CANCELLED,
        quantity - rest,
        0,
        rest,
        NO_LIQUIDITY,
        f"{msg.order_type} {msg.side}: no more liquidity{limit}; quantity {rest} of "
        f"{quantity} cancelled",
    )
