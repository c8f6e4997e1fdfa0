"""The engine's state as bytes: the snapshot format, encoded whole or a slice at a time. Pure.

A snapshot is one msgpack array (:class:`EngineState`): the format version, the next trade ID,
then each side's price levels best first, each with its orders in FIFO order and, where any
has one, their accounts and stp modes (:class:`LevelState`). It holds everything an engine
needs to continue exactly where it was; :func:`load_state` restores it into an empty book.
Cost: O(orders) either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import msgspec

from shard.book import Level, OrderBook
from shard.cut import Cut, owned
from shard.messages import Trade

SNAPSHOT_VERSION: Final = 4
"""Version 2 added the trade totals (``volume``, ``notional``, ``last_trade``); a version 1
snapshot restores with totals counted from zero. Version 3 added the orders' accounts and stp
modes. Version 4 writes the totals and the last trade's fees as decimal strings (msgpack
integers stop at 2**64 - 1; a notional does not) and leaves a level's accounts and modes out
where it has none."""
READABLE_VERSIONS: Final = (1, 2, 3, 4)


class LevelState(msgspec.Struct, array_like=True, gc=False):
    """One price level in a snapshot: its orders in FIFO order, as parallel lists (accounts
    and modes ``''`` where an order has none; the lists left out where no order of the level
    has one)."""

    price: int
    order_ids: list[str]
    quantities: list[int]
    accounts: list[str] | None = None
    modes: list[str] | None = None


def _level(
    price: int,
    order_ids: list[str],
    quantities: list[int],
    accounts: list[str] | None,
    modes: list[str] | None,
) -> tuple[object, ...]:
    """A level as it is written: :class:`LevelState`'s fields, less the trailing absent ones
    (msgspec writes every field of an array-like struct)."""
    if accounts is None:
        return price, order_ids, quantities
    if modes is None:
        return price, order_ids, quantities, accounts
    return price, order_ids, quantities, accounts, modes


def _book_level(level: Level, book: OrderBook) -> tuple[object, ...]:
    order_ids = list(level.orders)
    return _level(
        level.price, order_ids, list(level.orders.values()), *owned(book.owners, order_ids)
    )


class EngineState(msgspec.Struct, array_like=True):
    """Everything an engine needs to continue exactly where it was (levels best first), as any
    readable version holds it: the totals are integers up to version 3, decimal strings from 4,
    where the last trade's fees (if it had any) are in ``last_fees`` instead."""

    version: int
    next_trade_id: int
    bids: list[LevelState]
    asks: list[LevelState]
    volume: int | str = 0
    notional: int | str = 0
    last_trade: Trade | None = None
    last_fees: tuple[str, str] | None = None


FIELDS: Final = len(EngineState.__struct_fields__)
_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(EngineState)
_NOTHING = msgspec.Raw(b"")


def _array_header(n: int) -> bytes:
    """The msgpack header of an ``n``-element array (msgspec frames it: empty raw elements)."""
    return _state_encoder.encode([_NOTHING] * n)


def _totals(volume: int, notional: int, last_trade: Trade | None) -> tuple[object, ...]:
    """The state's last four fields as version 4 writes them."""
    fees = None
    if last_trade is not None and last_trade.maker_fee is not None:
        fees = (str(last_trade.maker_fee), str(last_trade.taker_fee))
        last_trade = msgspec.structs.replace(last_trade, maker_fee=None, taker_fee=None)
    return str(volume), str(notional), last_trade, fees


def encode_state(book: OrderBook) -> bytes:
    """The book's whole state as snapshot bytes. O(orders)."""
    return _state_encoder.encode(
        (
            SNAPSHOT_VERSION,
            book.next_trade_id,
            [_book_level(level, book) for level in book.bids],
            [_book_level(level, book) for level in book.asks],
            *_totals(book.volume, book.notional, book.last_trade),
        )
    )


def load_state(book: OrderBook, data: bytes) -> None:
    """Restore snapshot ``data`` into an empty ``book``; ValueError for another format version."""
    state = _state_decoder.decode(data)
    if state.version not in READABLE_VERSIONS:
        raise ValueError(f"snapshot version {state.version}, expected {SNAPSHOT_VERSION}")
    book.next_trade_id = state.next_trade_id
    book.volume, book.notional = int(state.volume), int(state.notional)
    last = state.last_trade
    if last is not None and state.last_fees is not None:
        maker_fee, taker_fee = map(int, state.last_fees)
        last = msgspec.structs.replace(last, maker_fee=maker_fee, taker_fee=taker_fee)
    book.last_trade = last
    for side, levels in (("buy", state.bids), ("sell", state.asks)):
        for level in levels:
            book.load_level(
                side, level.price, level.order_ids, level.quantities, level.accounts, level.modes
            )


class SnapshotWriter:
    """:func:`encode_state` of the book at the moment it was opened, encoded a slice at a
    time while the engine goes on applying inputs: the concatenation of what :meth:`step`
    returns is byte for byte that snapshot. It stands on a :class:`~shard.book.Cut`, which copies
    a level only if the book changes it before it is encoded.

    Cost: O(L) to open; then O(1) per order encoded (the more scattered the heap, the slower),
    in slices of ``budget`` orders (at least one level each); the copies of levels
    changed meanwhile. :meth:`close` (also when abandoned) releases the book. The book may not
    be replaced while a writer is open.
    """

    __slots__ = ("_levels", "cut", "done")

    def __init__(self, book: OrderBook) -> None:
        self.cut = Cut(book)
        self._levels = self._encode()
        self.done = False

    def _encode(self) -> Iterator[tuple[bytes, int]]:
        """(bytes, orders in them) in snapshot order: the framing, then each side's levels."""
        cut = self.cut
        head = _array_header(FIELDS) + _state_encoder.encode(SNAPSHOT_VERSION)
        yield head + _state_encoder.encode(cut.next_trade_id), 0
        for levels in cut.sides:
            yield _array_header(len(levels)), 0
            for level in levels:
                ids, quantities, accounts, modes = cut.orders(level)
                yield (
                    _state_encoder.encode(_level(level.price, ids, quantities, accounts, modes)),
                    len(ids),
                )
        totals = _totals(cut.volume, cut.notional, cut.last_trade)
        yield b"".join(_state_encoder.encode(x) for x in totals), 0

    def step(self, budget: int) -> bytes:
        """The next bytes: levels until ``budget`` orders are encoded or none is left (then
        :attr:`done` is set and the book released)."""
        parts = []
        for data, orders in self._levels:
            parts.append(data)
            budget -= orders
            if budget <= 0:
                return b"".join(parts)
        self.done = True
        self.close()
        return b"".join(parts)

    def close(self) -> None:
        self.cut.close()
