"""Decode input entries into typed messages, once, at the edge. Nothing here raises.

Two forms reach a shard (see CONTRACT.md): flat field/value pairs (values decimal ASCII) and a
single ``data`` field holding the message as a JSON object; ``shard replay`` reads the JSON form
one object per line.

Every entry becomes an :data:`~shard.messages.Input`: a typed :class:`~shard.messages.Order`,
:class:`~shard.messages.Cancel`, :class:`~shard.messages.Amend` or
:class:`~shard.messages.CancelAll`, or an :class:`~shard.messages.Invalid` with a stable reason
code and a sentence naming the field and its value:

=================== ====================================================================
reason              when
=================== ====================================================================
``malformed``       not UTF-8, not JSON (``NaN`` and ``Infinity`` are not), not a JSON
                    object, a name given twice, no field the shard knows, data + fields
``missing_field``   a required field is absent (``type``, ``order_id``, ``side``, a
                    ``cancel_all``'s ``account``, ...)
``unknown_type``    ``type`` is not ``order``, ``cancel``, ``amend`` or ``cancel_all``
``invalid_field``   a value breaks its rule, or a known field that does not apply to the type
``oversize``        a raw entry's names and values exceed ``max_bytes`` in all (only
                    :func:`decode_entry`, the daemon's entry point, takes a bound)
=================== ====================================================================

Rules: integers are decimal ASCII digits (JSON integers in the JSON form) that fit a signed
64-bit integer, with no sign (not even ``-0``), spaces, exponent or fraction; leading zeros are
accepted in the flat form (``007`` is 7; JSON forbids them). ``quantity`` > 0; ``price`` >= 0,
required except for ``market``, where it must be absent; ``timestamp`` >= 0, defaulting to the
stream entry's millisecond time (``default_timestamp``); ``order_id`` 1-64 bytes of UTF-8.
``account`` (optional on ``order``, ``cancel`` and ``amend``; required on ``cancel_all``) 1-64
bytes of UTF-8. ``stp`` (``order`` only) one of :data:`~shard.messages.STP_MODES`, and only with
an ``account``. A ``cancel_all`` takes ``account``, an optional ``side`` (``buy``/``sell``) and
``timestamp``; like any field a type does not take, an ``order_id``, ``price``, ``quantity``,
``order_type`` or ``stp`` on it is refused, and its refusal names no ``order_id``. A JSON
``null`` counts as absent. Unknown field names are ignored, but no name, known or not, may
appear twice in an entry or in any JSON object of a message (a reader that keeps the first
would see another message than one that keeps the last). A JSON number in a known field that
is no int64 (``1e400``, 5,000 digits, ``-0``) or a ``NaN``/``Infinity`` there is refused as
that field's ``invalid_field``; elsewhere a number is ignored with its field, but ``NaN`` and
``Infinity`` make the message ``malformed``.

The parts: this module decodes the flat form and dispatches an entry to its form;
:mod:`shard.decode_json` decodes the JSON form; :mod:`shard.input_rules` holds the rules
themselves (:func:`validate`, the arbiter of every refusal, and the reason codes). Everything a
caller needs is importable from here.

Cost: the common input of each form takes a fast path that never builds a mapping of its
fields: a flat entry is decoded from a cached layout of its names (:func:`_fast_flat`) when they
are distinct and known, a JSON message by msgspec's typed decoder and two guards it needs (see
:func:`~shard.decode_json.decode_json`). An order, cancel or amend with an ``account`` (and
``stp``) takes them too, in the flat form from the same cached layout (:class:`_Owner`,
:func:`_fast_owned`), and a message without them pays nothing for them. Only input a fast path
does not take (a ``cancel_all`` among it) goes to :func:`validate`, several times dearer, which
explains the refusal. The fast paths agree with the slow ones on every input (property tests
hold them to it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Final

import msgspec

from shard.decode_json import decode_json
from shard.input_rules import (
    APPLIES,
    INVALID_FIELD,
    KNOWN_FIELDS,
    MALFORMED,
    MISSING_FIELD,
    OWNER_FIELDS,
    UNKNOWN_TYPE,
    first_repeat,
    readable_id,
    repeated_detail,
    validate,
)
from shard.messages import (
    INT64_MAX,
    MAX_ACCOUNT_BYTES,
    MAX_ORDER_ID_BYTES,
    ORDER_TYPES,
    STP_MODES,
    Amend,
    Cancel,
    Input,
    Invalid,
    Order,
    show,
)

__all__ = [
    "FAST_MAX_BYTES",
    "INVALID_FIELD",
    "MALFORMED",
    "MISSING_FIELD",
    "OVERSIZE",
    "UNKNOWN_TYPE",
    "decode_entry",
    "decode_fields",
    "decode_json",
    "validate",
]

OVERSIZE: Final = "oversize"
"""The reason of a raw entry larger than its ``max_bytes``, decided by :func:`decode_entry`."""

# -- flat form -------------------------------------------------------------------------------------

_SIDES: Final = {b"buy": "buy", b"sell": "sell"}
_ORDER_TYPES: Final = {t.encode(): t for t in ORDER_TYPES}
_STP_MODES: Final = {m.encode(): m for m in STP_MODES}
_FAST_KEYS: Final = {
    kind.encode(): frozenset(k.encode() for k in APPLIES[kind] - OWNER_FIELDS)
    for kind in ("order", "cancel", "amend")
}
"""The names of the plain layouts; an account and stp are read apart (:class:`_Owner`)."""

_NAMES: Final = frozenset().union(*_FAST_KEYS.values())
_OWNER_NAMES: Final = frozenset(k.encode() for k in OWNER_FIELDS)
_ALL_NAMES: Final = _NAMES | _OWNER_NAMES
Layout = tuple[frozenset[bytes], int, int, int, int, int, int, int]
"""Where a flat entry's fields are, by the order of its names: the kinds whose fields it may
carry (an :class:`_Owner` if an ``account`` is among them), then the list index of the value of
``type``, ``order_id``, ``timestamp``, ``quantity``, ``price``, ``side`` and ``order_type`` (0:
absent; a value's index is always odd)."""


class _Owner(frozenset[bytes]):
    """The kinds of the layout of names with an ``account``: none, so that :func:`_fast_flat`
    refuses such an entry at its first test and the common layouts pay nothing for accounts,
    and what :func:`_fast_owned` needs: the layout of the other names, and the list index of
    the value of ``account`` and of ``stp`` (0: absent)."""

    __slots__ = ("at_account", "at_stp", "layout")

    layout: Layout
    at_account: int
    at_stp: int

    @classmethod
    def of(cls, layout: Layout, at_account: int, at_stp: int) -> Layout:
        owner = cls()
        owner.layout, owner.at_account, owner.at_stp = layout, at_account, at_stp
        return (owner, *layout[1:])


_LAYOUTS: dict[tuple[bytes, ...], Layout | None] = {}
_UNSEEN: Final[Layout] = (frozenset(), 0, 0, 0, 0, 0, 0, 0)
_OWNED_NAMES: set[tuple[bytes, ...]] = set()
"""The orders of names with an ``account`` or ``stp`` that :data:`_LAYOUTS` holds."""
OWNED_LAYOUTS_MAX: Final = 1024
"""At most this many orders of names with an ``account`` or ``stp`` are remembered (nearly a
million are possible); past that, an entry's layout is worked out each time, which is slower,
never wrong."""


def _new_layout(names: tuple[bytes, ...]) -> Layout | None:
    """The layout of distinct names of :data:`_ALL_NAMES`, or None (an ``stp`` without an
    ``account`` among them is the validator's)."""
    plain = [name for name in names if name not in _OWNER_NAMES]
    if b"type" not in plain or b"order_id" not in plain:
        return None
    kinds = frozenset(kind for kind, allowed in _FAST_KEYS.items() if allowed.issuperset(plain))
    if not kinds:
        return None
    at = {name: 2 * i + 1 for i, name in enumerate(names)}
    layout: Layout = (
        kinds, at[b"type"], at[b"order_id"], at.get(b"timestamp", 0), at.get(b"quantity", 0),
        at.get(b"price", 0), at.get(b"side", 0), at.get(b"order_type", 0),
    )  # fmt: skip
    if len(plain) == len(names):
        return layout
    if b"account" not in at:
        return None
    return _Owner.of(layout, at[b"account"], at.get(b"stp", 0))


def _layout(pairs: list[bytes]) -> Layout | None:
    """The layout of a flat ``[name, value, ...]`` list whose names are all distinct fields the
    fast paths know (else None). Cost: one dict lookup on the names. Only orders of the plain
    names (fewer than 14,000) and :data:`OWNED_LAYOUTS_MAX` orders of names with an account or
    stp are remembered, so hostile names (unknown, repeated or ordered anew) cannot grow the
    cache."""
    if len(pairs) & 1:
        return None
    names = tuple(pairs[::2])
    layout = _LAYOUTS.get(names, _UNSEEN)
    if layout is _UNSEEN:
        if (
            len(names) > len(_ALL_NAMES)
            or not _ALL_NAMES.issuperset(names)
            or len(set(names)) < len(names)
        ):
            return None
        layout = _new_layout(names)
        if _NAMES.issuperset(names):
            _LAYOUTS[names] = layout
        elif len(_OWNED_NAMES) < OWNED_LAYOUTS_MAX:
            _OWNED_NAMES.add(names)
            _LAYOUTS[names] = layout
    return layout


_natural = msgspec.json.Decoder(Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]).decode
_positive = msgspec.json.Decoder(Annotated[int, msgspec.Meta(gt=0, le=INT64_MAX)]).decode
"""Digits to an int64 in C, cheaper than ``int(bytes)``. Callers check isdigit()
first (JSON would allow surrounding spaces); JSON refuses leading zeros, which then take the
validator's path."""


def _fast_flat(
    pairs: list[bytes], layout: Layout, default_timestamp: int | None
) -> Order | Cancel | Amend | None:
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


def _fast_owned(
    pairs: list[bytes], owner: _Owner, default_timestamp: int | None
) -> Order | Cancel | Amend | None:
    """An order, cancel or amend that also carries an ``account``, and an order maybe an
    ``stp``: :func:`_fast_flat` on its other fields, then those two. None when unsure (an
    account not of 1-64 ASCII bytes, an stp on a cancel...). Cost: :func:`_fast_flat`'s and a
    few operations."""
    raw = pairs[owner.at_account]
    if not raw or len(raw) > MAX_ACCOUNT_BYTES or not raw.isascii():
        return None
    msg = _fast_flat(pairs, owner.layout, default_timestamp)
    if msg is None:
        return None
    if owner.at_stp:
        stp = _STP_MODES.get(pairs[owner.at_stp])
        if stp is None or type(msg) is not Order:
            return None
        msg.stp = stp  # type: ignore[assignment]
    msg.account = raw.decode()
    return msg


def _fast_pairs(pairs: list[bytes], default_timestamp: int | None) -> Input | None:
    """:func:`_fast_flat` or :func:`_fast_owned` on a flat list of any shape; None when it is
    not the fast paths'."""
    layout = _layout(pairs)
    if layout is None:
        return None
    fast = _fast_flat(pairs, layout, default_timestamp)
    owner = layout[0]
    if fast is None and type(owner) is _Owner:
        return _fast_owned(pairs, owner, default_timestamp)
    return fast


FAST_MAX_BYTES: Final = 288
"""A bound on the largest entry the fast paths can accept, 273 bytes: 58 bytes of field names
and 215 of values (a 64-byte order ID and account, three 19-digit integers, the longest type,
side, order type and stp)."""


def decode_entry(entry_id: str, pairs: list[bytes], max_bytes: int) -> Input:
    """Decode a raw stream entry (``[name, value, ...]``, as XREAD returns it) as the daemon
    does: refused as ``oversize`` above ``max_bytes`` in all, its timestamp defaulting to the
    entry ID's milliseconds.

    Cost: a canonical flat entry (the common case) is decoded by :func:`_fast_flat` from its
    cached layout: one lookup on its names, no dict of its fields and no sum of its size,
    which cannot exceed :data:`FAST_MAX_BYTES`. One with an account, which :func:`_fast_flat`
    refuses at once, is decoded by :func:`_fast_owned` from the same layout. Only other
    entries are measured and sent through the validator, O(fields)."""
    if max_bytes >= FAST_MAX_BYTES:
        layout = _layout(pairs)
        if layout is not None:
            default = None if layout[3] else int(entry_id.partition("-")[0])
            fast = _fast_flat(pairs, layout, default)
            if fast is not None:
                return fast
            owner = layout[0]
            if type(owner) is _Owner:
                fast = _fast_owned(pairs, owner, default)
                if fast is not None:
                    return fast
    it = iter(pairs)
    # No strict=: passing it as a keyword makes the call dearer, and an odd last name is
    # dropped anyway (its bytes still count against max_bytes).
    fields = dict(zip(it, it))  # noqa: B905
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


def _repeated_flat(pairs: list[bytes], fields: Mapping[bytes, bytes]) -> Invalid:
    """The refusal of a flat entry that names a field twice (any name: an auditor may keep
    either value)."""
    name, count = first_repeat(pairs[0 : len(pairs) - 1 : 2])
    order_id = (
        None if name == b"order_id" else readable_id(fields.get(b"order_id"), fields.get(b"type"))
    )
    return Invalid(order_id, MALFORMED, repeated_detail(name, count))


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
                readable_id(named.get("order_id"), named.get("type")),
                MALFORMED,
                "the entry carries both a data field and flat fields "
                f"({', '.join(sorted(KNOWN_FIELDS.intersection(named)))}); send one form",
            )
        if not isinstance(data, bytes | str):
            return Invalid(None, MALFORMED, f"data must hold a JSON object, got {show(data)}")
        return decode_json(data, default_timestamp)
    return validate(named, default_timestamp)
