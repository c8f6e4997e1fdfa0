"""The shard daemon: one pair, Redis Streams in and out, exactly-once output through crashes.

Loop: read up to ``batch_size`` entries from ``orders:{P}`` with XREADGROUP (a consumer group,
the consumer named after the pair), apply them all to the engine, then commit the batch's trades
and events, the acknowledgements and the new checkpoint in one atomic Lua call (see
:mod:`shard.store`). Every so often, snapshot the engine and trim the input stream below it.

Recovery (at start, and whenever Redis no longer holds what this daemon believes): load the latest
snapshot, re-apply the inputs after it up to the checkpoint without publishing, verify trade and
event counts and the state digest against the checkpoint, then move the consumer group to the
checkpoint, so that ``>`` delivers exactly the entries after it. The input stream is the journal
and the engine is deterministic, so the outputs after any crash equal an uninterrupted run's.

Redis errors (connection lost, restart, ``LOADING``) never kill the daemon: it resynchronises with
redis-py's :class:`~redis.asyncio.retry.Retry` and jittered exponential backoff. A commit whose
reply was lost is recognised by the checkpoint (done, or re-sent as it was); anything else
(another daemon, a rollback after a Redis restart) triggers a full recovery.

Life cycle: SIGTERM/SIGINT let the batch in hand finish and commit, then the daemon exits 0.
Bounded modes for tests: ``max_inputs`` and ``exit_when_idle``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from typing import Any, Final, cast

import msgspec
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import BusyLoadingError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shard.config import Config, Keys
from shard.decode import decode_fields
from shard.engine import Engine
from shard.messages import Input, Invalid, Trade
from shard.metrics import Metrics
from shard.store import ZERO_ID, Checkpoint, Fenced, Store, parse_id
from shard.wire import event_fields, trade_fields

log = logging.getLogger("shard.daemon")

OVERSIZE: Final = "oversize"
REDIS_ERRORS: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ReadOnlyError,
    ConnectionError,
    OSError,
)
REPLAY_PAGE: Final = 5000

Entries = list[tuple[bytes, dict[bytes, bytes]]]
"""Stream entries as redis-py returns them over RESP2 without decoding: (id, fields)."""


class RecoveryError(Exception):
    """Redis holds a state this engine cannot reproduce: a bug or lost input. Crash loudly."""


class _Stopping(Exception):
    """A stop was requested while waiting for Redis to come back."""


class _Pending(msgspec.Struct):
    """A batch applied to the engine whose commit has not been confirmed."""

    expected: Checkpoint
    target: Checkpoint
    trades: list[list[str]]
    events: list[list[str]]
    acks: list[str]


def connect(config: Config) -> Redis:
    """A client for the daemon. Connection-level retries are off on purpose: a silently
    re-sent XREADGROUP could skip entries; the daemon resynchronises instead."""
    return Redis.from_url(
        config.redis_url,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.connect_timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        client_name=f"shard:{config.pair}",
    )


class Shard:
    """One pair's daemon. ``await Shard(config).run()``; :meth:`stop` asks it to finish."""

    def __init__(
        self,
        config: Config,
        *,
        max_inputs: int | None = None,
        exit_when_idle: bool = False,
    ) -> None:
        self.config = config
        self.keys = Keys(config.pair, config.key_prefix)
        self.consumer = config.pair
        self.max_inputs = max_inputs
        self.exit_when_idle = exit_when_idle
        self.metrics = Metrics(config.pair)
        self.engine = Engine()
        self.committed = Checkpoint()
        self.pending: _Pending | None = None
        self.inputs_done = 0
        self.inputs_since_snapshot = 0
        self.snapshot_time = time.monotonic()
        self.last_health = 0.0
        self.run_id: str | None = None
        self._stop = asyncio.Event()
        self._redis: Redis | None = None
        self._store: Store | None = None
        self._resync_retry = Retry(
            ExponentialWithJitterBackoff(cap=config.reconnect_max_delay, base=0.05),
            retries=-1,
            supported_errors=REDIS_ERRORS,  # type: ignore[arg-type]  # OSError too, on purpose
        )

    # -- life cycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the batch in hand, commit it and return from :meth:`run`."""
        if not self._stop.is_set():
            log.info("stop requested; finishing the batch in hand")
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self, *, install_signals: bool = True) -> None:
        """Recover, then read, apply and commit batches until stopped."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if install_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop)
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
        self._redis = connect(self.config)
        self._store = Store(self._redis, self.keys, self.config.group)
        log.info("starting", extra={"fields": {"orders": self.keys.orders, "pid": os.getpid()}})
        repair: Any = self._recover  # what must happen before the next step
        try:
            while not self.stopping:
                try:
                    if repair is not None:
                        await self._with_retry(repair)
                        repair = None
                    await self._step()
                except Fenced as fenced:
                    log.warning(
                        "checkpoint moved under us; recovering",
                        extra={"fields": {"checkpoint": fenced.checkpoint.last_id}},
                    )
                    repair = self._recover
                except REDIS_ERRORS as exc:
                    log.warning(
                        "redis error; resynchronising", extra={"fields": {"error": repr(exc)}}
                    )
                    repair = self._resync
        except _Stopping:
            log.info("stopped while Redis was unavailable; uncommitted work is redone on restart")
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            await self._redis.aclose()
        log.info(
            "stopped",
            extra={"fields": {"last_id": self.committed.last_id, "inputs": self.inputs_done}},
        )

    async def _with_retry(self, action: Any) -> None:
        async def fail(error: Exception) -> None:
            self.metrics.reconnects.inc()
            log.warning("redis unavailable; retrying", extra={"fields": {"error": repr(error)}})
            if self.stopping:
                raise _Stopping from error

        await self._resync_retry.call_with_retry(action, fail)

    @property
    def store(self) -> Store:
        assert self._store is not None, "run() sets the store up"
        return self._store

    # -- the loop --------------------------------------------------------------------------------

    async def _step(self) -> None:
        config = self.config
        count = config.batch_size
        if self.max_inputs is not None:
            count = min(count, self.max_inputs - self.inputs_done)
        reply = cast(
            list[tuple[bytes, Entries]],
            await self.store.redis.xreadgroup(
                config.group,
                self.consumer,
                {self.keys.orders: ">"},
                count=count,
                block=config.block_ms,
            ),
        )
        entries = reply[0][1] if reply else []
        if entries:
            self._apply(entries)
            await self._commit()
            await self._maybe_snapshot()
        await self._heartbeat()
        if (self.max_inputs is not None and self.inputs_done >= self.max_inputs) or (
            not entries and self.exit_when_idle
        ):
            self.stop()

    def _decode(self, entry_id: str, fields: dict[bytes, bytes]) -> Input:
        size = sum(len(k) + len(v) for k, v in fields.items())
        if size > self.config.max_entry_bytes:
            return Invalid(
                None,
                OVERSIZE,
                f"the entry is {size} bytes, more than the "
                f"{self.config.max_entry_bytes} allowed (max_entry_bytes)",
            )
        return decode_fields(fields, parse_id(entry_id)[0])

    def _apply(self, entries: Entries) -> None:
        """Apply a batch to the engine; what it publishes waits in ``self.pending``."""
        engine = self.engine
        committed = self.committed
        after = parse_id(committed.last_id)
        trades: list[Trade] = []
        events: list[list[str]] = []
        acks: list[str] = []
        last_id = committed.last_id
        metrics = self.metrics
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            acks.append(entry_id)
            if parse_id(entry_id) <= after:
                continue  # applied before (cannot happen after ensure_group; harmless to ack)
            event = engine.apply(self._decode(entry_id, fields), entry_id, trades)
            if event.reason is not None and event.status == "rejected":
                metrics.reject(event.reason)
            events.append(event_fields(event))
            last_id = entry_id
        target = Checkpoint(
            last_id,
            engine.book.next_trade_id - 1,
            committed.events + len(events),
            engine.digest(),
        )
        self.pending = _Pending(committed, target, [trade_fields(t) for t in trades], events, acks)

    async def _commit(self) -> None:
        pending = self.pending
        assert pending is not None
        started = time.perf_counter()
        try:
            await self.store.commit(
                pending.expected.last_id,
                pending.target,
                pending.trades,
                pending.events,
                pending.acks,
                self.config.output_maxlen,
            )
        except Fenced as fenced:
            if not _same(fenced.checkpoint, pending.target):
                raise
            # Our own commit, applied before its reply was lost and the call re-sent.
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self._committed(pending)

    def _committed(self, pending: _Pending) -> None:
        n = len(pending.events)
        self.committed = pending.target
        self.pending = None
        self.inputs_done += n
        self.inputs_since_snapshot += n
        metrics = self.metrics
        metrics.inputs.inc(n)
        metrics.trades.inc(len(pending.trades))
        metrics.batch_size.observe(len(pending.acks))
        book = self.engine.book
        metrics.resting_orders.set(len(book))
        metrics.price_levels.set(len(book.bids.levels) + len(book.asks.levels))

    # -- resynchronisation and recovery ----------------------------------------------------------

    async def _resync(self) -> None:
        """After a Redis error: continue if Redis holds what we believe, else recover."""
        store = self.store
        await self._note_run_id()
        checkpoint = await store.checkpoint()
        pending = self.pending
        if pending is not None:
            if _same(checkpoint, pending.target):
                self._committed(pending)
            elif _same(checkpoint, pending.expected):
                await self._commit()  # the batch never landed: send it again as it was
            else:
                await self._recover()
                return
        elif not _same(checkpoint, self.committed):
            await self._recover()
            return
        await store.ensure_group(self.committed.last_id)
        log.info("resynchronised", extra={"fields": {"last_id": self.committed.last_id}})

    async def _note_run_id(self) -> None:
        info = await self.store.redis.info("server")
        run_id = str(info.get("run_id"))
        if self.run_id is not None and run_id != self.run_id:
            log.warning(
                "redis restarted (new run_id); checking the checkpoint",
                extra={"fields": {"run_id": run_id}},
            )
        self.run_id = run_id

    async def _recover(self) -> None:
        """Rebuild the engine from the snapshot and the input stream up to the checkpoint."""
        store = self.store
        started = time.perf_counter()
        await self._note_run_id()
        self.pending = None
        checkpoint = await store.checkpoint()
        meta = await store.snapshot_meta()
        if meta is not None:
            engine = Engine.restore(await store.load_snapshot(meta))
            at, events = meta.input_id, meta.events
            if engine.digest() != meta.digest:
                raise RecoveryError(f"snapshot at {at} does not match its own digest")
        else:
            engine, at, events = Engine(), ZERO_ID, 0
        if parse_id(at) > parse_id(checkpoint.last_id):
            raise RecoveryError(f"snapshot at {at} is ahead of the checkpoint {checkpoint.last_id}")
        replayed = 0
        scratch: list[Trade] = []
        start = f"({at}"
        while parse_id(at) < parse_id(checkpoint.last_id):
            page = cast(
                Entries,
                await store.redis.xrange(
                    self.keys.orders, min=start, max=checkpoint.last_id, count=REPLAY_PAGE
                ),
            )
            if not page:
                break
            for raw_id, fields in page:
                at = raw_id.decode()
                engine.apply(self._decode(at, fields), at, scratch)
                scratch.clear()
                events += 1
                replayed += 1
            start = f"({at}"
        found = Checkpoint(at, engine.book.next_trade_id - 1, events, engine.digest())
        if not _same(found, checkpoint, digest=bool(checkpoint.digest)):
            raise RecoveryError(
                f"replay does not reproduce the checkpoint: expected {checkpoint}, got {found}; "
                "input entries after the snapshot are missing or the engine changed behaviour"
            )
        self.engine = engine
        self.committed = checkpoint
        self.inputs_since_snapshot = replayed
        await store.ensure_group(checkpoint.last_id)
        self.metrics.recoveries.inc()
        book = engine.book
        self.metrics.resting_orders.set(len(book))
        log.info(
            "recovered",
            extra={
                "fields": {
                    "snapshot": meta.input_id if meta else None,
                    "replayed": replayed,
                    "last_id": checkpoint.last_id,
                    "trades": checkpoint.trades,
                    "events": checkpoint.events,
                    "resting": len(book),
                    "seconds": round(time.perf_counter() - started, 3),
                }
            },
        )

    # -- snapshots and health --------------------------------------------------------------------

    async def _maybe_snapshot(self) -> None:
        config = self.config
        due = self.inputs_since_snapshot >= config.snapshot_every_inputs or (
            self.inputs_since_snapshot
            and time.monotonic() - self.snapshot_time >= config.snapshot_every_seconds
        )
        if due:
            await self.snapshot()

    async def snapshot(self) -> None:
        """Store a snapshot at the committed checkpoint, then trim inputs below it."""
        assert self.pending is None, "snapshots are taken between batches"
        started = time.perf_counter()
        data = self.engine.snapshot()
        cp = self.committed
        meta = await self.store.save_snapshot(
            data, cp.last_id, cp.trades, cp.events, cp.digest, self.config.snapshot_chunk_bytes
        )
        self.inputs_since_snapshot = 0
        self.snapshot_time = self.metrics.last_snapshot = time.monotonic()
        self.metrics.snapshots.inc()
        trimmed = 0
        if self.config.trim_inputs:
            ms = parse_id(meta.input_id)[0]
            keep = self.config.keep_inputs_ms
            below = meta.input_id if keep <= 0 else f"{max(0, ms - keep)}-0"
            trimmed = await self.store.trim_inputs(below)
        log.info(
            "snapshot stored",
            extra={
                "fields": {
                    "input_id": meta.input_id,
                    "bytes": meta.bytes,
                    "chunks": meta.chunks,
                    "trimmed": trimmed,
                    "seconds": round(time.perf_counter() - started, 3),
                }
            },
        )

    async def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self.last_health < 1.0:
            return
        self.last_health = now
        redis = self.store.redis
        lag = None
        for group in await redis.xinfo_groups(self.keys.orders):
            if _text(group.get("name")) == self.config.group:
                lag = group.get("lag")
        if isinstance(lag, int):
            self.metrics.lag.set(lag)
        doc = {
            "pair": self.config.pair,
            "pid": os.getpid(),
            "last_id": self.committed.last_id,
            "inputs": self.inputs_done,
            "lag": lag,
            "time": time.time(),
        }
        await redis.set(self.keys.health, json.dumps(doc), px=int(self.config.health_ttl * 1000))


def _text(value: object) -> object:
    return value.decode() if isinstance(value, bytes) else value


def _same(a: Checkpoint, b: Checkpoint, *, digest: bool = False) -> bool:
    same = (a.last_id, a.trades, a.events) == (b.last_id, b.trades, b.events)
    return same and (not digest or a.digest == b.digest)
