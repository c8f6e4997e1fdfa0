"""The input rules: a mapping of field names to values becomes a typed message, or an
:class:`~shard.messages.Invalid` with the reason code and a sentence naming the broken rule.
Nothing here raises.

:func:`validate` is the arbiter of every refusal: the decoders' fast paths (:mod:`shard.decode`,
:mod:`shard.decode_json`) accept only what it accepts identically, and hand it everything else,
so it is the one place that explains a failure. The rules themselves are listed in
:mod:`shard.decode`.

Cost: O(fields) in Python, a few lookups and string checks per field; only input the fast paths
did not take comes here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, TypeVar

from shard.messages import (
    INT64_MAX,
    MAX_ACCOUNT_BYTES,
    MAX_ORDER_ID_BYTES,
    ORDER_TYPES,
    SIDES,
    STP_MODES,
    Amend,
    Cancel,
    CancelAll,
    Input,
    Invalid,
    Order,
    Verbatim,
    show,
)

MALFORMED: Final = "malformed"
MISSING_FIELD: Final = "missing_field"
UNKNOWN_TYPE: Final = "unknown_type"
INVALID_FIELD: Final = "invalid_field"

KNOWN_FIELDS: Final = frozenset(
    ("type", "order_id", "timestamp", "side", "order_type", "price", "quantity", "account", "stp")
)
OWNER_FIELDS: Final = frozenset(("account", "stp"))
"""The fields of issue 17: the decoders' fast paths read them apart from the others."""
APPLIES: Final = {
    "order": KNOWN_FIELDS,
    "cancel": frozenset(("type", "order_id", "timestamp", "account")),
    "amend": frozenset(("type", "order_id", "timestamp", "price", "quantity", "account")),
    "cancel_all": frozenset(("type", "account", "side", "timestamp")),
}
CANCEL_ALL: Final = "cancel_all"
SHOWN_NAMES: Final = 8
"""At most this many field names are listed in a detail, each at most SHOWN_CHARS long."""

# Names shown bare in a detail; any other name is quoted.
_BARE_NAMES: Final = KNOWN_FIELDS | {"data"}


class _Bad(Exception):
    """Internal: carries an Invalid out of the validator's helpers (never escapes this module)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def show_name(name: str | bytes) -> str:
    """A field name for a detail: a known one bare, any other quoted (bytes that are not UTF-8,
    or a name read from them with surrogateescape, as bytes)."""
    if isinstance(name, bytes):
        try:
            name = name.decode()
        except UnicodeDecodeError:
            return show(name)
    elif not name.isascii():
        try:
            name.encode()
        except UnicodeEncodeError:
            try:
                return show(name.encode("utf-8", "surrogateescape"))
            except UnicodeEncodeError:  # a lone surrogate from a JSON escape
                return show(name)
    return name if name in _BARE_NAMES else show(name)


_Name = TypeVar("_Name", str, bytes)


def first_repeat(names: Sequence[_Name]) -> tuple[_Name, int]:
    """The first name that appears again, and how often it appears. O(names)."""
    seen: set[_Name] = set()
    for name in names:
        if name in seen:
            return name, names.count(name)
        seen.add(name)
    raise AssertionError("no name repeats")


def repeated_detail(name: str | bytes, count: int) -> str:
    """The detail of a refusal for a name given ``count`` times."""
    times = "twice" if count == 2 else f"{count} times"
    return f"field {show_name(name)} appears {times}; send each field once"


def missing_timestamp(order_id: str | None, account: str | None = None) -> Invalid:
    """The refusal of a message with no timestamp and no stream entry ID to take it from."""
    return Invalid(
        order_id,
        MISSING_FIELD,
        "timestamp is missing and there is no stream entry ID to take it from",
        account,
    )


def validate(fields: Mapping[str, object], default_timestamp: int | None) -> Input:
    """Apply every input rule to a mapping of field names to values; the arbiter of rejections.

    Values may be ``bytes``/``str`` (flat form) or JSON values (JSON form).
    """
    order_id = readable_id(fields.get("order_id"), fields.get("type"))
    try:
        return _validate(fields, default_timestamp)
    except _Bad as bad:
        return Invalid(order_id, bad.reason, bad.detail, _account_of(fields))


def _account_of(fields: Mapping[str, object]) -> str | None:
    """The ``account`` of a refused input if it is a valid one (else None), for its event."""
    try:
        return _identifier(fields, "account", MAX_ACCOUNT_BYTES)
    except _Bad:
        return None


def _validate(fields: Mapping[str, object], default_timestamp: int | None) -> Input:
    present = {name for name, value in fields.items() if value is not None}
    if not KNOWN_FIELDS.intersection(present):
        names = sorted(map(show_name, fields))
        listed = ", ".join(names[:SHOWN_NAMES]) or "none"
        if len(names) > SHOWN_NAMES:
            listed += f" and {len(names) - SHOWN_NAMES} more"
        raise _Bad(MALFORMED, f"the entry has no field the shard knows (fields: {listed})")
    kind = _text(fields, "type", required=True)
    applies = APPLIES.get(kind)  # type: ignore[arg-type]
    if applies is None:
        raise _Bad(
            UNKNOWN_TYPE, f"type must be order, cancel, amend or cancel_all, got {show(kind)}"
        )
    extra = sorted(KNOWN_FIELDS.intersection(present) - applies)
    if extra:
        raise _Bad(INVALID_FIELD, f"field {extra[0]} does not apply to {kind} messages")
    if kind == CANCEL_ALL:
        account = _identifier(fields, "account", MAX_ACCOUNT_BYTES)
        if account is None:
            raise _Bad(
                MISSING_FIELD, "account is missing; a cancel_all cancels the orders of one account"
            )
        side = _side(fields, required=False)
        timestamp = _timestamp(fields, default_timestamp)
        return CancelAll(account, side, timestamp)  # type: ignore[arg-type]
    order_id = _identifier(fields, "order_id", MAX_ORDER_ID_BYTES)
    if order_id is None:
        raise _Bad(MISSING_FIELD, "order_id is missing")
    account = _identifier(fields, "account", MAX_ACCOUNT_BYTES)
    timestamp = _timestamp(fields, default_timestamp)
    if kind == "cancel":
        return Cancel(order_id, timestamp, account)
    if kind == "amend":
        quantity = _integer(fields, "quantity", minimum=1)
        price = _integer(fields, "price", minimum=0)
        if quantity is None and price is None:
            raise _Bad(MISSING_FIELD, "an amend needs quantity or price (or both)")
        return Amend(order_id, quantity, price, timestamp, account)
    side = _side(fields, required=True)
    order_type = _text(fields, "order_type", required=False) or "limit"
    if order_type not in ORDER_TYPES:
        raise _Bad(
            INVALID_FIELD,
            f"order_type must be one of {', '.join(ORDER_TYPES)}, got {show(order_type)}",
        )
    quantity = _integer(fields, "quantity", minimum=1)
    if quantity is None:
        raise _Bad(MISSING_FIELD, "quantity is missing; an order needs a quantity > 0")
    price = _integer(fields, "price", minimum=0)
    if order_type == "market" and price is not None:
        raise _Bad(INVALID_FIELD, f"a market order must not carry a price, got price {price}")
    if order_type != "market" and price is None:
        raise _Bad(MISSING_FIELD, f"price is missing; a {order_type} order needs a price >= 0")
    stp = _text(fields, "stp", required=False)
    if stp is not None:
        if stp not in STP_MODES:
            raise _Bad(INVALID_FIELD, f"stp must be one of {', '.join(STP_MODES)}, got {show(stp)}")
        if account is None:
            raise _Bad(
                INVALID_FIELD,
                f"stp needs an account: only an order with an account can meet its own orders "
                f"(stp {show(stp)}, no account)",
            )
    return Order(order_id, side, quantity, price, order_type, timestamp, account, stp)  # type: ignore[arg-type]


def readable_id(value: object, kind: object = None) -> str | None:
    """The order_id for the event if it can be read at all, else None; always None for a
    message whose ``type`` (``kind``) is ``cancel_all``, which has no order_id."""
    if kind == CANCEL_ALL or kind == b"cancel_all":
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        try:
            size = len(value.encode())
        except UnicodeEncodeError:  # a lone surrogate
            return None
        if 0 < size <= MAX_ORDER_ID_BYTES:
            return value
    return None


def _text(fields: Mapping[str, object], name: str, *, required: bool) -> str | None:
    value = fields.get(name)
    if value is None:
        if required:
            raise _Bad(MISSING_FIELD, f"{name} is missing")
        return None
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise _Bad(INVALID_FIELD, f"{name} is not valid UTF-8: {show(value)}") from None
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:  # a lone surrogate, from a JSON escape such as \ud800
                raise _Bad(
                    INVALID_FIELD, f"{name} is not valid UTF-8 (a lone surrogate): {show(value)}"
                ) from None
        return value
    raise _Bad(INVALID_FIELD, f"{name} must be a string, got {show(value)}")


def _identifier(fields: Mapping[str, object], name: str, limit: int) -> str | None:
    """An optional identifier (``order_id``, ``account``): 1 to ``limit`` bytes of UTF-8."""
    value = _text(fields, name, required=False)
    if value is None:
        return None
    size = len(value.encode())
    if size == 0:
        raise _Bad(INVALID_FIELD, f"{name} must not be empty")
    if size > limit:
        raise _Bad(
            INVALID_FIELD, f"{name} must be at most {limit} bytes, got {size}: {show(value)}"
        )
    return value


def _side(fields: Mapping[str, object], *, required: bool) -> str | None:
    side = _text(fields, "side", required=required)
    if side is not None and side not in SIDES:
        raise _Bad(INVALID_FIELD, f"side must be buy or sell, got {show(side)}")
    return side


def _timestamp(fields: Mapping[str, object], default_timestamp: int | None) -> int:
    timestamp = _integer(fields, "timestamp", minimum=0)
    if timestamp is None:
        if default_timestamp is None:
            raise _Bad(MISSING_FIELD, missing_timestamp(None).detail)
        return default_timestamp
    return timestamp


def _integer(fields: Mapping[str, object], name: str, *, minimum: int) -> int | None:
    """An optional non-negative integer field: a JSON integer, or decimal ASCII digits without
    a sign (leading zeros are read: ``007`` is 7)."""
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, bytes | str):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        if text.startswith(("-", "+")):
            raise _Bad(INVALID_FIELD, f"{name} must be written without a sign, got {show(value)}")
        if not (text.isascii() and text.isdigit()):
            raise _Bad(INVALID_FIELD, f"{name} must be a decimal integer, got {show(value)}")
        if len(text.lstrip("0")) > 19:  # past int64 whatever the digits; int() would be slow
            raise _Bad(INVALID_FIELD, f"{name} does not fit a signed 64-bit integer: {show(value)}")
        number = int(text)
    elif isinstance(value, Verbatim):  # a JSON number as written: -0, a fraction, 5,000 digits
        if value.text == "-0":
            raise _Bad(INVALID_FIELD, f"{name} must be written without a sign, got -0")
        if value.text.lstrip("-").isdigit():
            raise _Bad(INVALID_FIELD, f"{name} does not fit a signed 64-bit integer: {show(value)}")
        raise _Bad(INVALID_FIELD, f"{name} must be an integer, got {show(value)}")
    else:
        raise _Bad(INVALID_FIELD, f"{name} must be an integer, got {show(value)}")
    if not -INT64_MAX - 1 <= number <= INT64_MAX:
        raise _Bad(INVALID_FIELD, f"{name} does not fit a signed 64-bit integer: {show(value)}")
    if number < minimum:
        bound = "greater than 0" if minimum == 1 else f"at least {minimum}"
        raise _Bad(INVALID_FIELD, f"{name} must be {bound}, got {number}")
    return number
