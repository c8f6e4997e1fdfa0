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
_SHAPE_BITS: Final = {
    "order_id": 1, "filled_quantity": 2, "remaining_quantity": 4, "cancelled_quantity": 8,
    "reason": 16, "detail": 16,
}  # fmt: skip
EVENT_SHAPES: Final = tuple(
    tuple(name for name in EVENT_NAMES if name not in _SHAPE_BITS or shape & _SHAPE_BITS[name])
    for shape in range(32)
)
"""An event's field names by its shape: bit 1 order_id, 2 filled_quantity, 4
remaining_quantity, 8 cancelled_quantity, 16 reason and detail (``input_id`` and ``status``
are always there)."""

Row = list[int | str]
"""Output entries as the commit sends them, one list per stream: for each entry its shape (an
:data:`EVENT_SHAPES` index for an event; always 0 for a trade), then its values in field order.
The names stay on the server, in the commit script."""


def add_trade(rows: Row, t: Trade) -> None:
    """Append a trade to ``rows`` (shape 0, :data:`TRADE_NAMES`)."""
    rows += (
        0, str(t.trade_id), t.taker_order_id, t.maker_order_id, str(t.price), str(t.quantity),
        str(t.timestamp), t.taker_side, t.input_id or "",
    )  # fmt: skip


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
    row[0] = shape
    rows += row


def _pairs(names: tuple[str, ...], values: Row) -> list[str]:
    return [str(x) for pair in zip(names, values, strict=True) for x in pair]


def trade_fields(t: Trade) -> list[str]:
    """A trade as the flat field/value list of its ``trades:{P}`` entry."""
    rows: Row = []
    add_trade(rows, t)
    return _pairs(TRADE_NAMES, rows[1:])


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
