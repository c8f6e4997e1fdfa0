"""The JSON form of an input (a ``data`` field, or a line of ``shard replay``) decoded under the
rules of :mod:`shard.decode`. Nothing here raises.

Rule: msgspec's typed decoder (one C call) answers only where its answer is provably what
:func:`~shard.input_rules.validate` would say; every other message is read again, carefully,
and judged by the validator, which explains the refusal. The fast path agrees with the careful
one on every input (property tests hold it to that).

Cost: a canonical message costs the typed decode plus a C pass over its bytes (the guards of
:func:`decode_json`); any other goes through :func:`_slow_json`, several times dearer: msgspec's
untyped decoder where that is provably the careful reading, else the standard library's parser
with Python hooks (:func:`_careful_json`), then the validator.
"""

from __future__ import annotations

import json
from typing import Final

import msgspec

from shard.input_rules import (
    KNOWN_FIELDS,
    MALFORMED,
    first_repeat,
    missing_timestamp,
    readable_id,
    repeated_detail,
    show_name,
    validate,
)
from shard.messages import (
    MAX_ACCOUNT_BYTES,
    MAX_ORDER_ID_BYTES,
    NO_TIMESTAMP,
    Amend,
    Cancel,
    Input,
    Invalid,
    Order,
    Verbatim,
    show,
)

_typed = msgspec.json.Decoder(Order | Cancel | Amend)
"""A ``cancel_all`` (rare: a session ends) is not among its types: it goes the slow way."""
_untyped = msgspec.json.Decoder()
# What msgspec raises on hostile JSON: bad syntax or types (DecodeError and its ValidationError),
# invalid UTF-8 inside a string, and nesting deeper than the interpreter's recursion limit.
_JSON_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def decode_json(data: bytes | str, default_timestamp: int | None = None) -> Input:
    """Decode one message in the JSON form (a ``data`` field, or a line of ``shard replay``).

    The typed decoder's answer stands only where it is the validator's: it cannot express the
    cross-field rules (``stp`` needs ``account``) nor the UTF-8 length of a non-ASCII order ID
    or account, and it reads two things too kindly, which two guards catch:

    * a repeated name, of which it keeps the last value. Each name in a JSON object is
      followed by a colon, so a message with no more colons than the fields its struct proves
      present names none twice, however its names are escaped. ``account`` and ``stp`` are
      counted only when there are colons to spare (:func:`_owner_fields`), so a message
      without them pays nothing for them. A colon inside a value, an explicit null or an
      explicit ``"order_type": "limit"`` sends the message the slow way, which is slower,
      never wrong;
    * ``-0``, which it reads as 0: only a field that decoded to 0 can have been written so.

    Cost: msgspec's typed decoder, a few comparisons and a count of the colons (a C loop over
    the message) for a canonical message, a few more with an account; any other goes through
    :func:`_slow_json`, several times slower."""
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
    if colons > shown:  # an account, stp, a name twice, a colon in a value, a null...
        shown += _owner_fields(msg)
        if colons > shown:
            return _slow_json(data, default_timestamp)
    if (price == 0 or timestamp == 0) and minus_zero in data:  # type: ignore[operator]
        return _slow_json(data, default_timestamp)
    if timestamp == NO_TIMESTAMP:
        if default_timestamp is None:
            return missing_timestamp(oid, msg.account)
        msg.timestamp = default_timestamp
    return msg


def _owner_fields(msg: Order | Cancel | Amend) -> int:
    """How many of ``account`` and ``stp`` a typed message shows where they stand as the
    validator would take them, else 0 (which sends it the slow way: their colons are then
    left over). O(1), or O(length) for a non-ASCII account."""
    account = msg.account
    if account is None:
        return 0  # stp without an account: the validator's to refuse
    if not account.isascii() and len(account.encode()) > MAX_ACCOUNT_BYTES:
        return 0
    return 1 if type(msg) is not Order or msg.stp is None else 2


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
    repeats.name, repeats.count = first_repeat([name for name, _ in pairs])
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
    (an unknown field, a rule broken); the careful path costs more, its parser's hooks running
    in Python."""
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
    order_id = readable_id(obj.get("order_id"), obj.get("type"))
    if type(obj) is _Repeats:
        return Invalid(None if obj.name == "order_id" else order_id, MALFORMED,
                       repeated_detail(obj.name, obj.count))  # fmt: skip
    # A known field holding NaN is validate()'s to name; every other value is looked through.
    nested, stray = _marks(
        [v for k, v in obj.items() if type(v) is not _Constant or k not in KNOWN_FIELDS]
    )
    if nested is not None:
        return Invalid(
            order_id,
            MALFORMED,
            f"a nested object names {show_name(nested.name)} more than once; send each name once",
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
