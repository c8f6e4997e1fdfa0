"""A local copy of a pair's L2 book, kept in sync with ``book:{P}`` and ``depth:{P}``, and the
``shard book`` view of it.

The sync follows the contract's Market data section:

1. ``HGETALL book:{P}`` gives the whole book, its ``seq`` and ``depth_id``. It is read in one
   transaction with the last ``depth:{P}`` entry: when that entry is the one at ``depth_id``, its
   checksum must match the snapshot's, so a corrupted hash is refused before it is used.
2. ``XREAD BLOCK`` on ``depth:{P}`` after the last ID applied. An entry with ``seq`` at or below
   the book's is skipped (already included); one with ``seq`` = book + 1 is applied and its
   ``checksum`` (and best bid and ask) compared; a higher ``seq`` is a gap: the entries between
   were trimmed (``depth_maxlen``) or are missing.
3. Any gap, mismatch, unreadable entry or Redis error starts again from step 1, after a backoff
   that grows while the failures repeat. Nothing is raised for these: :attr:`BookView.resyncs`
   counts them by reason and :attr:`BookView.problem` says the last one in a sentence.

The checksum covers only the 10 best levels of each side, so a wrong level deeper in the book
is found when it comes within the top 10 (or never, if it never does).

The pure part (:func:`parse_entry`, :func:`book_from_hash`, :class:`L2Book`) does no I/O.
Costs: applying an entry is O(k log L) for k changed levels on a side of L levels, plus O(1)
for the checksum of the top 10; a snapshot is O(L log L).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, TextIO

from redis.asyncio import Redis
from redis.backoff import AbstractBackoff, ExponentialWithJitterBackoff
from sortedcontainers import SortedList

from shard.config import Keys
from shard.l2 import CHECKSUM_LEVELS, checksum
from shard.transport import (
    REDIS_ERRORS,
    RETRIED,
    async_tools_client,
    describe,
    plain_async_client,
    waited_out,
)

if TYPE_CHECKING:
    from shard.config import Config

log = logging.getLogger("shard.marketdata")
log.addHandler(logging.NullHandler())  # a library: the program decides where warnings go

PRICE_SCALE: Final = 10**8
"""Contract prices are integers, price x 10^8."""

Reason = Literal[
    "gap", "trimmed", "mismatch", "bad_snapshot", "malformed", "reconnect", "unavailable"
]
"""Why a view started again from ``HGETALL``: ``gap`` (an entry's ``seq`` jumped while the
stream still holds the one expected), ``trimmed`` (the entries after the book's ``seq`` are no
longer in the stream), ``mismatch`` (an entry's checksum or best bid/ask differs from the local
book's), ``bad_snapshot`` (``book:{P}`` disagrees with the entry at its own ``depth_id``),
``malformed`` (a field that does not follow the contract), ``reconnect`` (the connection failed
or timed out), ``unavailable`` (an error reply that says "not now": LOADING, NOPERM...)."""


class MalformedError(ValueError):
    """A ``book:{P}`` or ``depth:{P}`` field that does not follow the contract; the message
    names the field and the value."""


class SyncError(Exception):
    """:meth:`BookView.sync` gave up after the attempts it was allowed; the message is the last
    cause."""


class Level(NamedTuple):
    """One price level: total resting quantity and number of resting orders."""

    price: int
    quantity: int
    orders: int


class Best(NamedTuple):
    """The best level of a side as a depth entry states it."""

    price: int
    quantity: int


class DepthEntry(NamedTuple):
    """One ``depth:{P}`` entry, decoded. ``bids``/``asks`` hold the changed levels best first;
    a level with quantity 0 is gone."""

    id: str
    seq: int
    input_id: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    best_bid: Best | None
    best_ask: Best | None
    checksum: int


class Outcome(enum.Enum):
    """What :meth:`L2Book.apply` did with an entry."""

    APPLIED = "applied"
    SKIPPED = "skipped"  # seq at or below the book's: already included
    GAP = "gap"  # seq above the book's + 1: not applied
    MISMATCH = "mismatch"  # applied, but the checksum or best level differs: resync


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _int(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise MalformedError(f"{what} must be a non-negative integer, got {text!r}")
    return int(text)


def parse_level(text: str, what: str) -> Level:
    """``<price>:<quantity>:<orders>``; quantity and orders are both 0 (gone) or both above."""
    parts = text.split(":")
    if len(parts) != 3:
        raise MalformedError(f"{what} level must be <price>:<quantity>:<orders>, got {text!r}")
    price, quantity, orders = (_int(p, what) for p in parts)
    if (quantity == 0) != (orders == 0):
        raise MalformedError(f"{what} level {text!r} has quantity or orders 0 but not both")
    return Level(price, quantity, orders)


def parse_levels(text: str, what: str) -> tuple[Level, ...]:
    """A side's changed levels, joined by ``,``; empty text: that side did not change."""
    return tuple(parse_level(x, what) for x in text.split(",")) if text else ()


def parse_best(text: str, what: str) -> Best | None:
    """``<price>:<quantity>``, or None for an empty side."""
    if not text:
        return None
    parts = text.split(":")
    if len(parts) != 2:
        raise MalformedError(f"{what} must be <price>:<quantity> or empty, got {text!r}")
    return Best(_int(parts[0], what), _int(parts[1], what))


def parse_entry(
    entry_id: bytes | str, fields: Mapping[bytes, bytes] | Mapping[str, str]
) -> DepthEntry:
    """A ``depth:{P}`` entry as read from the stream (bytes or text), decoded; MalformedError
    names the first field that breaks the contract."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    for name in ("seq", "input_id", "bids", "asks", "best_bid", "best_ask", "checksum"):
        if name not in f:
            raise MalformedError(f"depth entry {_text(entry_id)} has no {name} field")
    return DepthEntry(
        id=_text(entry_id),
        seq=_int(f["seq"], "seq"),
        input_id=f["input_id"],
        bids=parse_levels(f["bids"], "bids"),
        asks=parse_levels(f["asks"], "asks"),
        best_bid=parse_best(f["best_bid"], "best_bid"),
        best_ask=parse_best(f["best_ask"], "best_ask"),
        checksum=_int(f["checksum"], "checksum"),
    )


class Side:
    """One side's levels by price, iterated best first. O(log L) to set or remove a level."""

    __slots__ = ("_keys", "_levels", "_sign")

    def __init__(self, bids: bool) -> None:
        self._sign = -1 if bids else 1  # keys sort best first: bids by -price
        self._keys: SortedList[int] = SortedList()
        self._levels: dict[int, Level] = {}

    def set(self, level: Level) -> None:
        """Set a level; quantity 0 removes it (absent already: nothing happens)."""
        price = level.price
        if level.quantity == 0:
            if self._levels.pop(price, None) is not None:
                self._keys.remove(self._sign * price)
            return
        if price not in self._levels:
            self._keys.add(self._sign * price)
        self._levels[price] = level

    def best(self) -> Level | None:
        return self._levels[self._sign * self._keys[0]] if self._keys else None

    def top(self, n: int | None = None) -> Iterator[Level]:
        """The ``n`` best levels (all when None), best first. O(n)."""
        levels, sign = self._levels, self._sign
        return (levels[sign * k] for k in self._keys.islice(0, n))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, price: int) -> bool:
        return price in self._levels


class L2Book:
    """The local copy: both sides, the ``seq`` and ``depth_id`` of the last entry included and
    the last ``input_id`` reflected. Pure."""

    __slots__ = ("asks", "bids", "depth_id", "input_id", "seq")

    def __init__(self) -> None:
        self.bids = Side(bids=True)
        self.asks = Side(bids=False)
        self.seq = 0
        self.depth_id = "0-0"
        self.input_id = ""

    def checksum(self) -> int:
        """The contract's checksum of the local book (its 10 best levels a side). O(1)."""
        return checksum(self.bids.top(CHECKSUM_LEVELS), self.asks.top(CHECKSUM_LEVELS))

    def matches(self, entry: DepthEntry) -> bool:
        """Whether the local book has the entry's checksum and best bid and ask."""
        return (
            _best(self.bids.best()) == entry.best_bid
            and _best(self.asks.best()) == entry.best_ask
            and self.checksum() == entry.checksum
        )

    def apply(self, entry: DepthEntry) -> Outcome:
        """Apply the entry if it is the next one (``seq`` = book's + 1), then verify it."""
        if entry.seq <= self.seq:
            return Outcome.SKIPPED
        if entry.seq != self.seq + 1:
            return Outcome.GAP
        for level in entry.bids:
            self.bids.set(level)
        for level in entry.asks:
            self.asks.set(level)
        self.seq, self.depth_id, self.input_id = entry.seq, entry.id, entry.input_id
        return Outcome.APPLIED if self.matches(entry) else Outcome.MISMATCH


def _best(level: Level | None) -> Best | None:
    return None if level is None else Best(level.price, level.quantity)


def book_from_hash(fields: Mapping[bytes, bytes] | Mapping[str, str]) -> L2Book:
    """The book that a ``book:{P}`` hash (HGETALL, bytes or text) describes; an empty hash is
    the empty book at seq 0. MalformedError names the first field that breaks the contract."""
    book = L2Book()
    for raw_name, raw_value in fields.items():
        name, value = _text(raw_name), _text(raw_value)
        if name == "seq":
            book.seq = _int(value, "seq")
        elif name == "depth_id":
            book.depth_id = value
        elif name == "input_id":
            book.input_id = value
        elif name[:2] in ("b:", "a:"):
            level = parse_level(f"{name[2:]}:{value}", f"book field {name}")
            if level.quantity == 0:
                raise MalformedError(f"book field {name} holds an empty level {value!r}")
            (book.bids if name[0] == "b" else book.asks).set(level)
        # Fields the contract does not name are left alone: it may add some.
    return book


class Update(NamedTuple):
    """What :meth:`BookView.updates` yields: a fresh snapshot (``entry`` None; ``resync`` is
    why, None for the first) or one applied entry. The view's state is already the new one."""

    seq: int
    input_id: str
    entry: DepthEntry | None
    resync: Reason | None


class _Resync(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


class BookView:
    """A pair's L2 book kept in sync from ``book:{P}`` and ``depth:{P}`` (see the module).

    Give it an async redis-py client (bytes or decoded replies, RESP2 or RESP3). One blocking
    ``XREAD`` at a time runs on the client's pool, so the client's ``socket_timeout`` must be
    above ``block_ms`` (or None). With redis-py's own retries on, a dropped connection is
    retried silently and the view continues from its last ID (reads change nothing, so that
    is correct too); with them off (:func:`connect`), the view counts a ``reconnect`` and
    resyncs. ``prefix`` is the config's ``key_prefix``.

    On a Redis Cluster, give it a ``redis.asyncio.RedisCluster`` (:func:`connect_any` makes
    one from any node's URL): every command of the view touches only the pair's slot, the
    ``HGETALL`` + ``XREVRANGE`` transaction included, so the client sends it all to the
    owner. After a failover or a migration it follows the ``MOVED``; an ``UNBLOCKED`` reply
    (a blocked read on a demoted master) or a lost connection is a resync like any other.
    """

    def __init__(
        self,
        client: Redis,
        pair: str,
        *,
        prefix: str = "",
        block_ms: int = 1000,
        count: int = 1000,
        backoff: AbstractBackoff | None = None,
    ) -> None:
        self.client = client
        self.pair = pair
        keys = Keys(pair, prefix)
        self.book_key, self.depth_key, self.ticker_key = keys.book, keys.depth, keys.ticker
        self.block_ms = block_ms
        self.count = count
        self.backoff = backoff or ExponentialWithJitterBackoff(cap=2.0, base=0.05)
        self.book = L2Book()
        self.synced = False
        self.resyncs: Counter[str] = Counter()
        """Resyncs so far, by :data:`Reason`."""
        self.problem: str | None = None
        """The last resync's cause, as a sentence."""
        self._failures = 0

    # The book as the last update left it.

    @property
    def seq(self) -> int:
        return self.book.seq

    @property
    def input_id(self) -> str:
        return self.book.input_id

    @property
    def best_bid(self) -> Level | None:
        return self.book.bids.best()

    @property
    def best_ask(self) -> Level | None:
        return self.book.asks.best()

    def bids(self, n: int | None = None) -> list[Level]:
        """The ``n`` best bids (all when None), best first."""
        return list(self.book.bids.top(n))

    def asks(self, n: int | None = None) -> list[Level]:
        """The ``n`` best asks (all when None), best first."""
        return list(self.book.asks.top(n))

    # Syncing.

    async def sync(self, attempts: int | None = None) -> Update:
        """Load ``book:{P}`` now, retrying (with backoff, counted in :attr:`resyncs`) until a
        snapshot passes its check, or :class:`SyncError` after ``attempts`` failures (None: no
        limit). Redis errors that are not "not now" replies are raised."""
        reason: Reason | None = None
        failed = 0
        while True:
            try:
                await self._load()
            except _Resync as exc:
                self._note(exc.reason, str(exc))
                reason, failed = exc.reason, failed + 1
                if attempts is not None and failed >= attempts:
                    raise SyncError(str(exc)) from None
                await asyncio.sleep(self.backoff.compute(self._failures))
                continue
            return Update(self.seq, self.input_id, None, reason)

    async def updates(self) -> AsyncIterator[Update]:
        """Sync, then follow ``depth:{P}`` for ever: one :class:`Update` per snapshot loaded and
        per entry applied. Resyncs happen inside; cancel the task (or stop iterating) to stop."""
        if not self.synced:
            yield await self.sync()
        while True:
            try:
                entries = await self._read()
                if not entries:
                    self._failures = 0  # an empty read: the link is healthy
                for entry_id, fields in entries:
                    update = await self._step(entry_id, fields)
                    if update is not None:
                        yield update
            except _Resync as exc:
                self._note(exc.reason, str(exc))
                await asyncio.sleep(self.backoff.compute(self._failures))
                update = await self.sync()
                yield update._replace(resync=update.resync or exc.reason)

    async def _step(self, entry_id: bytes | str, fields: Any) -> Update | None:
        try:
            entry = parse_entry(entry_id, fields)
        except MalformedError as exc:
            raise _Resync("malformed", f"{self.depth_key}: {exc}") from None
        expected = self.book.seq + 1
        outcome = self.book.apply(entry)
        if outcome is Outcome.SKIPPED:
            return None
        if outcome is Outcome.GAP:
            trimmed = await self._trimmed(expected)
            raise _Resync(
                "trimmed" if trimmed else "gap",
                f"{self.depth_key} entry {entry.id} has seq {entry.seq}, expected {expected}"
                + (" (the entries between were trimmed)" if trimmed else ""),
            )
        if outcome is Outcome.MISMATCH:
            raise _Resync(
                "mismatch",
                f"after {self.depth_key} entry {entry.id} (seq {entry.seq}) the local book's "
                f"checksum is {self.book.checksum()}, the entry's {entry.checksum}",
            )
        self._failures = 0
        return Update(entry.seq, entry.input_id, entry, None)

    async def _load(self) -> None:
        """HGETALL the book and, in the same transaction, the last depth entry to check it."""
        self.synced = False
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                # Spelled as raw commands: redis-py 8.1's cluster transaction passes the
                # methods' key hints to the reply callbacks, which refuse them (TypeError).
                pipe.execute_command("HGETALL", self.book_key)
                pipe.execute_command("XREVRANGE", self.depth_key, "+", "-", "COUNT", 1)
                fields, last = await pipe.execute()
            book = book_from_hash(fields)
        except MalformedError as exc:
            raise _Resync("malformed", f"{self.book_key}: {exc}") from None
        except RETRIED as exc:
            raise self._error(exc) from None
        if last and _text(last[0][0]) == book.depth_id:
            try:
                entry = parse_entry(*last[0])
            except MalformedError as exc:
                raise _Resync("malformed", f"{self.depth_key}: {exc}") from None
            if entry.seq != book.seq or not book.matches(entry):
                raise _Resync(
                    "bad_snapshot",
                    f"{self.book_key} at seq {book.seq} does not match its depth entry "
                    f"{book.depth_id} (checksum {book.checksum()}, the entry's {entry.checksum})",
                )
        self.book = book
        self.synced = True

    async def _read(self) -> list[tuple[Any, Any]]:
        try:
            reply = await self.client.xread(
                {self.depth_key: self.book.depth_id}, count=self.count, block=self.block_ms
            )
        except RETRIED as exc:
            raise self._error(exc) from None
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            return [entry for entries in reply.values() for entry in _resp3(entries)]
        return list(reply[0][1])

    async def _trimmed(self, expected: int) -> bool:
        """Whether the stream's first entry is past ``expected``: what we need was trimmed."""
        try:
            first: Any = await self.client.xrange(self.depth_key, count=1)
            return bool(first) and parse_entry(*first[0]).seq > expected
        except (MalformedError, *RETRIED):
            return False  # the resync finds out

    def _error(self, exc: BaseException) -> _Resync:
        if not waited_out(exc):
            raise exc
        self.synced = False
        reason: Reason = "reconnect" if isinstance(exc, REDIS_ERRORS) else "unavailable"
        return _Resync(reason, describe(exc))

    def _note(self, reason: Reason, message: str) -> None:
        self.synced = False
        self._failures += 1
        self.resyncs[reason] += 1
        self.problem = message
        log.warning("%s book resync (%s): %s", self.pair, reason, message)


def _resp3(entries: Any) -> Iterator[tuple[Any, Any]]:
    # RESP3 XREAD: {stream: [[id, {field: value}]]} (sometimes nested one level more).
    for item in entries:
        if item and isinstance(item[0], list):
            yield from item
        else:
            yield item


def connect(config: Config) -> Redis:
    """An async client for views and ``shard book``: the config's URL, timeouts and TLS keys;
    redis-py's retries off, so a dropped connection shows as a ``reconnect`` resync."""
    return plain_async_client(config)


async def connect_any(config: Config) -> Redis:
    """:func:`connect`, or on a Redis Cluster node a cluster client that reaches the pair's
    owner from any node and follows it through failovers and migrations
    (:func:`shard.transport.async_tools_client`)."""
    return await async_tools_client(config)


# `shard book`: the ladder for people, the snapshot as JSON for scripts.

TICKER_FIELDS: Final = (
    "last_trade_id",
    "last_price",
    "last_quantity",
    "last_timestamp",
    "last_taker_side",
    "trade_count",
    "volume",
    "notional",
)


def decode_ticker(fields: Mapping[Any, Any]) -> dict[str, int | str]:
    """A ``ticker:{P}`` hash: integers as ints, the taker side as text, fields in the contract's
    order, only those present."""
    got = {_text(k): _text(v) for k, v in fields.items()}
    out: dict[str, int | str] = {}
    for name in TICKER_FIELDS:
        if name in got:
            value = got[name]
            out[name] = int(value) if value.lstrip("-").isdigit() else value
    return out


def decimal(value: int, places: int = 8) -> str:
    """An integer x 10^8 as a decimal with ``places`` digits after the point (2 to 8)."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), PRICE_SCALE)
    return f"{sign}{whole}.{frac:08d}"[: len(sign) + len(str(whole)) + 1 + places]


def _places(values: Iterable[int]) -> int:
    """Digits after the point that show every value exactly (at least 2)."""
    places = 2
    for v in values:
        digits = f"{abs(v) % PRICE_SCALE:08d}".rstrip("0")
        places = max(places, len(digits))
    return places


def snapshot(view: BookView, ticker: Mapping[str, int | str], depth: int | None) -> dict[str, Any]:
    """The view as ``shard book --json`` prints it."""
    return {
        "pair": view.pair,
        "seq": view.seq,
        "input_id": view.input_id,
        "bids": [list(x) for x in view.bids(depth)],
        "asks": [list(x) for x in view.asks(depth)],
        "ticker": dict(ticker),
    }


def ladder(view: BookView, ticker: Mapping[str, int | str], depth: int) -> list[str]:
    """The ladder: asks above bids (best ask just above best bid), each row price, quantity,
    orders and the quantity cumulated from the best level; the spread; the ticker."""
    bids, asks = view.bids(depth), view.asks(depth)
    places = _places(x.price for x in (*bids, *asks))
    rows: list[tuple[str, str, str, str, str]] = []
    total = 0
    cumulated: list[tuple[Level, int]] = []
    for level in asks:
        total += level.quantity
        cumulated.append((level, total))
    for level, cum in reversed(cumulated):
        rows.append(
            ("ask", decimal(level.price, places), str(level.quantity), str(level.orders), str(cum))
        )
    mid = len(rows)
    total = 0
    for level in bids:
        total += level.quantity
        rows.append(
            (
                "bid",
                decimal(level.price, places),
                str(level.quantity),
                str(level.orders),
                str(total),
            )
        )
    header = ("", "price", "quantity", "orders", "cumulative")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(5)]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        )

    best_bid, best_ask = view.best_bid, view.best_ask
    if best_bid and best_ask:
        spread = f"spread {decimal(best_ask.price - best_bid.price, places)}"
    else:
        spread = "spread: none (one side is empty)" if best_bid or best_ask else "the book is empty"
    out = [f"{view.pair}  seq {view.seq}  input {view.input_id or '-'}", line(header)]
    out += [line(r) for r in rows[:mid]]
    out.append(f"  -- {spread} --")
    out += [line(r) for r in rows[mid:]]
    out.append(ticker_line(ticker))
    return out


def ticker_line(t: Mapping[str, int | str]) -> str:
    """The ticker in one line; fields absent from the hash are left out."""
    if not t:
        return "ticker: no trade yet"
    parts = []
    if "last_price" in t:
        last = f"last {decimal(int(t['last_price']), _places([int(t['last_price'])]))}"
        if "last_quantity" in t:
            last += f" x {t['last_quantity']}"
        if "last_taker_side" in t:
            last += f" (taker {t['last_taker_side']})"
        parts.append(last)
    if "last_timestamp" in t:
        when = datetime.fromtimestamp(int(t["last_timestamp"]) / 1000, UTC)
        parts.append(f"at {when.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}")
    if "last_trade_id" in t:
        parts.append(f"trade #{t['last_trade_id']}")
    totals = [f"{name} {t[name]}" for name in ("trade_count", "volume") if name in t]
    if "notional" in t:
        notional = int(t["notional"])
        totals.append(f"notional {decimal(notional, _places([notional]))}")
    return "ticker: " + " ".join(parts) + ("; " if parts and totals else "") + ", ".join(totals)


def status_line(view: BookView) -> str:
    """Sync state and resyncs, for ``--follow``."""
    state = "in sync" if view.synced else "resyncing"
    if not view.resyncs:
        return f"{state}; no resync"
    counts = ", ".join(f"{reason} {n}" for reason, n in sorted(view.resyncs.items()))
    return f"{state}; resyncs: {counts}; last: {view.problem}"


async def run_book(
    config: Config,
    *,
    depth: int | None,
    follow: bool,
    as_json: bool,
    out: TextIO = sys.stdout,
    interval: float = 0.1,
) -> int:
    """``shard book``: print the book once (exit status 1 when 5 attempts fail), or with
    ``follow`` redraw it (at most once per ``interval`` s) until cancelled, through outages.
    ANSI redraw on a terminal; frames one after another (separated by a blank line) or JSON
    lines otherwise."""
    client = await connect_any(config)
    view = BookView(
        client,
        config.pair,
        prefix=config.key_prefix,
        block_ms=min(1000, int(config.socket_timeout * 500)),
    )
    tty = out.isatty() and not as_json

    async def show() -> None:
        ticker = decode_ticker(await client.hgetall(view.ticker_key))
        if as_json:
            out.write(json.dumps(snapshot(view, ticker, depth)) + "\n")
        else:
            lines = ladder(view, ticker, depth or 10)
            if follow:
                lines.append(status_line(view))
            if tty:
                out.write("\x1b[H" + "".join(x + "\x1b[K\n" for x in lines) + "\x1b[J")
            else:
                out.write("\n".join(lines) + ("\n\n" if follow else "\n"))
        out.flush()

    try:
        if not follow:
            try:
                await view.sync(attempts=5)
            except SyncError as exc:
                print(f"shard book: cannot read the book of {config.pair}: {exc}", file=sys.stderr)
                return 1
            await show()
            return 0
        if tty:
            out.write("\x1b[?1049h")  # the alternate screen: the terminal comes back on exit
        dirty = asyncio.Event()

        async def consume() -> None:
            async for _ in view.updates():
                dirty.set()

        task = asyncio.create_task(consume())
        try:
            while not task.done():
                waiter = asyncio.create_task(dirty.wait())
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if dirty.is_set():
                    dirty.clear()
                    started = time.monotonic()
                    try:
                        await show()
                    except RETRIED as exc:
                        if not waited_out(exc):
                            raise
                    await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
            task.result()
        finally:
            task.cancel()
            if tty:
                out.write("\x1b[?1049l")
                out.flush()
        return 0
    finally:
        await client.aclose()
