"""Input entries decoded and applied to the engine: a batch to commit, or a replay. Pure.

This is the one decode-and-apply path of the shard: the daemon builds its batches with
:func:`build_batch`, recovery re-applies the input stream with :func:`apply_entries`, and the
tests' oracle computes what an uninterrupted run publishes with the same function. An entry is
decoded as :func:`shard.decode.decode_entry` says (the ``oversize`` rule included) and applied
in order; the engine is deterministic, so the same entries give the same outputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter
from typing import Final

import msgspec

from shard.checkpoint import Checkpoint, parse_id
from shard.decode import OVERSIZE, decode_entry
from shard.engine import Depth, Engine, Ticker
from shard.messages import Event, Trade
from shard.wire import Row, add_event, add_trade

Entries = list[tuple[bytes, list[bytes]]]
"""Stream entries as raw RESP2 replies: (id, [name, value, name, value, ...])."""

REJECTED: Final = "rejected"
_fields = itemgetter(1)  # an entry's field list


class Batch(msgspec.Struct):
    """A batch applied to the engine, with everything its commit publishes and moves."""

    first: str
    """The first input it applied ('' if none): the commit checks that it follows the
    checkpoint in the input stream."""
    expected: Checkpoint
    """The checkpoint it was applied on: the commit's fence."""
    target: Checkpoint
    """The checkpoint once it is committed."""
    trades: Row
    events: Row
    acks: list[str]
    """Every input entry it read (applied or not): what the commit acknowledges."""
    inputs: int
    """How many inputs it applied: one event each."""
    trade_count: int
    rejected: list[str]
    """The reason of each rejected event, for the metrics."""
    oversize: int
    """The size of its largest ``oversize`` entry (0 if none): what the next read's count is
    made from (see :mod:`shard.reads`)."""
    depth: list[str]
    """Its ``depth:{P}`` entry's values (bids, asks, best_bid, best_ask, checksum), or empty
    when it changed no level (see :func:`market_data`)."""
    book_set: list[str]
    """The ``book:{P}`` fields it sets, flat (``b:<price>``, ``<quantity>:<orders>``, ...)."""
    book_del: list[str]
    """The ``book:{P}`` fields of the levels it emptied."""
    ticker: list[str]
    """The ``ticker:{P}`` fields it sets, flat, or empty when it made no trade."""


def apply_entries(
    engine: Engine,
    entries: Iterable[tuple[str, list[bytes]]],
    max_entry_bytes: int,
    trades: list[Trade],
    events: list[Event],
) -> int:
    """Decode and apply each ``(entry ID, fields)`` in order, appending its order events and
    then its own event to ``events``, and its trades to ``trades``; return the size of the
    largest ``oversize`` entry (0 if none). Cost: the decode and the match of each entry, O(1)
    more."""
    apply = engine.apply
    add = events.append
    side = engine.order_events
    biggest = 0
    for entry_id, pairs in entries:
        event = apply(decode_entry(entry_id, pairs, max_entry_bytes), entry_id, trades)
        if event.reason == OVERSIZE:
            biggest = max(biggest, sum(map(len, pairs)))
        if side:
            events += side
            side.clear()
        add(event)
    return biggest


def build_batch(
    engine: Engine, entries: Entries, committed: Checkpoint, max_entry_bytes: int
) -> Batch:
    """Apply a read's ``entries`` to ``engine``, which stands at ``committed``; the batch that
    commits them. Entries at or before ``committed`` (delivered again: cannot happen once the
    consumer group is at the checkpoint) are acknowledged but not applied again. Cost: the
    entries' decode and match, and O(entries + trades) to build the output rows."""
    acks = [raw_id.decode() for raw_id, _ in entries]
    todo: Iterable[tuple[str, list[bytes]]]
    if parse_id(acks[0]) <= parse_id(committed.last_id):
        after = parse_id(committed.last_id)
        todo = [(i, e[1]) for i, e in zip(acks, entries, strict=True) if parse_id(i) > after]
        applied = [i for i, _ in todo]
    else:
        todo = zip(acks, map(_fields, entries))  # noqa: B905  (as long as acks)
        applied = acks
    trades: list[Trade] = []
    events: list[Event] = []
    biggest = apply_entries(engine, todo, max_entry_bytes, trades, events)
    event_rows: Row = []
    rejected: list[str] = []
    for event in events:
        if event.status == REJECTED:
            rejected.append(event.reason or "")
        add_event(event_rows, event)
    trade_rows: Row = []
    for trade in trades:
        add_trade(trade_rows, trade)
    depth, book_set, book_del = market_data(engine.take_depth())
    target = Checkpoint(
        applied[-1] if applied else committed.last_id,
        engine.book.next_trade_id - 1,
        committed.events + len(applied),
        engine.digest(),
        committed.seq + 1 if depth else committed.seq,
        engine.terms.text(),
    )
    return Batch(
        applied[0] if applied else "",
        committed,
        target,
        trade_rows,
        event_rows,
        acks,
        len(applied),
        len(trades),
        rejected,
        biggest,
        depth,
        book_set,
        book_del,
        ticker_fields(engine.ticker()) if trades else [],
    )


def market_data(depth: Depth | None) -> tuple[list[str], list[str], list[str]]:
    """A batch's market data as the commit writes it: the ``depth:{P}`` entry's values
    (``bids``, ``asks``: each changed level ``<price>:<quantity>:<orders>`` best first, joined by
    ``,``; ``best_bid``, ``best_ask``: ``<price>:<quantity>`` or empty; ``checksum``), the
    ``book:{P}`` fields to set (flat) and those to delete (levels gone). O(levels changed)."""
    if depth is None:
        return [], [], []
    book_set: list[str] = []
    book_del: list[str] = []
    entry = []
    for prefix, levels in (("b:", depth.bids), ("a:", depth.asks)):
        parts = []
        for price, quantity, orders in levels:
            if quantity:
                value = f"{quantity}:{orders}"
                book_set += (f"{prefix}{price}", value)
                parts.append(f"{price}:{value}")
            else:
                book_del.append(f"{prefix}{price}")
                parts.append(f"{price}:0:0")
        entry.append(",".join(parts))
    bid, ask = depth.best_bid, depth.best_ask
    entry += (
        f"{bid[0]}:{bid[1]}" if bid else "",
        f"{ask[0]}:{ask[1]}" if ask else "",
        str(depth.checksum),
    )
    return entry, book_set, book_del


def ticker_fields(ticker: Ticker) -> list[str]:
    """``ticker:{P}``'s fields, flat, after a batch that traded."""
    last = ticker.last_trade
    if last is None:
        return []
    return [
        "last_trade_id", str(last.trade_id), "last_price", str(last.price),
        "last_quantity", str(last.quantity), "last_timestamp", str(last.timestamp),
        "last_taker_side", last.taker_side, "trade_count", str(ticker.trade_count),
        "volume", str(ticker.volume), "notional", str(ticker.notional),
    ]  # fmt: skip
