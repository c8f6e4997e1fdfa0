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
from shard.marketdata import BookView, Level, Update, decode_ticker
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


class Subscriber:
    """A WebSocket client's pending messages, merged by the readers and sent by its own task.

    Book changes are merged per level (the latest value wins), so what is pending is one
    update from :attr:`sent_seq` to :attr:`seq`, however many entries it spans. Trades are a
    queue of at most ``max_trades``; past it the client is marked :attr:`overflowed`. Trades
    and the ticker wait as the text of their message, encoded once for every client."""

    __slots__ = (
        "asks", "best", "bids", "checksum", "input_id", "kicked", "max_trades", "overflowed",
        "resync", "sent_seq", "seq", "snapshot", "ticker", "trades", "wake",
    )  # fmt: skip

    def __init__(self, max_trades: int) -> None:
        self.wake = asyncio.Event()
        self.snapshot = True
        """A snapshot is due (the first message, after a resync, or asked for)."""
        self.resync: str | None = None
        self.bids: dict[int, Level] = {}
        self.asks: dict[int, Level] = {}
        self.sent_seq = self.seq = 0
        self.input_id = ""
        self.checksum = 0
        self.best: tuple[Any, Any] = (None, None)
        self.trades: deque[str] = deque()
        self.max_trades = max_trades
        self.overflowed = False
        self.kicked = asyncio.Event()
        """Set with :attr:`overflowed`: its connection is closed even while a send blocks."""
        self.ticker: str | None = None

    def depth_due(self) -> bool:
        return self.seq > self.sent_seq


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

    async def _follow_book(self) -> None:
        """Merge the view's updates into the subscribers. On a cluster, an error reply the
        view does not wait out itself is waited out here too (the view syncs again after a
        backoff, once the route found the owner); on one server it stops the feed, as ever."""
        failures = 0
        while True:
            try:
                async for update in self.view.updates():
                    failures = 0
                    self._on_book(update)
                return
            except RedisError as exc:
                if self.repair is None:
                    raise
                self.view.synced = False
                failures += 1
                log.warning("%s book: %s; syncing again", self.pair, describe(exc))
                await self.repair(exc)
                await asyncio.sleep(self._backoff.compute(failures))

    def _on_book(self, update: Update) -> None:
        if update.entry is None:
            for sub in self.subscribers:
                sub.snapshot, sub.resync = True, update.resync
                sub.wake.set()
            return
        entry = update.entry
        for sub in self.subscribers:
            if sub.snapshot:
                continue
            for level in entry.bids:
                sub.bids[level.price] = level
            for level in entry.asks:
                sub.asks[level.price] = level
            sub.seq, sub.input_id, sub.checksum = entry.seq, entry.input_id, entry.checksum
            sub.best = (entry.best_bid, entry.best_ask)
            sub.wake.set()

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
        if new_trades and self.subscribers:
            texts = [ws_text({"type": "trade", **msgspec.to_builtins(t)}) for t in new_trades]
            ticker_text = ws_text({"type": "ticker", **self.ticker})
            for sub in self.subscribers:
                sub.trades.extend(texts)
                if len(sub.trades) > sub.max_trades:
                    sub.overflowed = True
                    sub.trades.clear()
                    sub.kicked.set()
                sub.ticker = ticker_text
                sub.wake.set()
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


def levels(items: Iterable[Level]) -> list[list[int]]:
    """Levels as ``[price, quantity, orders]`` for JSON."""
    return [list(level) for level in items]
