"""Outputs as stream entries: flat field/value pairs, integers as decimal ASCII.

``add_trade``/``add_event`` append what the daemon XADDs to a batch's rows (values only; the
field names are the server's, by shape), ``trade_fields``/``event_fields`` give one entry's
field/value list (fields that do not apply are left out); ``trade_from_fields``/
``event_from_fields`` read entries back for consumers and tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec

from shard.messages import Event, Trade

TRADE_NAMES: Final[tuple[str, ...]] = Trade.__struct_fields__  # the entry's fields, in order
EVENT_NAMES: Final[tuple[str, ...]] = Event.__struct_fields__
# The optional fields of each entry and the shape bit that says an entry has them.
TRADE_BITS: Final = {"maker_account": 1, "taker_account": 2, "maker_fee": 4, "taker_fee": 4}
EVENT_BITS: Final = {
    "order_id": 1, "filled_quantity": 2, "remaining_quantity": 4, "cancelled_quantity": 8,
    "reason": 16, "detail": 16, "cancelled_orders": 32, "account": 64, "resting_order": 128,
}  # fmt: skip


def _shapes(names: tuple[str, ...], bits: dict[str, int]) -> tuple[tuple[str, ...], ...]:
    return tuple(
        tuple(name for name in names if name not in bits or shape & bits[name])
        for shape in range(2 * max(bits.values()))
    )


TRADE_SHAPES: Final = _shapes(TRADE_NAMES, TRADE_BITS)
"""A trade's field names by its shape: bit 1 maker_account, 2 taker_account, 4 the two fees
(the first eight fields are always there; shape 0 is a trade of orders without accounts on a
pair without fees)."""
EVENT_SHAPES: Final = _shapes(EVENT_NAMES, EVENT_BITS)
"""An event's field names by its shape: bit 1 order_id, 2 filled_quantity, 4
remaining_quantity, 8 cancelled_quantity, 16 reason and detail, 32 cancelled_orders, 64
account, 128 resting_order (``input_id`` and ``status`` are always there)."""

Row = list[int | str]
"""Output entries as the commit sends them, one list per stream: for each entry its shape (an
:data:`TRADE_SHAPES` or :data:`EVENT_SHAPES` index), then its values in field order. The names
stay on the server, in the commit script."""


def add_trade(rows: Row, t: Trade) -> None:
    """Append a trade to ``rows``: its :data:`TRADE_SHAPES` index, then its values."""
    rows += (
        0, str(t.trade_id), t.taker_order_id, t.maker_order_id, str(t.price), str(t.quantity),
        str(t.timestamp), t.taker_side, t.input_id or "",
    )  # fmt: skip
    if t.maker_account is None and t.taker_account is None and t.maker_fee is None:
        return
    at = len(rows) - 9
    shape = 0
    if t.maker_account is not None:
        shape |= 1
        rows.append(t.maker_account)
    if t.taker_account is not None:
        shape |= 2
        rows.append(t.taker_account)
    if t.maker_fee is not None:
        shape |= 4
        rows += (str(t.maker_fee), str(t.taker_fee))
    rows[at] = shape


def add_event(rows: Row, e: Event) -> None:
    """Append an event to ``rows``: its :data:`EVENT_SHAPES` index, then its values (fields
    that do not apply are left out)."""
    oid = e.order_id
    row: Row
    if oid is None:
        shape, row = 0, [0, e.input_id or "", e.status]
    else:
        shape, row = 1, [1, e.input_id or "", oid, e.status]
    if (q := e.filled_quantity) is not None:
        shape |= 2
        row.append(str(q))
    if (q := e.remaining_quantity) is not None:
        shape |= 4
        row.append(str(q))
    if (q := e.cancelled_quantity) is not None:
        shape |= 8
        row.append(str(q))
    if e.reason is not None:
        shape |= 16
        row += (e.reason, e.detail or "")
    if (q := e.cancelled_orders) is not None:
        shape |= 32
        row.append(str(q))
    if e.account is not None:
        shape |= 64
        row.append(e.account)
    if e.resting_order is not None:
        shape |= 128
        row.append(str(e.resting_order))
    row[0] = shape
    rows += row


def _pairs(names: tuple[str, ...], values: Row) -> list[str]:
    return [str(x) for pair in zip(names, values, strict=True) for x in pair]


def trade_fields(t: Trade) -> list[str]:
    """A trade as the flat field/value list of its ``trades:{P}`` entry."""
    rows: Row = []
    add_trade(rows, t)
    return _pairs(TRADE_SHAPES[int(rows[0])], rows[1:])


def event_fields(e: Event) -> list[str]:
    """An event as the flat field/value list of its ``events:{P}`` entry (absent: left out)."""
    rows: Row = []
    add_event(rows, e)
    return _pairs(EVENT_SHAPES[int(rows[0])], rows[1:])


def _strings(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }


def trade_from_fields(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> Trade:
    """A ``trades:{P}`` entry's fields back as a :class:`Trade`."""
    return msgspec.convert(_strings(fields), Trade, strict=False)


def event_from_fields(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> Event:
    """An ``events:{P}`` entry's fields back as an :class:`Event`."""
    return msgspec.convert(_strings(fields), Event, strict=False)
