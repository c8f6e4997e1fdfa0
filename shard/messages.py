"""Typed messages: what producers send to a shard and what the shard publishes.

Inputs (``orders:{P}``) are a tagged union on the ``type`` field: :class:`Order`, :class:`Cancel`,
:class:`Amend` and :class:`CancelAll`. An input that cannot be understood decodes to
:class:`Invalid`, which carries the reason code and a sentence for its ``rejected`` event;
decoding never raises (see :mod:`shard.decode`).

Outputs are :class:`Trade` (``trades:{P}``) and :class:`Event` (``events:{P}``: exactly one per
input, preceded by one *order event* per resting order the input removed or reduced without a
trade), built positionally on the hot path. Encoded with ``omit_defaults``, an output leaves out
only what does not apply to it, which is exactly a field whose default is ``None``: every field
of a trade but ``input_id`` has no default and is always there, and an event's value of 0 (a
price, a timestamp, a ``filled_quantity``) is never mistaken for absent.

All prices are integers (price x 10^8), all quantities integers, timestamps integer milliseconds.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

INT64_MAX: Final = 2**63 - 1
MAX_ORDER_ID_BYTES: Final = 64
MAX_ACCOUNT_BYTES: Final = 64
NO_TIMESTAMP: Final = -1
"""Default of an absent ``timestamp`` while decoding; the decoder replaces it, so a decoded
message always carries a timestamp >= 0."""

SHOWN_CHARS: Final = 40
"""A value shown in a detail sentence is cut to this many characters."""


class Verbatim:
    """A value :func:`show` prints as written: the decoder keeps a JSON number the shard cannot
    take as an int64 (a fraction, an exponent, ``-0``, more than 20 characters), or a
    ``NaN``/``Infinity`` constant, in one for the detail."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _as_written(value: object) -> msgspec.Raw:
    if isinstance(value, Verbatim):
        return msgspec.Raw(value.text.encode())
    raise TypeError(type(value).__name__)


_encode_shown = msgspec.json.Encoder(enc_hook=_as_written).encode


def show(value: object) -> str:
    """A value as a short, printable literal for a ``detail`` sentence."""
    if isinstance(value, bytes | bytearray):
        text = repr(bytes(value))
    elif isinstance(value, str):
        text = repr(value)
    elif _jsonable(value):
        try:
            text = _encode_shown(value).decode()
        except (TypeError, ValueError):  # a lone surrogate in a string, say
            text = repr(value)
    else:
        text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _jsonable(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float | list | dict)


Side = Literal["buy", "sell"]
OrderType = Literal["limit", "market", "ioc", "fok", "post_only"]

StpMode = Literal["cancel_taker", "cancel_maker", "cancel_both", "decrement", "none"]

SIDES: Final = ("buy", "sell")
ORDER_TYPES: Final = ("limit", "market", "ioc", "fok", "post_only")
STP_MODES: Final = ("cancel_taker", "cancel_maker", "cancel_both", "decrement", "none")
"""Self-trade prevention modes (see :mod:`shard.engine`)."""

# Constrained integer types used by the typed (fast) JSON decoder. The hand-written validator in
# shard.decode applies the same rules and is the one that explains a failure.
OrderId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ORDER_ID_BYTES)]
Quantity = Annotated[int, msgspec.Meta(gt=0, le=INT64_MAX)]
Price = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
Timestamp = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
Account = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ACCOUNT_BYTES)]


class Order(msgspec.Struct, tag="order", tag_field="type", forbid_unknown_fields=True, gc=False):
    """A new order. ``price`` is required except for ``market`` orders, which must not carry one."""

    order_id: OrderId
    side: Side
    quantity: Quantity
    price: Price | None = None
    order_type: OrderType = "limit"
    timestamp: Timestamp = NO_TIMESTAMP
    account: Account | None = None
    """The owner, kept with the resting order and carried on its trades and events."""
    stp: StpMode | None = None
    """Self-trade prevention mode when it meets its own account's order (None: the pair's)."""


class Cancel(msgspec.Struct, tag="cancel", tag_field="type", forbid_unknown_fields=True, gc=False):
    """Remove a live order (with ``account``: only an order of that account)."""

    order_id: OrderId
    timestamp: Timestamp = NO_TIMESTAMP
    account: Account | None = None


class Amend(msgspec.Struct, tag="amend", tag_field="type", forbid_unknown_fields=True, gc=False):
    """Change a live order's remaining ``quantity`` and/or ``price`` (at least one of them)."""

    order_id: OrderId
    quantity: Quantity | None = None
    price: Price | None = None
    timestamp: Timestamp = NO_TIMESTAMP
    account: Account | None = None
    """With it, the amend applies only to an order of that account."""


class CancelAll(
    msgspec.Struct, tag="cancel_all", tag_field="type", forbid_unknown_fields=True, gc=False
):
    """Remove every live order of ``account`` (of ``side`` only, if given)."""

    account: Account
    side: Side | None = None
    timestamp: Timestamp = NO_TIMESTAMP


class Invalid(msgspec.Struct, gc=False):
    """An input that cannot be applied: becomes a ``rejected`` event, changes nothing. The
    event carries ``account`` when the input gives a valid one, so that its owner sees it."""

    order_id: str | None
    reason: str
    detail: str
    account: str | None = None


Input = Order | Cancel | Amend | CancelAll | Invalid


class Trade(msgspec.Struct, omit_defaults=True, gc=False):
    """One execution: ``quantity`` at the maker's ``price``, stamped with the taker's timestamp.

    The first seven fields are required, so each one is encoded even when it is 0 (a price of 0
    is a valid limit price, a timestamp of 0 a valid time). The rest default to ``None`` and are
    left out where they do not apply: ``input_id`` (the stream ID of the taker's input entry;
    none in ``shard replay``), an account of an order that has none, the fees of a pair that
    charges none.
    """

    trade_id: int
    taker_order_id: str
    maker_order_id: str
    price: int
    quantity: int
    timestamp: int
    taker_side: str
    input_id: str | None = None
    maker_account: str | None = None
    taker_account: str | None = None
    maker_fee: int | None = None
    """In the price's units (quote x 10^8); negative for a rebate. None: the pair has no fees."""
    taker_fee: int | None = None


# Event statuses.
RESTING: Final = "resting"
PARTIALLY_FILLED: Final = "partially_filled"
FILLED: Final = "filled"
CANCELLED: Final = "cancelled"
AMENDED: Final = "amended"
REJECTED: Final = "rejected"
REDUCED: Final = "reduced"
"""Of an order event only: a resting order that self-trade prevention reduced and left live."""


class Event(msgspec.Struct, omit_defaults=True, gc=False):
    """The one outcome of one input entry.

    ``filled_quantity`` is what this input traded; ``remaining_quantity`` what rests in the book
    afterwards; ``cancelled_quantity`` what this input took out of the book or did not let rest
    (a cancel, or the unfilled rest of a market/ioc/fok order). ``reason``/``detail`` explain a
    rejection or a cancelled remainder. ``cancelled_orders`` is how many orders a ``cancel_all``
    removed; ``account`` the input's (an order event: the resting order's); ``resting_order``
    is 1 on an order event (about the resting order ``order_id``, which another input removed
    or reduced without a trade) and absent on an input's own event. A field that does not apply
    is ``None`` and left out of the encoded form; one that applies is an ``int`` or a ``str``
    and always encoded, 0 included.
    ``status`` has a default only so that the optional fields can follow it; it is always set.
    """

    input_id: str | None = None
    order_id: str | None = None
    status: str = ""
    filled_quantity: int | None = None
    remaining_quantity: int | None = None
    cancelled_quantity: int | None = None
    reason: str | None = None
    detail: str | None = None
    cancelled_orders: int | None = None
    account: str | None = None
    resting_order: int | None = None
