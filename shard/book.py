"""The limit order book of one trading pair: price-time priority, pure and deterministic.

This module does no I/O, reads no clock and draws no random number: every call is a function of
the book's state and its arguments, so replaying the same calls gives the same trades.

Rules
-----
* **Priority**: best price first (highest bid, lowest ask); within a price, arrival order (FIFO).
* **Price**: a trade executes at the resting (maker) order's price, stamped with the taker's
  timestamp; trade IDs run 1, 2, 3, ... with no gap (``next_trade_id``).
* **Never crossed**: the caller only rests an order after taking what it crosses, so the best bid
  is always below the best ask. :meth:`OrderBook.check` asserts it.
* **Identity**: an ``order_id`` is live at most once. The book does not police it; the engine
  rejects a duplicate before calling :meth:`OrderBook.add`.

Layout and cost
---------------
Each side keeps ``dict[key, Level]`` plus a ``SortedList`` of keys, and caches its best level.
The key of a price is the price for asks and its negation for bids, so on both sides *the best
level has the smallest key* and one matching loop serves both. A level is a ``dict`` from order
ID to remaining quantity, whose insertion order is the FIFO queue; a global index maps each live
order ID to its level. There is no per-order object: a resting order costs its ID string, one
index entry and one level entry (about 130-150 bytes at a million orders).

* best price, add to an existing level, cancel, reduce, each fill: O(1)
* creating or removing a price level: O(log L) (``SortedList``), L = levels on that side
* ``can_fill`` (fill-or-kill check): O(levels it needs)
* ``check``: O(orders)

A level's dict keeps holes where filled orders were removed until it is next resized, so the
first fill on a level scans past at most a few times its live size in C; amortised O(1).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from sortedcontainers import SortedList

from shard.fees import Fees, fee
from shard.l2 import level_text
from shard.messages import Trade
from shard.owners import Account, Owners

if TYPE_CHECKING:
    from shard.cut import Cut

LevelView = tuple[int, int, int]
"""A price level as market data shows it: (price, total quantity, number of orders)."""

NO_LIMIT: Final = 1 << 65
"""Limit key of a market order: above every price key, so it crosses every level."""

NOBODY: Final = Account("")
"""The "own account" of a taker that cannot meet itself: no order belongs to it."""


class Level:
    """All resting orders at one price on one side, in FIFO order, with their cached total."""

    __slots__ = ("changed", "fresh", "held", "key", "orders", "owner", "price", "text", "total")

    def __init__(self, price: int, key: int, owner: BookSide) -> None:
        self.price = price
        self.key = key
        self.owner = owner
        self.orders: dict[str, int] = {}
        self.total = 0
        self.held = False  # an open Cut still needs these orders as they were when it opened
        # In OrderBook.changed (see take_changes); a book that does not track changes makes its
        # levels as recorded already, so the test on the matching path never records one.
        self.changed = not owner.tracked
        self.fresh = True  # made since the last take_changes: absent from the last report
        self.text = ""
        """Its part of the checksummed text (:func:`shard.l2.level_text`) as of the last
        take_changes, on a book that tracks changes: made once per change, not per checksum."""


def _best_first(views: dict[int, LevelView | None]) -> list[LevelView]:
    """:meth:`OrderBook.take_changes`' views of one side in key order (best first), without
    the levels made and emptied (None). A side changes at one level or none in most batches
    at a low rate: those skip the sort, whose calls cost more than its work there."""
    if len(views) > 1:
        return list(filter(None, map(views.__getitem__, sorted(views))))
    for view in views.values():
        return [] if view is None else [view]
    return []


class BookSide:
    """One side of the book: levels by key, keys in order, the best level cached."""

    __slots__ = ("best", "keys", "levels", "name", "quantity", "reshaped", "sign", "tracked")

    def __init__(self, name: str, sign: int, tracked: bool = False) -> None:
        self.name = name
        self.tracked = tracked  # its levels' changes are recorded (OrderBook.take_changes)
        self.sign = sign  # key = sign * price: +1 for asks, -1 for bids
        self.levels: dict[int, Level] = {}
        self.keys: SortedList[int] = SortedList()
        self.best: Level | None = None
        self.quantity = 0  # resting quantity over all levels, kept up to date for the digest
        self.reshaped = 0
        """On a tracked side, how many levels :meth:`OrderBook.take_changes` found made or
        dropped: while it stays, so does the list :meth:`OrderBook.best_levels` gave (counted
        per batch there, not on the matching path)."""

    def level_for(self, price: int) -> Level:
        """The level at ``price``, created if absent. O(1), or O(log L) when created."""
        key = self.sign * price
        level = self.levels.get(key)
        if level is None:
            level = self.levels[key] = Level(price, key, self)
            self.keys.add(key)
            best = self.best
            if best is None or key < best.key:
                self.best = level
        return level

    def drop(self, level: Level) -> None:
        """Remove an empty level. O(log L)."""
        key = level.key
        del self.levels[key]
        keys = self.keys
        keys.remove(key)
        if self.best is level:
            self.best = self.levels[keys[0]] if keys else None

    def __iter__(self) -> Iterator[Level]:
        """Levels best first. O(L)."""
        levels = self.levels
        for key in self.keys:
            yield levels[key]


class OrderBook:
    """Resting orders of one pair and the matching primitives the engine builds order types from."""

    __slots__ = (
        "asks",
        "bids",
        "changed",
        "cut",
        "fees",
        "index",
        "last_trade",
        "next_trade_id",
        "notional",
        "owners",
        "volume",
    )

    def __init__(self, track_changes: bool = False, fees: Fees | None = None) -> None:
        self.bids = BookSide("buy", -1, track_changes)
        self.asks = BookSide("sell", 1, track_changes)
        self.index: dict[str, Level] = {}
        """Order ID -> the level it rests on, for every live order. Read it; only the book
        writes it."""
        self.owners = Owners()
        """The accounts of the resting orders that have one (:mod:`shard.owners`)."""
        self.fees = fees
        """The rates :meth:`take_owned` charges on each trade; None: no fees (``Fees(0, 0)``
        is None too, so trades of a pair without fees carry no fee fields)."""
        if fees is not None and not any(fees):
            self.fees = None
        self.next_trade_id = 1
        self.cut: Cut | None = None
        self.changed: list[Level] = []
        """With ``track_changes``: levels changed since the last :meth:`take_changes`, each
        once (their ``changed`` flag is set); a level removed and created again at one price
        may appear twice. Whoever tracks changes takes them, or this list grows."""
        self.volume = 0
        """Sum of the quantities of every trade."""
        self.notional = 0
        """Sum of price x quantity of every trade (an exact integer)."""
        self.last_trade: Trade | None = None

    def _keep(self, level: Level) -> None:
        """Called before the first change of a held level: the open cut copies it first."""
        if self.cut is None:
            raise RuntimeError("a held level without an open cut: a bug in the snapshot cut")
        self.cut.keep(level)

    # -- queries ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of live orders. O(1)."""
        return len(self.index)

    def __contains__(self, order_id: object) -> bool:
        """Whether ``order_id`` is live. O(1)."""
        return order_id in self.index

    def get(self, order_id: str) -> tuple[str, int, int] | None:
        """``(side, price, remaining)`` of a live order, else None. O(1)."""
        level = self.index.get(order_id)
        if level is None:
            return None
        return level.owner.name, level.price, level.orders[order_id]

    def side_of(self, order_id: str) -> str:
        """The side ("buy" or "sell") of a live order. O(1)."""
        return self.index[order_id].owner.name

    def in_priority(self, order_ids: list[str]) -> list[str]:
        """Live ``order_ids`` in the book's order: the bids, best level first, then the asks,
        each level's orders in the order given (the account index lists a level's orders in
        FIFO order, before and after a restore alike). O(k log k) for k orders."""
        index, asks = self.index, self.asks
        return sorted(order_ids, key=lambda o: (index[o].owner is asks, index[o].key))

    def best_bid(self) -> int | None:
        """Highest bid price. O(1)."""
        best = self.bids.best
        return None if best is None else best.price

    def best_ask(self) -> int | None:
        """Lowest ask price. O(1)."""
        best = self.asks.best
        return None if best is None else best.price

    def side(self, name: str) -> BookSide:
        """The resting side called ``name`` ("buy" is the bids)."""
        return self.bids if name == "buy" else self.asks

    def crosses(self, side: str, price: int) -> bool:
        """Whether an order on ``side`` at ``price`` would trade on arrival. O(1)."""
        if side == "buy":
            best = self.asks.best
            return best is not None and best.price <= price
        best = self.bids.best
        return best is not None and best.price >= price

    def can_fill(self, side: str, price: int | None, quantity: int) -> bool:
        """Whether a taker could trade ``quantity`` in full at ``price`` or better (None: any).

        O(levels needed): sums cached level totals from the best level outwards.
        """
        if side == "buy":
            opposite, limit = self.asks, NO_LIMIT if price is None else price
        else:
            opposite, limit = self.bids, NO_LIMIT if price is None else -price
        for level in opposite:
            if level.key > limit:
                return False
            quantity -= level.total
            if quantity <= 0:
                return True
        return False

    # -- changes ---------------------------------------------------------------------------------

    def take(
        self,
        taker_id: str,
        side: str,
        price: int | None,
        quantity: int,
        timestamp: int,
        input_id: str | None,
        trades: list[Trade],
        of: dict[str, Account] | None = None,
    ) -> int:
        """Trade a taker against the opposite side while it crosses; return the unfilled rest.

        ``price`` None means no limit (market). Appends one :class:`Trade` per maker touched to
        ``trades``; filled makers leave the book, a partly filled maker keeps its place.
        O(1) per fill plus O(log L) per level emptied.

        ``of``, for a taker without account or fees while makers may have accounts: the
        account index (:attr:`Owners.of`); each trade then names its maker's account and a
        maker that leaves the book leaves the index too (a dict lookup per maker more).
        """
        if side == "buy":
            opposite, limit = self.asks, NO_LIMIT if price is None else price
        else:
            opposite, limit = self.bids, NO_LIMIT if price is None else -price
        level = opposite.best
        if level is None or level.key > limit:
            return quantity
        index = self.index
        trade_id = self.next_trade_id
        append = trades.append
        changed = self.changed
        while True:
            if level.held:
                self._keep(level)
            if not level.changed:
                level.changed = True
                changed.append(level)
            orders = level.orders
            level_price = level.price
            done: list[str] = []
            traded = 0
            for maker, available in orders.items():
                named = None if of is None or maker not in of else of[maker].name
                if available > quantity:
                    orders[maker] = available - quantity  # same key: order keeps its place
                    append(
                        Trade(
                            trade_id,
                            taker_id,
                            maker,
                            level_price,
                            quantity,
                            timestamp,
                            side,
                            input_id,
                            named,
                        )
                    )
                    trade_id += 1
                    traded += quantity
                    quantity = 0
                    break
                append(
                    Trade(
                        trade_id,
                        taker_id,
                        maker,
                        level_price,
                        available,
                        timestamp,
                        side,
                        input_id,
                        named,
                    )
                )
                trade_id += 1
                traded += available
                quantity -= available
                done.append(maker)
                if not quantity:
                    break
            for maker in done:
                del orders[maker]
                del index[maker]
                if of is not None and maker in of:
                    self.owners.forget(maker)
            opposite.quantity -= traded
            self.volume += traded
            self.notional += level_price * traded
            if orders:  # the level outlived the taker, so the taker is filled
                level.total -= traded
                break
            opposite.drop(level)
            if not quantity:
                break
            best = opposite.best
            if best is None or best.key > limit:
                break
            level = best
        self.next_trade_id = trade_id
        self.last_trade = trades[-1]
        return quantity

    def take_owned(
        self,
        taker_id: str,
        side: str,
        price: int | None,
        quantity: int,
        timestamp: int,
        input_id: str | None,
        trades: list[Trade],
        account: str | None,
        mode: str,
        removed: list[tuple[str, int, int, str]],
    ) -> tuple[int, int, bool]:
        """:meth:`take` where orders may carry accounts or the pair charges fees: each trade
        names the maker's and the taker's account and carries the fees, and a maker of the
        taker's own ``account`` is met as ``mode`` says (docs/engine.md):

        * ``cancel_taker``: matching stops there, the maker stays;
        * ``cancel_maker``: the maker leaves the book, matching goes on;
        * ``cancel_both``: the maker leaves the book, matching stops;
        * ``decrement``: the smaller open quantity is taken off both, no trade; an order at 0
          is gone, the taker goes on with what it has left;
        * ``none``: they trade.

        Each maker taken off or reduced without a trade is appended to ``removed`` as
        ``(order ID, quantity taken off, quantity left, account)``. Returns the taker's
        unfilled rest, how much of it the decrements took off (part of the rest is not: it is
        still the taker's), and whether prevention stopped the matching (its rest must not
        rest). Cost: :meth:`take`'s, plus a dict lookup per maker met.
        """
        if side == "buy":
            opposite, limit = self.asks, NO_LIMIT if price is None else price
        else:
            opposite, limit = self.bids, NO_LIMIT if price is None else -price
        level = opposite.best
        if level is None or level.key > limit:
            return quantity, 0, False
        index = self.index
        owners = self.owners
        of = owners.of
        rates = self.fees
        # The taker's own account, if it has resting orders to meet (else no maker is it).
        mine = NOBODY if account is None or mode == "none" else owners.accounts.get(account, NOBODY)
        trade_id = self.next_trade_id
        append = trades.append
        changed = self.changed
        decremented = 0
        stopped = False
        traded_any = False
        while True:
            if level.held:
                self._keep(level)
            if not level.changed:
                level.changed = True
                changed.append(level)
            orders = level.orders
            level_price = level.price
            done: list[str] = []
            traded = 0
            taken = 0  # quantity that left the level without a trade
            for maker, available in orders.items():
                owner = of.get(maker)
                if owner is mine:
                    if mode == "cancel_taker":
                        stopped = True
                        break
                    cut = available if mode != "decrement" or available <= quantity else quantity
                    taken += cut
                    removed.append((maker, cut, available - cut, mine.name))
                    if cut == available:
                        done.append(maker)
                    else:
                        orders[maker] = available - cut
                    if mode == "cancel_both":
                        stopped = True
                        break
                    if mode == "decrement":
                        quantity -= cut
                        decremented += cut
                        if not quantity:
                            break
                    continue
                fill = available if available <= quantity else quantity
                named = None if owner is None else owner.name
                if rates is None:
                    append(
                        Trade(
                            trade_id, taker_id, maker, level_price, fill, timestamp, side,
                            input_id, named, account,
                        )
                    )  # fmt: skip
                else:
                    notional = level_price * fill
                    append(
                        Trade(
                            trade_id, taker_id, maker, level_price, fill, timestamp, side,
                            input_id, named, account, fee(notional, rates[0]),
                            fee(notional, rates[1]),
                        )
                    )  # fmt: skip
                trade_id += 1
                traded += fill
                quantity -= fill
                if fill == available:
                    done.append(maker)
                else:
                    orders[maker] = available - fill
                if not quantity:
                    break
            for maker in done:
                del orders[maker]
                del index[maker]
                if maker in of:
                    owners.forget(maker)
            if traded:
                traded_any = True
                self.volume += traded
                self.notional += level_price * traded
                taken += traded
            opposite.quantity -= taken
            if orders:  # the loop stopped inside the level: the taker is done or stopped
                level.total -= taken
                break
            opposite.drop(level)
            if stopped or not quantity:
                break
            best = opposite.best
            if best is None or best.key > limit:
                break
            level = best
        self.next_trade_id = trade_id
        if traded_any:
            self.last_trade = trades[-1]
        return quantity, decremented, stopped

    def can_fill_owned(
        self, side: str, price: int | None, quantity: int, account: str, mode: str
    ) -> bool:
        """:meth:`can_fill` for a taker of ``account``: a maker of its own account is not
        liquidity for it; under ``cancel_maker`` matching would skip it, under the other modes
        but ``none`` stop there. O(levels needed) while the account has no resting order, else
        O(orders walked)."""
        mine = self.owners.accounts.get(account)
        if mode == "none" or mine is None:
            return self.can_fill(side, price, quantity)
        if side == "buy":
            opposite, limit = self.asks, NO_LIMIT if price is None else price
        else:
            opposite, limit = self.bids, NO_LIMIT if price is None else -price
        of = self.owners.of
        for level in opposite:
            if level.key > limit:
                return False
            for maker, available in level.orders.items():
                if of.get(maker) is mine:
                    if mode == "cancel_maker":
                        continue
                    return False
                quantity -= available
                if quantity <= 0:
                    return True
        return False

    def add(
        self,
        order_id: str,
        side: str,
        price: int,
        quantity: int,
        account: str | None = None,
        mode: str | None = None,
    ) -> None:
        """Rest an order at the back of its price level (with ``account`` and the ``mode`` of
        self-trade prevention it gave, if any). O(1), or O(log L) for a new level.

        The caller guarantees that ``order_id`` is not live and that the order does not cross.
        """
        if account is not None:  # Owners.add, inlined: the call would cost more than its work
            owners = self.owners
            owner = owners.accounts.get(account)
            if owner is None:
                owner = owners.accounts[account] = Account(account)
            owner.orders[order_id] = mode
            owners.of[order_id] = owner
            if mode is not None:
                owners.given += 1
        book_side = self.bids if side == "buy" else self.asks
        level = book_side.level_for(price)
        if level.held:
            self._keep(level)
        if not level.changed:
            level.changed = True
            self.changed.append(level)
        level.orders[order_id] = quantity
        level.total += quantity
        book_side.quantity += quantity
        self.index[order_id] = level

    def cancel(self, order_id: str) -> int | None:
        """Remove a live order; return its remaining quantity, or None if it is not live. O(1)*."""
        level = self.index.pop(order_id, None)
        if level is None:
            return None
        if level.held:  # first: the cut copies the level with its orders' accounts
            self._keep(level)
        if order_id in self.owners.of:  # Owners.forget, inlined
            owners = self.owners
            owner = owners.of.pop(order_id)
            owned = owner.orders
            if owned.pop(order_id) is not None:
                owners.given -= 1
            if not owned:
                del owners.accounts[owner.name]
        if not level.changed:
            level.changed = True
            self.changed.append(level)
        quantity = level.orders.pop(order_id)
        level.owner.quantity -= quantity
        if level.orders:
            level.total -= quantity
        else:
            level.owner.drop(level)
        return quantity

    def reduce(self, order_id: str, quantity: int) -> None:
        """Lower a live order's remaining quantity to ``quantity``, keeping its place. O(1)."""
        level = self.index[order_id]
        if level.held:
            self._keep(level)
        if not level.changed:
            level.changed = True
            self.changed.append(level)
        orders = level.orders
        less = orders[order_id] - quantity
        level.total -= less
        level.owner.quantity -= less
        orders[order_id] = quantity

    # -- market data -----------------------------------------------------------------------------

    def take_changes(self) -> tuple[list[LevelView], list[LevelView]]:
        """The levels changed since the last call, conflated, as ``(price, quantity, orders)``
        with their final values (``(price, 0, 0)`` for a level gone; a level made and emptied
        since the last call is left out), bids and asks best first; the record starts again
        empty. O(c log c) for c levels changed, in C but for one pass over them (a batch at a
        low rate changes one or two levels, so what each call costs besides matters)."""
        changed = self.changed
        if not changed:
            return [], []
        bids: dict[int, LevelView | None] = {}
        asks: dict[int, LevelView | None] = {}
        bid_side = self.bids
        for level in changed:  # the first recorded at a price is the one there at the start
            level.changed = False
            key = level.key
            book_side = level.owner
            seen = bids if book_side is bid_side else asks
            if key not in seen:
                live = book_side.levels.get(key)
                if live is not None:
                    price, total = level.price, live.total
                    seen[key] = (price, total, len(live.orders))
                    live.text = f"{price}:{total}"  # l2.level_text, inline: once per change
                    if live is not level or level.fresh:  # made (again) since the last call
                        book_side.reshaped += 1
                else:  # gone; unless it was made since the last call, which never reported it
                    seen[key] = None if level.fresh else (level.price, 0, 0)
                    book_side.reshaped += 1
            level.fresh = False
        changed.clear()
        return _best_first(bids), _best_first(asks)

    @staticmethod
    def best_levels(book_side: BookSide, n: int) -> list[Level]:
        """The ``n`` best levels of a side, best first. O(n)."""
        levels = book_side.levels
        return [levels[key] for key in book_side.keys[:n]]

    # -- state -----------------------------------------------------------------------------------

    def load_level(
        self,
        side: str,
        price: int,
        order_ids: list[str],
        quantities: list[int],
        accounts: list[str] | None = None,
        modes: list[str] | None = None,
    ) -> None:
        """Append orders in FIFO order to a level (used by snapshot restore), with their
        accounts and stp modes (``''``: none) if any has one. O(n) + O(log L)."""
        if accounts is not None:
            for i, account in enumerate(accounts):
                if account:
                    self.owners.add(order_ids[i], account, modes[i] or None if modes else None)
        book_side = self.side(side)
        level = book_side.level_for(price)
        level.fresh = False  # a restored level is the book as it stands
        if level.held:
            self._keep(level)
        level.orders.update(zip(order_ids, quantities, strict=True))
        added = sum(quantities)
        level.total += added
        level.text = level_text(price, level.total)
        book_side.quantity += added
        self.index.update(dict.fromkeys(order_ids, level))

    def check(self) -> None:
        """Assert every invariant of the book. O(orders); for tests and debugging.

        Keys sorted and consistent with levels; no empty level; positive quantities; cached
        level totals, side quantities and best levels right; the index holds exactly the
        resting orders; the account index consistent with it; not crossed.
        """
        seen = 0
        for book_side in (self.bids, self.asks):
            levels = book_side.levels
            assert list(book_side.keys) == sorted(levels), "keys out of step with levels"
            for key, level in levels.items():
                assert level.key == key == book_side.sign * level.price, f"bad key {key}"
                assert level.owner is book_side, f"level {level.price} on the wrong side"
                assert level.orders, f"empty level {level.price} on {book_side.name}"
                assert all(q > 0 for q in level.orders.values()), f"non-positive qty at {key}"
                assert level.total == sum(level.orders.values()), f"stale total at {level.price}"
                for order_id in level.orders:
                    assert self.index.get(order_id) is level, f"index wrong for {order_id!r}"
                seen += len(level.orders)
            total = sum(level.total for level in levels.values())
            assert book_side.quantity == total, f"stale quantity on {book_side.name}"
            expected = levels[book_side.keys[0]] if book_side.keys else None
            assert book_side.best is expected, f"stale best level on {book_side.name}"
        assert seen == len(self.index), "index holds orders that rest nowhere"
        self.owners.check(self.index)
        bid, ask = self.best_bid(), self.best_ask()
        assert bid is None or ask is None or bid < ask, f"crossed book: bid {bid} >= ask {ask}"
