"""One pair's live data in the gateway, read once and fanned out in process.

A :class:`PairFeed` runs two readers, however many HTTP and WebSocket clients there are:

* a :class:`~shard.marketdata.BookView` following ``depth:{P}`` (it resyncs by itself);
* an outputs reader: one blocking ``XREAD`` of ``events:{P}`` and ``trades:{P}`` together,
  pipelined with the ``HGETALL`` of ``ticker:{P}`` and the ``XRANGE`` of the inputs after the
  replica's last one, which the server runs once the ``XREAD`` is answered: one socket write a
  cycle, however many requests it answers. A batch's trades and events are committed
  together, so the read sees every trade of the events it returns, but for the trades past
  its ``COUNT``: then the rest is drained with ``XRANGE`` (and the ticker read again) before
  any event is answered.

Order entry waits on :meth:`PairFeed.outcome` for the event of the input it published.
WebSocket clients are :class:`Subscriber` objects: the readers only merge into them (O(levels
changed) per depth entry, O(1) per trade) and wake their senders; a client's slowness stays in
its own sender.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, cast

import hiredis
import msgspec
from redis.asyncio import Redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError, ResponseError

from shard.checkpoint import ZERO_ID, parse_id
from shard.config import Keys
from shard.gateway.replica import Replica
from shard.marketdata import BookView, DepthEntry, Level, Update, decode_ticker
from shard.messages import Event, Trade
from shard.recovery import RecoveryError
from shard.transport import RETRIED, describe, text
from shard.wire import event_from_fields, trade_from_fields

log = logging.getLogger("shard.gateway")

OUTCOMES_KEPT: Final = 10_000
"""Outcomes of recent inputs kept for an order-entry request that asks after its reader saw
the event (the two run on different connections)."""
READ_COUNT: Final = 1000
BLOCK_MS: Final = 1000


def _str(value: object) -> str:
    return text(value) or ""


def pack(*args: str | int) -> bytes:
    """One command in the Redis protocol, packed by hiredis (in C)."""
    packed: bytes = hiredis.pack_command(cast(Any, args))
    return packed


async def round_trip(client: Redis, commands: list[bytes], *, errors: bool = False) -> list[Any]:
    """Write packed ``commands`` at once on a connection of ``client``'s pool and read their
    replies in order, raw (hiredis's lists and bytes, no redis-py callback): a pipeline
    without redis-py's packing and decoding in Python. An error reply is its ResponseError in
    the list, or raised once all are read if ``errors``. A connection left mid-reply (a
    timeout, a cancellation) is dropped."""
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(commands)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
    for reply in replies if errors else ():
        if isinstance(reply, ResponseError):
            raise reply
    return replies


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    """A raw entry's or hash's ``[name, value, ...]`` as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _expire(waiter: asyncio.Future[Outcome | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Outcome(msgspec.Struct):
    """An input's event, the trades it made and the order events of resting orders that
    self-trade prevention or a cancel_all removed (they share its ``input_id``)."""

    input_id: str
    event: Event
    trades: list[Trade]
    order_events: list[Event]


class Tick:
    """The book's changes from ``prev`` to ``seq`` as a flush hands them out: each changed
    level's latest value, the last entry's fields, and the ``depth`` message from ``prev``,
    encoded once for every client whose book is at ``prev``."""

    __slots__ = ("asks", "best", "bids", "checksum", "input_id", "prev", "seq", "text")

    def __init__(self, prev: int) -> None:
        self.prev = self.seq = prev
        self.bids: dict[int, Level] = {}
        self.asks: dict[int, Level] = {}
        self.input_id = ""
        self.checksum = 0
        self.best: tuple[Any, Any] = (None, None)
        self.text: str | None = None

    def add(self, entry: DepthEntry) -> None:
        """Merge the next entry: O(levels it changed)."""
        for level in entry.bids:
            self.bids[level.price] = level
        for level in entry.asks:
            self.asks[level.price] = level
        self.seq, self.input_id, self.checksum = entry.seq, entry.input_id, entry.checksum
        self.best = (entry.best_bid, entry.best_ask)

    def merge(self, later: Tick) -> None:
        """Merge the tick that follows: O(levels it changed)."""
        self.bids.update(later.bids)
        self.asks.update(later.asks)
        self.seq, self.input_id, self.checksum = later.seq, later.input_id, later.checksum
        self.best = later.best
        self.text = None

    def message(self, prev: int) -> str:
        """The ``depth`` message from ``prev`` (from :attr:`prev` up to :attr:`seq`; a book at
        a later ``prev`` already holds some of these levels, and takes their latest value):
        the changed levels best first, and the checksum at :attr:`seq`."""
        if prev == self.prev and self.text is not None:
            return self.text
        best_bid, best_ask = self.best
        text = ws_text({
            "type": "depth", "prev": prev, "seq": self.seq, "input_id": self.input_id,
            "bids": levels(sorted(self.bids.values(), reverse=True)),
            "asks": levels(sorted(self.asks.values())), "checksum": self.checksum,
            "best_bid": None if best_bid is None else list(best_bid),
            "best_ask": None if best_ask is None else list(best_ask),
        })  # fmt: skip
        if prev == self.prev:
            self.text = text
        return text


TICKS_HELD: Final = 8
"""Unsent ticks a slow client holds before they are merged into one: its memory stays one set
of levels, however far behind it is."""


class Subscriber:
    """A WebSocket client's pending messages, handed over at each flush and sent by its own
    task.

    Book changes are the flushes' :class:`Tick` objects, shared by every client; a client
    still sending when the next comes merges them (per level, the latest value wins), so what
    is pending is one update from :attr:`sent_seq`, however many flushes it spans. Trades wait
    as the text of their flush's ``trades`` message, encoded once for every client; past
    ``max_trades`` unsent trades the client is marked :attr:`overflowed`."""

    __slots__ = (
        "conflated", "kicked", "last_trade", "max_trades", "overflowed", "resync", "sent_seq",
        "snapshot", "ticker", "ticks", "trades", "unsent_trades", "wake",
    )  # fmt: skip

    def __init__(self, max_trades: int) -> None:
        self.wake = asyncio.Event()
        self.snapshot = True
        """A snapshot is due (the first message, after a resync, or asked for)."""
        self.resync: str | None = None
        self.sent_seq = 0
        self.ticks: list[Tick] = []
        self.conflated = 0
        """Ticks merged into a later one because this client had not sent them yet."""
        self.trades: deque[tuple[str, int]] = deque()
        """Unsent ``trades`` messages, each with its number of trades."""
        self.unsent_trades = 0
        self.last_trade = 0
        """The trade_id of the last trade the client has, from its snapshot or a message."""
        self.max_trades = max_trades
        self.overflowed = False
        self.kicked = asyncio.Event()
        """Set with :attr:`overflowed`: its connection is closed even while a send blocks."""
        self.ticker: str | None = None

    def push(self, tick: Tick | None, trades: list[Trade], text: str, ticker: str | None) -> None:
        """Hand over a flush: its tick, its trades with their message, the ticker after them.
        O(1), but for a client that is behind (then O(levels changed))."""
        if self.snapshot:
            return  # the snapshot to come holds all of it
        if tick is not None and tick.seq > self.sent_seq:
            ticks = self.ticks
            if len(ticks) >= TICKS_HELD:
                merged = Tick(ticks[0].prev)
                for t in ticks:
                    merged.merge(t)
                self.conflated += len(ticks) - 1
                ticks[:] = [merged]
            ticks.append(tick)
        if trades and trades[-1].trade_id > self.last_trade:
            if trades[0].trade_id <= self.last_trade:  # some came with the snapshot
                trades = [t for t in trades if t.trade_id > self.last_trade]
                text = trades_text(trades)
            self.last_trade = trades[-1].trade_id
            self.trades.append((text, len(trades)))
            self.unsent_trades += len(trades)
            if self.unsent_trades > self.max_trades:
                self.overflowed = True
                self.trades.clear()
                self.kicked.set()
        if ticker is not None:
            self.ticker = ticker
        self.wake.set()

    def take_depth(self) -> str | None:
        """The pending book changes as one ``depth`` message from :attr:`sent_seq`, if any."""
        ticks = self.ticks
        if not ticks:
            return None
        tick = ticks[0]
        if len(ticks) > 1:
            tick = Tick(tick.prev)
            for t in ticks:
                tick.merge(t)
            self.conflated += len(ticks) - 1
        ticks.clear()
        prev, self.sent_seq = self.sent_seq, tick.seq
        return tick.message(prev)

    def take_trades(self) -> str:
        """The oldest unsent ``trades`` message (call while :attr:`trades` holds one)."""
        text, count = self.trades.popleft()
        self.unsent_trades -= count
        return text


class PairFeed:
    """The readers and the state of one pair (see the module)."""

    def __init__(
        self,
        client: Redis,
        reader: Redis,
        pair: str,
        prefix: str = "",
        trades_kept: int = 10_000,
        replica: Replica | None = None,
        interval: float = 0.1,
    ) -> None:
        self.client = client
        self.reader = reader
        """The outputs reader's client: raw XRANGE replies (:func:`shard.transport.connect`),
        as the replica's inputs need; the replica's store uses it too."""
        self.replica = replica
        """Where each live order stands, advanced before an event's waiter is answered."""
        self.pair = pair
        self.keys = Keys(pair, prefix)
        self.view = BookView(client, pair, prefix=prefix)
        self.trades: deque[Trade] = deque(maxlen=trades_kept)
        self.ticker: dict[str, int | str] = {}
        self.subscribers: set[Subscriber] = set()
        self.interval = interval
        """Seconds from one flush to the next, at the least (see :meth:`_fan_out`)."""
        self._tick: Tick | None = None
        """The book's changes since the last flush."""
        self._new_trades: list[Trade] = []
        """The trades read since the last flush."""
        self._due = asyncio.Event()
        self.outcomes: OrderedDict[str, Outcome] = OrderedDict()
        self._waiters: dict[str, asyncio.Future[Outcome | None]] = {}
        self._pending: dict[str, Outcome] = {}
        """Inputs whose trades or order events are in hand but not yet their own event."""
        self._events_id = "0-0"
        self._trades_id = "0-0"
        self._started = False
        self.outputs_ok = False
        self.problem: str | None = None
        self._backoff = ExponentialWithJitterBackoff(cap=2.0, base=0.05)
        self.repair: Callable[[BaseException], Awaitable[bool]] | None = None
        """On a cluster: called with each error of the outputs reader, before the backoff, to
        find the slot's owner again (:meth:`shard.gateway.route.PairRoute.repair`)."""

    def bind(self, client: Redis, reader: Redis) -> None:
        """Send every command of the pair (order entry, the book view, the outputs, the
        replica) through these clients from now on: on a cluster, the new owner's. A read in
        flight on the old clients ends with their close, and is retried on these."""
        self.client, self.reader = client, reader
        self.view.client = client
        if self.replica is not None:
            self.replica.store.bind(reader)

    # -- the readers -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the book and the outputs until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow_book())
            tasks.create_task(self._follow_outputs())
            tasks.create_task(self._fan_out())

    async def _follow_book(self) -> None:
        """Merge the view's updates into the subscribers. On a cluster, an error reply the
        view does not wait out itself is waited out here too (the view syncs again after a
        backoff, once the route found the owner); on one server it stops the feed, as ever."""
        failures = 0
        while True:
            try:
                async for update in self.view.updates():
                    failures = 0
                    self.on_book(update)
                return
            except RedisError as exc:
                if self.repair is None:
                    raise
                self.view.synced = False
                failures += 1
                log.warning("%s book: %s; syncing again", self.pair, describe(exc))
                await self.repair(exc)
                await asyncio.sleep(self._backoff.compute(failures))

    def on_book(self, update: Update) -> None:
        """Merge an entry into the tick to flush: O(levels it changed), however many clients."""
        entry = update.entry
        if entry is None:  # synced afresh: every client gets a snapshot
            self._tick = None
            for sub in self.subscribers:
                sub.snapshot, sub.resync = True, update.resync
                sub.wake.set()
            return
        if self._tick is None:
            self._tick = Tick(entry.seq - 1)
        self._tick.add(entry)
        self._due.set()

    def on_trades(self, trades: list[Trade]) -> None:
        """Hold new trades (already in :attr:`trades`) for the next flush, if anyone listens."""
        if self.subscribers:
            self._new_trades += trades
            self._due.set()

    async def _fan_out(self) -> None:
        """Flush as soon as something is new, then wait :attr:`interval` before the next: an
        idle feed sends a change at once, a busy one at most one flush an interval, so what
        each client costs the gateway is bounded by the interval, not by the input rate."""
        while True:
            await self._due.wait()
            self._due.clear()
            self.flush()
            await asyncio.sleep(self.interval)

    def flush(self) -> None:
        """Hand the tick and the trades since the last flush to every client: each message is
        encoded once, O(1) a client (but for clients that are behind)."""
        tick, self._tick = self._tick, None
        trades, self._new_trades = self._new_trades, []
        text, ticker = "", None
        if trades:
            text = trades_text(trades)
            ticker = ws_text({"type": "ticker", **self.ticker})
        for sub in self.subscribers:
            sub.push(tick, trades, text, ticker)

    async def _follow_outputs(self) -> None:
        failures = 0
        while True:
            try:
                if not self.outputs_ok:
                    await self._start_outputs()
                await self._read_outputs()
                failures = 0
            except RETRIED as exc:
                self.outputs_ok = False
                self.problem = describe(exc)
                log.warning("%s outputs: %s; reading again", self.pair, self.problem)
                failures += 1
                if self.repair is not None:
                    await self.repair(exc)
                await asyncio.sleep(self._backoff.compute(failures))

    async def _start_outputs(self) -> None:
        """Load the latest trades and the ticker; follow from the last trade and event."""
        keys = self.keys
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xrevrange(keys.trades, count=self.trades.maxlen)
            pipe.xrevrange(keys.events, count=1)
            pipe.hgetall(keys.ticker)
            trades, events, ticker = await pipe.execute()
        if not self._started:  # a restart goes on from where it was
            self.trades.extend(trade_from_fields(f) for _, f in reversed(trades))
            if trades:
                self._trades_id = _str(trades[0][0])
            if events:
                self._events_id = _str(events[0][0])
            self._started = True
        self.ticker = decode_ticker(ticker)
        if self.replica is not None and self.replica.engine is None:
            try:
                await self.replica.build()
            except RecoveryError as exc:
                log.warning(
                    "%s order replica: %s; trying again with the next events", self.pair, exc
                )
        self.outputs_ok = True
        self.problem = None

    async def _read_outputs(self) -> None:
        keys = self.keys
        replica = self.replica
        ahead = replica is not None and replica.wants_inputs()
        commands = [
            pack("XREAD", "COUNT", READ_COUNT, "BLOCK", BLOCK_MS, "STREAMS", keys.events,
                 keys.trades, self._events_id, self._trades_id),
            pack("HGETALL", keys.ticker),
        ]  # fmt: skip
        if replica is not None and ahead:
            after = f"({replica.read_id}"
            commands.append(pack("XRANGE", keys.orders, after, "+", "COUNT", READ_COUNT))
        replies = await round_trip(self.reader, commands, errors=True)
        got = {_str(name): entries for name, entries in replies[0] or ()}
        events: list[Any] = got.get(keys.events, [])
        read: list[Any] = got.get(keys.trades, [])
        new_trades = self._take_trades(read)
        ticker = replies[1]
        if len(read) == READ_COUNT:  # more trades than one read: the rest before any event
            drained, ticker = await self._drain_trades()
            new_trades += drained
        if new_trades:
            self.trades.extend(new_trades)
            self.ticker = decode_ticker(_fields(ticker))
        if new_trades:
            self.on_trades(new_trades)
        if replica is not None and ahead:
            replica.read_ahead(replies[2])
        parsed = [event_from_fields(_fields(fields)) for _, fields in events]
        if replica is not None and parsed:
            try:
                await replica.advance(parsed)
            except RecoveryError as exc:
                log.warning("%s order replica: %s; rebuilding it", self.pair, exc)
                replica.engine = None
        for event in parsed:
            self._on_event(event)
        if events:
            self._events_id = _str(events[-1][0])
            last = parse_id(parsed[-1].input_id or ZERO_ID)
            for input_id in [i for i in self._pending if parse_id(i) < last]:
                # Trades of an input whose event is behind us: its event was trimmed away.
                del self._pending[input_id]

    def _take_trades(self, entries: list[Any]) -> list[Trade]:
        """Decode raw ``trades:{P}`` entries, each held for its input's outcome; O(1) each."""
        got: list[Trade] = []
        for _, fields in entries:
            trade = trade_from_fields(_fields(fields))
            got.append(trade)
            if trade.input_id:
                self._held(trade.input_id).trades.append(trade)
        if entries:
            self._trades_id = _str(entries[-1][0])
        return got

    async def _drain_trades(self) -> tuple[list[Trade], list[bytes]]:
        """The trades left after a full read, and the ticker read after the last of them."""
        got: list[Trade] = []
        keys = self.keys
        while True:
            after = f"({self._trades_id}"
            commands = [
                pack("XRANGE", keys.trades, after, "+", "COUNT", READ_COUNT),
                pack("HGETALL", keys.ticker),
            ]
            entries, ticker = await round_trip(self.reader, commands, errors=True)
            got += self._take_trades(entries)
            if len(entries) < READ_COUNT:
                return got, ticker

    def _held(self, input_id: str) -> Outcome:
        held = self._pending.get(input_id)
        if held is None:
            held = self._pending[input_id] = Outcome(input_id, Event(input_id, None, ""), [], [])
        return held

    def _on_event(self, event: Event) -> None:
        input_id = event.input_id or ""
        held = self._held(input_id)
        if event.resting_order:  # a resting order this input removed: before its own event
            held.order_events.append(event)
            return
        del self._pending[input_id]
        held.event = event
        self.outcomes[input_id] = held
        if len(self.outcomes) > OUTCOMES_KEPT:
            self.outcomes.popitem(last=False)
        waiter = self._waiters.pop(input_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(held)

    # -- what the routes ask -------------------------------------------------------------------

    async def outcome(self, input_id: str, timeout: float) -> Outcome | None:
        """The outcome of ``input_id`` once its event is read, or None after ``timeout`` s.
        Call it right after the XADD returned, before anything else awaits; one caller an
        input (the request that published it)."""
        done = self.outcomes.get(input_id)
        if done is not None:
            return done
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Outcome | None] = loop.create_future()
        self._waiters[input_id] = waiter
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            if self._waiters.get(input_id) is waiter:
                del self._waiters[input_id]

    def latest_trades(self, limit: int) -> list[Trade]:
        """The latest ``limit`` trades held, oldest first."""
        n = len(self.trades)
        return [self.trades[i] for i in range(max(0, n - limit), n)]

    def snapshot(self, sub: Subscriber) -> dict[str, Any]:
        """The ``snapshot`` message: the whole book now, the ticker and the latest trades. The
        subscriber's pending changes and trades are dropped (the snapshot holds them)."""
        view = self.view
        sub.snapshot, sub.resync = False, None
        sub.sent_seq = view.seq
        sub.ticks.clear()
        sub.trades.clear()
        sub.unsent_trades = 0
        sub.last_trade = self.trades[-1].trade_id if self.trades else 0
        sub.ticker = None
        return {
            "type": "snapshot", "seq": view.seq, "input_id": view.input_id,
            "bids": levels(view.bids()), "asks": levels(view.asks()),
            "checksum": view.book.checksum(), "ticker": self.ticker,
            "trades": self.latest_trades(100),
        }  # fmt: skip

    def subscribe(self, max_trades: int) -> Subscriber:
        sub = Subscriber(max_trades)
        sub.wake.set()
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)


_json: Final = msgspec.json.Encoder()


def ws_text(message: dict[str, Any]) -> str:
    """A WebSocket message's text."""
    return _json.encode(message).decode()


def trades_text(trades: list[Trade]) -> str:
    """The ``trades`` message of these trades, oldest first."""
    return _json.encode({"type": "trades", "trades": trades}).decode()


def levels(items: Iterable[Level]) -> list[list[int]]:
    """Levels as ``[price, quantity, orders]`` for JSON."""
    return [list(level) for level in items]
