"""Decode input entries into typed messages, once, at the edge. Nothing here raises.

Two forms reach a shard (see CONTRACT.md): flat field/value pairs (values decimal ASCII) and a
single ``data`` field holding the message as a JSON object; ``shard replay`` reads the JSON form
one object per line.

Every entry becomes an :data:`~shard.messages.Input`: a typed :class:`~shard.messages.Order`,
:class:`~shard.messages.Cancel` or :class:`~shard.messages.Amend`, or an
:class:`~shard.messages.Invalid` with a stable reason code and a sentence naming the field and
its value:

=================== ====================================================================
reason              when
=================== ====================================================================
``malformed``       not UTF-8, not JSON (``NaN`` and ``Infinity`` are not), not a JSON
                    object, a name given twice, no field the shard knows, data + fields
``missing_field``   a required field is absent (``type``, ``order_id``, ``side``, ...)
``unknown_type``    ``type`` is not ``order``, ``cancel`` or ``amend``
``invalid_field``   a value breaks its rule, or a known field that does not apply to the type
=================== ====================================================================

Rules: integers are decimal ASCII digits (JSON integers in the JSON form) that fit a signed
64-bit integer, with no sign (not even ``-0``), spaces, exponent or fraction; leading zeros are
accepted in the flat form (``007`` is 7; JSON forbids them). ``quantity`` > 0; ``price`` >= 0,
required except for ``market``, where it must be absent; ``timestamp`` >= 0, defaulting to the
stream entry's millisecond time (``default_timestamp``); ``order_id`` 1-64 bytes of UTF-8. A JSON
``null`` counts as absent. Unknown field names are ignored, but no name, known or not, may
appear twice in an entry or in any JSON object of a message (a reader that keeps the first
would see another message than one that keeps the last). A JSON number in a known field that
is no int64 (``1e400``, 5,000 digits, ``-0``) or a ``NaN``/``Infinity`` there is refused as
that field's ``invalid_field``; elsewhere a number is ignored with its field, but ``NaN`` and
``Infinity`` make the message ``malformed``.

Cost: the JSON form first tries msgspec's typed decoder (one C call) and two guards it needs,
a count of the colons and a look for ``-0`` (see :func:`decode_json`). Only input they do not
take goes through :func:`_slow_json`: msgspec's untyped reading where that is provably the
careful one, else :func:`_careful_json` (the standard library's parser, with hooks that mark
repeated names and keep numbers as written); then :func:`validate`, the hand-written rules
that explain the refusal. The flat form is decoded from a cached layout of its names
(:func:`_fast_flat`) when they are distinct and known, and through :func:`validate` otherwise.
The fast paths agree with the slow ones on every input (property tests hold them to it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Final, TypeVar

import msgspec

from shard.messages import (
    INT64_MAX,
    MAX_ORDER_ID_BYTES,
    NO_TIMESTAMP,
    ORDER_TYPES,
    SIDES,
    Amend,
    Cancel,
    Input,
    Invalid,
    Order,
    Verbatim,
    show,
)

MALFORMED: Final = "malformed"
OVERSIZE: Final = "oversize"
MISSING_FIELD: Final = "missing_field"
UNKNOWN_TYPE: Final = "unknown_type"
INVALID_FIELD: Final = "invalid_field"

KNOWN_FIELDS: Final = frozenset(
    ("type", "order_id", "timestamp", "side", "order_type", "price", "quantity")
)
APPLIES: Final = {
    "order": KNOWN_FIELDS,
    "cancel": frozenset(("type", "order_id", "timestamp")),
    "amend": frozenset(("type", "order_id", "timestamp", "price", "quantity")),
}
SHOWN_NAMES: Final = 8
"""At most this many field names are listed in a detail, each at most SHOWN_CHARS long."""

_typed = msgspec.json.Decoder(Order | Cancel | Amend)
_untyped = msgspec.json.Decoder()
# What msgspec raises on hostile JSON: bad syntax or types (DecodeError and its ValidationError),
# invalid UTF-8 inside a string, and nesting deeper than the interpreter's recursion limit.
_JSON_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
# Names shown bare in a detail; any other name is quoted.
_BARE_NAMES: Final = KNOWN_FIELDS | {"data"}


class _Bad(Exception):
    """Internal: carries an Invalid out of the validator's helpers (never escapes this module)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def _show_name(name: str | bytes) -> str:
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


def _first_repeat(names: Sequence[_Name]) -> tuple[_Name, int]:
    """The first name that appears again, and how often it appears. O(names)."""
    seen: set[_Name] = set()
    for name in names:
        if name in seen:
            return name, names.count(name)
        seen.add(name)
    raise AssertionError("no name repeats")


def _repeated(name: str | bytes, count: int) -> str:
    times = "twice" if count == 2 else f"{count} times"
    return f"field {_show_name(name)} appears {times}; send each field once"


# -- JSON form -------------------------------------------------------------------------------------


def decode_json(data: bytes | str, default_timestamp: int | None = None) -> Input:
    """Decode one message in the JSON form (a ``data`` field, or a line of ``shard replay``).

    The typed decoder's answer stands only where it is the validator's: it cannot express the
    cross-field rules nor the UTF-8 length of a non-ASCII order ID, and it reads two things
    too kindly, which two guards catch:

    * a repeated name, of which it keeps the last value. Each name in a JSON object is
      followed by a colon, so a message with no more colons than the fields its struct proves
      present names none twice, however its names are escaped. A colon inside a value, an
      explicit null or an explicit ``"order_type": "limit"`` sends the message the slow way,
      which is slower, never wrong;
    * ``-0``, which it reads as 0: only a field that decoded to 0 can have been written so.

    Cost: msgspec's typed decoder, a few comparisons and a count of the colons (a C loop over
    the message) for a canonical message; any other goes through :func:`_slow_json`, several
    times slower."""
    try:
        msg: Order | Cancel | Amend = _typed.decode(data)
    except _JSON_ERRORS:
        return _slow_json(data, default_timestamp)
    oid = msg.order_id
    if not oid.isascii() and len(oid.encode()) > MAX_ORDER_ID_BYTES:
        return _slow_json(data, default_timestamp)
    timestamp = msg.timestamp
    if type(msg) is Order:
        price = msg.price
        order_type = msg.order_type
        if price is None:
            if order_type != "market":
                return _slow_json(data, default_timestamp)
            shown = 5  # type, order_id, side, quantity, order_type
        elif order_type == "limit":
            shown = 5  # type, order_id, side, quantity, price
        elif order_type == "market":
            return _slow_json(data, default_timestamp)
        else:
            shown = 6
    elif type(msg) is Amend:
        price = msg.price
        if msg.quantity is None:
            if price is None:
                return _slow_json(data, default_timestamp)
            shown = 3
        else:
            shown = 3 if price is None else 4
    else:
        price = None
        shown = 2
    if timestamp != NO_TIMESTAMP:
        shown += 1
    # The colons counted as what deleting them removes: cheaper than count(), which parses
    # its arguments the slow way.
    try:
        colons = len(data) - len(data.replace(b":", b""))  # type: ignore[arg-type]
        minus_zero: bytes | str = b"-0"
    except TypeError:  # a str
        colons = len(data) - len(data.replace(":", ""))  # type: ignore[arg-type]
        minus_zero = "-0"
    if colons > shown or (
        (price == 0 or timestamp == 0) and minus_zero in data  # type: ignore[operator]
    ):
        return _slow_json(data, default_timestamp)
    if timestamp == NO_TIMESTAMP:
        if default_timestamp is None:
            return _missing_timestamp(oid)
        msg.timestamp = default_timestamp
    return msg


class _Constant(Verbatim):
    """``NaN``, ``Infinity`` or ``-Infinity``: not JSON, but named as a known field's value."""

    __slots__ = ()


class _Repeats(dict[str, object]):
    """A JSON object that named a member more than once: the first such name, how often."""

    __slots__ = ("count", "name")

    name: str
    count: int


def _json_int(text: str) -> int | Verbatim:
    """A JSON integer as an int; kept as written when it is ``-0`` or longer than int64's 20
    characters (``int()`` of thousands of digits is slow, and refused past 4,300)."""
    if len(text) > 20 or text == "-0":
        return Verbatim(text)
    return int(text)


def _json_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    repeats = _Repeats(obj)
    repeats.name, repeats.count = _first_repeat([name for name, _ in pairs])
    return repeats


# Built once: a decoder costs as much to build as a short message to parse.
_careful = json.JSONDecoder(
    object_pairs_hook=_json_object,
    parse_constant=_Constant,
    parse_int=_json_int,
    parse_float=Verbatim,
)


def _slow_json(data: bytes | str, default_timestamp: int | None) -> Input:
    """A message the fast path did not take: msgspec's untyped reading where it is provably
    the careful one (:func:`_plain`), else :func:`_careful_json`; then :func:`validate`.

    Cost: msgspec's untyped decoder and a look at each value for a message of plain values
    (an unknown field, a rule broken); the careful path costs about twice as much."""
    try:
        obj = _untyped.decode(data)
    except _JSON_ERRORS:
        return _careful_json(data, default_timestamp)
    if type(obj) is dict and _plain(obj, data):
        return validate(obj, default_timestamp)
    return _careful_json(data, default_timestamp)


def _plain(obj: dict[str, object], data: bytes | str) -> bool:
    """Whether msgspec's untyped reading of a JSON object is the careful path's: its values are
    strings, integers, booleans or nulls (a float is shown as written only by the careful
    path, and only it looks into lists and objects), no name repeats (no more colons than
    members, as in :func:`decode_json`), and no 0 may have been written ``-0``."""
    zero = False
    for value in obj.values():
        kind = type(value)
        if kind is int:
            zero = zero or value == 0
        elif not (kind is str or value is None or kind is bool):
            return False
    if isinstance(data, str):
        return len(data) - len(data.replace(":", "")) <= len(obj) and not (zero and "-0" in data)
    return len(data) - len(data.replace(b":", b"")) <= len(obj) and not (zero and b"-0" in data)


def _careful_json(data: bytes | str, default_timestamp: int | None) -> Input:
    """The JSON form the careful way: strict UTF-8, the standard library's parser with hooks
    that mark an object naming a member twice and keep a number the shard cannot take as
    written (so :func:`validate` can name its field), a look through the values for marks and
    ``NaN``, then :func:`validate`.

    Cost: the parser and its hooks in Python, a few times msgspec's."""
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            return Invalid(
                None, MALFORMED, f"the message is not valid UTF-8 (at byte {exc.start}): "
                f"{show(data)}",
            )  # fmt: skip
    try:
        obj = _careful.decode(text)
    except RecursionError:
        return Invalid(None, MALFORMED, f"the message is nested too deeply: {show(text)}")
    except ValueError as exc:  # json.JSONDecodeError
        at = f" (at character {exc.pos})" if isinstance(exc, json.JSONDecodeError) else ""
        return Invalid(None, MALFORMED, f"the message is not valid JSON{at}: {show(text)}")
    if not isinstance(obj, dict):
        _, stray = _marks([obj])
        if stray is not None:
            return _not_a_number(None, stray)
        return Invalid(None, MALFORMED, f"the message must be a JSON object, got {show(obj)}")
    order_id = _readable_id(obj.get("order_id"))
    if type(obj) is _Repeats:
        return Invalid(None if obj.name == "order_id" else order_id, MALFORMED,
                       _repeated(obj.name, obj.count))  # fmt: skip
    # A known field holding NaN is validate()'s to name; every other value is looked through.
    nested, stray = _marks(
        [v for k, v in obj.items() if type(v) is not _Constant or k not in KNOWN_FIELDS]
    )
    if nested is not None:
        return Invalid(
            order_id,
            MALFORMED,
            f"a nested object names {_show_name(nested.name)} more than once; send each name once",
        )
    if stray is not None:
        return _not_a_number(order_id, stray)
    return validate(obj, default_timestamp)


def _marks(values: list[object]) -> tuple[_Repeats | None, _Constant | None]:
    """The first object that names a member twice and the first NaN/Infinity among values and
    everything nested in them, breadth first. O(values), without recursion (the parser took
    nesting as deep as the recursion limit)."""
    nested: _Repeats | None = None
    stray: _Constant | None = None
    for value in values:  # the list grows as the loop goes: breadth first
        if isinstance(value, dict):
            if nested is None and isinstance(value, _Repeats):
                nested = value
            values.extend(value.values())
        elif isinstance(value, list):
            values.extend(value)
        elif stray is None and isinstance(value, _Constant):
            stray = value
    return nested, stray


def _not_a_number(order_id: str | None, constant: Verbatim) -> Invalid:
    detail = f"the message is not valid JSON: {constant.text} is not a JSON number"
    return Invalid(order_id, MALFORMED, detail)


def _missing_timestamp(order_id: str | None) -> Invalid:
    return Invalid(
        order_id,
        MISSING_FIELD,
        "timestamp is missing and there is no stream entry ID to take it from",
    )


# -- flat form -------------------------------------------------------------------------------------

_SIDES: Final = {b"buy": "buy", b"sell": "sell"}
_ORDER_TYPES: Final = {t.encode(): t for t in ORDER_TYPES}
_FAST_KEYS: Final = {
    b"order": frozenset(k.encode() for k in APPLIES["order"]),
    b"cancel": frozenset(k.encode() for k in APPLIES["cancel"]),
    b"amend": frozenset(k.encode() for k in APPLIES["amend"]),
}


_NAMES: Final = frozenset().union(*_FAST_KEYS.values())
Layout = tuple[frozenset[bytes], int, int, int, int, int, int, int]
"""Where a flat entry's fields are, by the order of its names: the kinds whose fields it may
carry, then the list index of the value of ``type``, ``order_id``, ``timestamp``, ``quantity``,
``price``, ``side`` and ``order_type`` (0: absent; a value's index is always odd)."""
_LAYOUTS: dict[tuple[bytes, ...], Layout | None] = {}
_UNSEEN: Final[Layout] = (frozenset(), 0, 0, 0, 0, 0, 0, 0)


def _new_layout(names: tuple[bytes, ...]) -> Layout | None:
    if len(set(names)) != len(names) or b"type" not in names or b"order_id" not in names:
        return None
    kinds = frozenset(kind for kind, allowed in _FAST_KEYS.items() if allowed.issuperset(names))
    if not kinds:
        return None
    at = {name: 2 * i + 1 for i, name in enumerate(names)}
    return (
        kinds, at[b"type"], at[b"order_id"], at.get(b"timestamp", 0), at.get(b"quantity", 0),
        at.get(b"price", 0), at.get(b"side", 0), at.get(b"order_type", 0),
    )  # fmt: skip


def _layout(pairs: list[bytes]) -> Layout | None:
    """The layout of a flat ``[name, value, ...]`` list whose names are all distinct, known
    fields (else None). Cost: one dict lookup on the names. Only orders of distinct known names
    are remembered, fewer than 14,000, so hostile names (unknown or repeated) cannot grow the
    cache."""
    if len(pairs) & 1:
        return None
    names = tuple(pairs[::2])
    layout = _LAYOUTS.get(names, _UNSEEN)
    if layout is _UNSEEN:
        layout = _new_layout(names)
        if len(names) <= len(_NAMES) and _NAMES.issuperset(names) and len(set(names)) == len(names):
            _LAYOUTS[names] = layout
    return layout


_natural = msgspec.json.Decoder(Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]).decode
_positive = msgspec.json.Decoder(Annotated[int, msgspec.Meta(gt=0, le=INT64_MAX)]).decode
"""Digits to an int64 in C: half the instructions of ``int(bytes)``. Callers check isdigit()
first (JSON would allow surrounding spaces); JSON refuses leading zeros, which then take the
validator's path."""


def _fast_flat(pairs: list[bytes], layout: Layout, default_timestamp: int | None) -> Input | None:
    """The common, canonical flat entry decoded without the validator; None when unsure.

    Only accepts what :func:`validate` accepts identically (a property test holds it to that):
    integers in ASCII digits without leading zeros, within int64; an ASCII order ID."""
    kinds, at_type, at_id, at_ts, at_qty, at_price, at_side, at_order_type = layout
    kind = pairs[at_type]
    if kind not in kinds:
        return None
    raw = pairs[at_id]
    if not raw or len(raw) > MAX_ORDER_ID_BYTES or not raw.isascii():
        return None
    order_id = raw.decode()
    timestamp = default_timestamp
    quantity = price = None
    try:
        if at_ts:
            raw = pairs[at_ts]
            timestamp = _natural(raw) if raw.isdigit() else None
        if timestamp is None:
            return None
        if kind == b"cancel":
            return Cancel(order_id, timestamp)
        if at_qty:
            raw = pairs[at_qty]
            if not raw.isdigit():
                return None
            quantity = _positive(raw)
        if at_price:
            raw = pairs[at_price]
            if not raw.isdigit():
                return None
            price = _natural(raw)
    except msgspec.DecodeError:  # ValidationError too: out of range, or zero quantity
        return None
    if kind == b"amend":
        if quantity is None and price is None:
            return None
        return Amend(order_id, quantity, price, timestamp)
    side = _SIDES.get(pairs[at_side]) if at_side else None
    order_type = _ORDER_TYPES.get(pairs[at_order_type]) if at_order_type else "limit"
    if side is None or order_type is None or quantity is None:
        return None
    if (price is None) != (order_type == "market"):
        return None
    return Order(order_id, side, quantity, price, order_type, timestamp)  # type: ignore[arg-type]


def _fast_pairs(pairs: list[bytes], default_timestamp: int | None) -> Input | None:
    """:func:`_fast_flat` on a flat list of any shape; None when it is not the fast path's."""
    layout = _layout(pairs)
    return None if layout is None else _fast_flat(pairs, layout, default_timestamp)


FAST_MAX_BYTES: Final = 256
"""The largest entry :func:`_fast_flat` can accept: 48 bytes of field names and 139 of values
(a 64-byte order ID, three 19-digit integers, the longest type, side and order type)."""


def decode_entry(entry_id: str, pairs: list[bytes], max_bytes: int) -> Input:
    """Decode a raw stream entry (``[name, value, ...]``, as XREAD returns it) as the daemon
    does: refused as ``oversize`` above ``max_bytes`` in all, its timestamp defaulting to the
    entry ID's milliseconds.

    Cost: a canonical flat entry (the common case) is decoded by :func:`_fast_flat` from its
    cached layout (about 1.8 us, against 2.6 through a dict of its fields), without summing its
    size, which cannot exceed :data:`FAST_MAX_BYTES`; only other entries are measured and sent
    through the validator."""
    if max_bytes >= FAST_MAX_BYTES:
        layout = _layout(pairs)
        if layout is not None:
            default = None if layout[3] else int(entry_id.partition("-")[0])
            fast = _fast_flat(pairs, layout, default)
            if fast is not None:
                return fast
    it = iter(pairs)
    fields = dict(zip(it, it))  # noqa: B905  (see decode_pairs)
    default = None if b"timestamp" in fields else int(entry_id.partition("-")[0])
    size = sum(map(len, pairs))
    if size > max_bytes:
        return Invalid(
            None,
            OVERSIZE,
            f"the entry is {size} bytes, more than the {max_bytes} allowed (max_entry_bytes)",
        )
    if len(fields) < len(pairs) >> 1:
        return _repeated_flat(pairs, fields)
    return decode_fields(fields, default)


def decode_pairs(pairs: list[bytes], default_timestamp: int | None) -> Input:
    """Decode a stream entry given as a flat ``[name, value, name, value, ...]`` list (a raw
    XREADGROUP reply); a name given twice makes it ``malformed``."""
    it = iter(pairs)
    # No strict=: as a keyword it costs 180 ns an entry, and an odd last name is dropped anyway.
    fields = dict(zip(it, it))  # noqa: B905
    if len(fields) < len(pairs) >> 1:
        return _repeated_flat(pairs, fields)
    return decode_fields(fields, default_timestamp)


def _repeated_flat(pairs: list[bytes], fields: Mapping[bytes, bytes]) -> Invalid:
    """The refusal of a flat entry that names a field twice (any name: an auditor may keep
    either value)."""
    name, count = _first_repeat(pairs[0 : len(pairs) - 1 : 2])
    order_id = None if name == b"order_id" else _readable_id(fields.get(b"order_id"))
    return Invalid(order_id, MALFORMED, _repeated(name, count))


def decode_fields(
    fields: Mapping[bytes, bytes] | Mapping[str, str], default_timestamp: int | None
) -> Input:
    """Decode one stream entry's field/value pairs (flat form, or a single ``data`` field)."""
    if fields and isinstance(next(iter(fields)), bytes):
        pairs = [x for kv in fields.items() for x in kv]
        fast = _fast_pairs(pairs, default_timestamp)  # type: ignore[arg-type]
        if fast is not None:
            return fast
    named: dict[str, object] = {}
    for key, value in fields.items():
        # A name that is not UTF-8 is not one we know; surrogateescape keeps it apart from
        # every other name and lets a detail show its bytes.
        name = key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key
        named[name] = value
    data = named.pop("data", None)
    if data is not None:
        if KNOWN_FIELDS.intersection(named):
            return Invalid(
                _readable_id(named.get("order_id")),
                MALFORMED,
                "the entry carries both a data field and flat fields "
                f"({', '.join(sorted(KNOWN_FIELDS.intersection(named)))}); send one form",
            )
        if not isinstance(data, bytes | str):
            return Invalid(None, MALFORMED, f"data must hold a JSON object, got {show(data)}")
        return decode_json(data, default_timestamp)
    return validate(named, default_timestamp)


# -- the rules -------------------------------------------------------------------------------------


def validate(fields: Mapping[str, object], default_timestamp: int | None) -> Input:
    """Apply every input rule to a mapping of field names to values; the arbiter of rejections.

    Values may be ``bytes``/``str`` (flat form) or JSON values (JSON form).
    """
    order_id = _readable_id(fields.get("order_id"))
    try:
        return _validate(fields, default_timestamp)
    except _Bad as bad:
        return Invalid(order_id, bad.reason, bad.detail)


def _validate(fields: Mapping[str, object], default_timestamp: int | None) -> Input:
    present = {name for name, value in fields.items() if value is not None}
    if not KNOWN_FIELDS.intersection(present):
        names = sorted(map(_show_name, fields))
        listed = ", ".join(names[:SHOWN_NAMES]) or "none"
        if len(names) > SHOWN_NAMES:
            listed += f" and {len(names) - SHOWN_NAMES} more"
        raise _Bad(MALFORMED, f"the entry has no field the shard knows (fields: {listed})")
    kind = _text(fields, "type", required=True)
    applies = APPLIES.get(kind)  # type: ignore[arg-type]
    if applies is None:
        raise _Bad(UNKNOWN_TYPE, f"type must be order, cancel or amend, got {show(kind)}")
    extra = sorted(KNOWN_FIELDS.intersection(present) - applies)
    if extra:
        raise _Bad(INVALID_FIELD, f"field {extra[0]} does not apply to {kind} messages")
    order_id = _order_id(fields)
    timestamp = _integer(fields, "timestamp", minimum=0)
    if timestamp is None:
        if default_timestamp is None:
            raise _Bad(MISSING_FIELD, _missing_timestamp(None).detail)
        timestamp = default_timestamp
    if kind == "cancel":
        return Cancel(order_id, timestamp)
    if kind == "amend":
        quantity = _integer(fields, "quantity", minimum=1)
        price = _integer(fields, "price", minimum=0)
        if quantity is None and price is None:
            raise _Bad(MISSING_FIELD, "an amend needs quantity or price (or both)")
        return Amend(order_id, quantity, price, timestamp)
    side = _text(fields, "side", required=True)
    if side not in SIDES:
        raise _Bad(INVALID_FIELD, f"side must be buy or sell, got {show(side)}")
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
    return Order(order_id, side, quantity, price, order_type, timestamp)  # type: ignore[arg-type]


def _readable_id(value: object) -> str | None:
    """The order_id for the event if it can be read at all, else None."""
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


def _order_id(fields: Mapping[str, object]) -> str:
    value = _text(fields, "order_id", required=True)
    assert value is not None
    size = len(value.encode())
    if size == 0:
        raise _Bad(INVALID_FIELD, "order_id must not be empty")
    if size > MAX_ORDER_ID_BYTES:
        raise _Bad(
            INVALID_FIELD,
            f"order_id must be at most {MAX_ORDER_ID_BYTES} bytes, got {size}: {show(value)}",
        )
    return value


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
