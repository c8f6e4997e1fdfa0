"""A cut of the book: its orders as they stood at one instant, read level by level while the
book moves on (what a sliced snapshot stands on). Pure."""

from __future__ import annotations

from shard.book import BookSide, Level, OrderBook
from shard.owners import Owners

LevelOrders = tuple[list[str], list[int], list[str] | None, list[str] | None]
"""A level's orders in FIFO order: their IDs, quantities, accounts and stp modes (the last two
``''`` where an order has none, and None where no order of the level has one)."""


def owned(owners: Owners, order_ids: list[str]) -> tuple[list[str] | None, list[str] | None]:
    """The accounts and stp modes of ``order_ids`` (see :data:`LevelOrders`). O(1) for a book
    without accounts, else O(orders)."""
    if not owners.of:
        return None, None
    of = owners.of
    held = [of.get(o) for o in order_ids]
    if not any(held):
        return None, None
    accounts = ["" if a is None else a.name for a in held]
    if not owners.given:
        return accounts, None
    given = ["" if a is None else a.orders[o] or "" for a, o in zip(held, order_ids, strict=True)]
    return accounts, given if any(given) else None


def _hold(side: BookSide) -> list[Level]:
    """The side's levels, best first, each marked held."""
    levels = [side.levels[key] for key in side.keys]
    for level in levels:
        level.held = True
    return levels


class Cut:
    """The book's orders as they stood at one instant, read level by level while it moves on.

    Opening a cut records the next trade ID, the trade totals and the levels of both sides
    (best first) and marks each level *held*. The book hands a held level to :meth:`keep`
    before it first changes it, which copies the level's orders; :meth:`orders` returns a
    level's orders as they stood at the cut (the copy, or the live orders of a level still
    untouched) and releases the level.
    So a snapshot can be encoded a slice at a time between batches, with no fork and no stall.

    Cost: O(L) to open and to close; O(orders of the level) for a copy, once per level changed
    before it is read; one attribute test per level the book changes, cut or no cut. The
    accounts of a level's orders change only with the level, so they are copied with it.
    """

    __slots__ = ("book", "kept", "last_trade", "next_trade_id", "notional", "sides", "volume")

    def __init__(self, book: OrderBook) -> None:
        if book.cut is not None:
            raise RuntimeError("one cut at a time: a bug in the caller")
        self.book = book
        self.next_trade_id = book.next_trade_id
        self.volume, self.notional, self.last_trade = book.volume, book.notional, book.last_trade
        self.sides = (_hold(book.bids), _hold(book.asks))
        self.kept: dict[Level, LevelOrders] = {}
        book.cut = self

    def keep(self, level: Level) -> None:
        """Copy a held level's orders before the book changes them, and release it."""
        level.held = False
        order_ids = list(level.orders)
        quantities = list(level.orders.values())
        self.kept[level] = (order_ids, quantities, *owned(self.book.owners, order_ids))

    def orders(self, level: Level) -> LevelOrders:
        """The orders of ``level`` (one of :attr:`sides`) in FIFO order, as they stood at the
        cut. Each level is read once: it is released here."""
        kept = self.kept.pop(level, None)
        if kept is not None:
            return kept
        if not level.held:
            raise RuntimeError("a level read twice, or changed without keep(): a bug in the cut")
        level.held = False
        order_ids = list(level.orders)
        return order_ids, list(level.orders.values()), *owned(self.book.owners, order_ids)

    def close(self) -> None:
        """Release every level still held and detach from the book. O(L)."""
        for levels in self.sides:
            for level in levels:
                level.held = False
        self.kept.clear()
        if self.book.cut is self:
            self.book.cut = None
