"""The shard daemon: one pair, Redis Streams in and out, exactly-once output through crashes.

Loop: read up to ``batch_size`` entries from ``orders:{P}`` (by position with XREAD, or with
XREADGROUP when ``ack = "xack"``), apply them all to the engine, then commit the batch's trades
and events, the acknowledgement (the consumer group moved past the batch, or XACK) and the new
checkpoint in one atomic Lua call (see :mod:`shard.store`). Every so often, snapshot the engine
and trim the input stream below it.

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
import contextlib
import json
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Iterable
from operator import itemgetter
from typing import Any, Final, NamedTuple, cast

import msgspec
from redis.asyncio import Redis
from redis.backoff import ExponentialWithJitterBackoff

from shard import collector
from shard.config import Config, Keys
from shard.decode import OVERSIZE, decode_entry
from shard.engine import DIGEST_SCHEME, Engine
from shard.messages import Event, Input, Trade
from shard.metrics import Metrics
from shard.reads import ReadBudget
from shard.snapshotter import Snapshotter
from shard.store import (
    ZERO_ID,
    Checkpoint,
    CommitRefused,
    Fenced,
    SnapshotMeta,
    Store,
    parse_id,
    supported_server,
    text,
)
from shard.tasks import wait_out
from shard.transport import (
    RETRIED,
    Channel,
    Outage,
    connect,
    describe,
    error_code,
    waited_out,
)
from shard.wire import Row, add_event, add_trade, event_fields, trade_fields, trade_from_fields

log = logging.getLogger("shard.daemon")
_fields = itemgetter(1)  # an entry's field list

REPLAY_PAGE: Final = 5000
STREAM_ID: Final = re.compile(r"\d{1,20}-\d{1,20}")
LEASE_WARN_EVERY: Final = 60.0
"""Seconds between two warnings that the lease key has no expiry."""
_REFUSED: Final = {
    "wrong_type": "the key is not a stream: nothing is published until it is renamed or deleted",
    "ids_exhausted": "XADD * ran out of IDs: an entry was forged with the largest ID (rebuild "
    "the stream without it: docs/daemon.md)",
    "no_group": "the consumer group is gone: it is created again at the checkpoint",
    "xadd_failed": "an XADD failed",
}
"""Why a commit was refused with nothing written, for the log (see :class:`CommitRefused`)."""

Entries = list[tuple[bytes, list[bytes]]]
"""Stream entries as raw RESP2 replies: (id, [name, value, name, value, ...])."""


class RecoveryError(Exception):
    """Redis holds a state this engine cannot reproduce: a bug or lost input. Crash loudly."""


class _Stopping(Exception):
    """A stop was requested while waiting (for Redis, or for the lease)."""


class LeaseLost(Exception):
    """Another daemon holds the pair's lease now: stop publishing and stand by."""


class _Replayed(NamedTuple):
    """Where a replay stopped: the last input applied, the event count there, how many inputs
    it applied, and the last event and trade they produced (None if none)."""

    at: str
    events: int
    replayed: int
    last_event: Event | None
    last_trade: Trade | None


class _Pending(msgspec.Struct):
    """A batch applied to the engine whose commit has not been confirmed."""

    first: str  # the first input it applied ('' if none)
    expected: Checkpoint
    target: Checkpoint
    trades: Row  # see shard.wire.Row
    events: Row
    acks: list[str]
    inputs: int  # how many it applied: one event each
    trade_count: int


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
        self.holder = config.instance or socket.gethostname()
        self.has_lease = False
        self.max_inputs = max_inputs
        self.exit_when_idle = exit_when_idle
        self.metrics = Metrics(config.pair)
        self.engine = Engine()
        self.committed = Checkpoint()
        self.unconfirmed: list[_Pending] = []
        """Batches applied to the engine whose commit is not confirmed yet, oldest first; the
        oldest may be in flight on the writer channel while the next one is applied."""
        self._commit_args: list[Any] = []
        self._commit_sent = 0.0
        self.inputs_done = 0
        self.inputs_since_snapshot = 0
        self.snapshot_time = time.monotonic()
        self.snapshotter = Snapshotter(config, self.keys)
        self._trimming: asyncio.Task[None] | None = None
        self._trim_below = ZERO_ID
        self._index_frozen = False
        self._beat: asyncio.Task[None] | None = None
        self.read_at: str | None = None
        """With ``ack = "setid"``: the last input entry read (reads are by position)."""
        self._backlog = False
        """The last read came back full: the next one is sent without BLOCK (see _step)."""
        self.reads = ReadBudget(config.batch_size, config.read_budget_bytes, config.max_entry_bytes)
        self._asked = 0  # the count of the read in flight
        self._read_blocks = True  # whether the read in flight was sent with BLOCK
        self._ahead: Any = None  # the next batch's reply, received before the commit went out
        self.last_health = 0.0
        self.run_id: str | None = None
        self._stop = asyncio.Event()
        self._redis: Redis | None = None
        self._reader: Channel | None = None
        self._writer: Channel | None = None
        self._store: Store | None = None
        self._backoff = ExponentialWithJitterBackoff(cap=config.reconnect_max_delay, base=0.05)
        self.outage = Outage()
        self._failures = 0
        """Refusals and errors in the loop since the last commit: the backoff before a resync."""

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
        with collector.tuned():
            await self._run(install_signals)

    async def _run(self, install_signals: bool) -> None:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if install_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop)
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
        self._redis = connect(self.config)
        self._store = Store(self._redis, self.keys, self.config.group, self.config.ack)
        self._reader, self._writer = Channel(self._redis), Channel(self._redis)
        log.info("starting", extra={"fields": {"orders": self.keys.orders, "pid": os.getpid()}})
        repair: Any = self._take_over  # what must happen before the next step
        try:
            # After a stop, a batch already read ahead is still applied and committed.
            while (
                not self.stopping
                or self.reader.in_flight
                or self.writer.in_flight
                or self._ahead is not None
            ):
                try:
                    if repair is not None:
                        await self._with_retry(repair)
                        repair = None
                    await self._step()
                except Fenced as fenced:
                    await self._reset_channels()
                    log.warning(
                        "commit refused; recovering",
                        extra={
                            "fields": {"why": fenced.why, "checkpoint": fenced.checkpoint.last_id}
                        },
                    )
                    repair = self._recover
                except LeaseLost:
                    await self._reset_channels()
                    log.warning("lease lost to another daemon; standing by")
                    self.has_lease = False
                    repair = self._take_over
                except CommitRefused as refused:
                    if refused.why == "bad_rows":
                        raise
                    await self._reset_channels()
                    why = f"{_REFUSED.get(refused.why, refused.why)} ({refused.error})"
                    # A resync re-sends the batch only if the checkpoint and outputs allow.
                    repair = await self._wait_out(refused.why, why, refused.key)
                except RETRIED as exc:
                    if not waited_out(exc):
                        raise
                    await self._reset_channels()
                    kind = error_code(exc) or "connection"
                    repair = await self._wait_out(kind, describe(exc))
            if repair is None:
                with contextlib.suppress(*RETRIED):
                    await self._finish_snapshot()
        except _Stopping as exc:
            log.info(f"stopped {exc}; uncommitted work is redone by the next holder")
        finally:
            await self._reset_channels()
            await self._finish_trim()
            if self.has_lease:  # hand over at once rather than after the lease expires
                with contextlib.suppress(*RETRIED):
                    await self.store.release_lease(self.holder)
            for sig in signals:
                loop.remove_signal_handler(sig)
            await self._redis.aclose()
        log.info(
            "stopped",
            extra={"fields": {"last_id": self.committed.last_id, "inputs": self.inputs_done}},
        )

    async def _with_retry(self, action: Any) -> None:
        """Run a repair until it succeeds, backing off while Redis cannot serve it. Errors it
        does not wait out end the attempts, and so does a stop, at once (a SIGTERM is served
        while the daemon waits, not after the backoff)."""
        failures = 0
        while True:
            try:
                await action()
                return
            except RETRIED as error:
                if not waited_out(error):
                    raise
                failures += 1
                self.metrics.reconnects.inc()
                self._note_outage(error_code(error) or "connection", describe(error))
                if not await self._pause(self._backoff.compute(failures)):
                    raise _Stopping("while Redis was unavailable") from error

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless a stop comes first; False if stopping. The lease is
        renewed every second meanwhile (a wait may outlast it); :class:`LeaseLost` if another
        daemon holds it now."""
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), min(left, 1.0))
            if not self.stopping:
                with contextlib.suppress(*RETRIED):
                    await self._renew_lease()
        return not self.stopping

    def _note_outage(self, kind: str, why: str, key: str = "") -> None:
        """Log a kind of trouble with Redis once, when it starts (later retries at debug)."""
        fields = {"kind": kind, "why": why, **({"key": key} if key else {})}
        if self.outage.begin(kind, time.monotonic()):
            self.metrics.redis_waits(kind)
            self.metrics.waiting.set(1)
            log.warning("waiting for redis; retrying with backoff", extra={"fields": fields})
        else:
            log.debug("still waiting for redis", extra={"fields": fields})

    async def _wait_out(self, kind: str, why: str, key: str = "") -> Any:
        """After a refusal or an error in the loop: note it and back off (the wait grows with
        each failure until a batch commits, the lease renewed meanwhile); the repair to run
        next, a resync, or taking the lease back if it was lost meanwhile."""
        self._note_outage(kind, why, key)
        self._failures += 1
        try:
            await self._pause(self._backoff.compute(self._failures))
        except LeaseLost:
            log.warning("lease lost to another daemon while waiting; standing by")
            self.has_lease = False
            return self._take_over
        return self._resync

    def _resumed(self) -> None:
        lasted = self.outage.end(time.monotonic())
        self._failures = 0
        if lasted is not None:
            self.metrics.waiting.set(0)
            log.info("redis serves the daemon again", extra={"fields": {"after": round(lasted, 3)}})

    @property
    def store(self) -> Store:
        assert self._store is not None, "run() sets the store up"
        return self._store

    @property
    def reader(self) -> Channel:
        assert self._reader is not None, "run() sets the channels up"
        return self._reader

    @property
    def writer(self) -> Channel:
        assert self._writer is not None, "run() sets the channels up"
        return self._writer

    async def _reset_channels(self) -> None:
        """Drop both pipes and whatever was in flight on them: undelivered input is delivered
        again once ensure_group moves the group back to the checkpoint; a commit in doubt is
        settled by the resync that follows. A snapshot being written is abandoned: the
        checkpoint it was taken at may not survive what went wrong."""
        await self._abandon_snapshot()
        await self._finish_beat()
        self.read_at = None  # the next read starts from what was applied
        self.reads.restart()  # and from one entry: what follows is not known
        self._ahead, self._backlog = None, False
        for channel in (self._reader, self._writer):
            if channel is not None:
                with contextlib.suppress(*RETRIED):
                    await channel.reset()

    # -- the loop --------------------------------------------------------------------------------

    def _room(self, taken: int = 0) -> int:
        """How many entries the next read may take: the read budget's count (see
        :mod:`shard.reads`); max_inputs bounds the total, counting the batches in hand
        (``taken``) and those applied but not yet confirmed."""
        count = self.reads.count
        if self.max_inputs is not None:
            outstanding = sum(len(p.acks) for p in self.unconfirmed)
            count = min(count, self.max_inputs - self.inputs_done - outstanding - taken)
        return count

    async def _step(self) -> None:
        """One batch through the pipeline. Its read went out before the previous batch's CPU
        work; its commit goes out now and is confirmed after the next batch's CPU work.
        Commits still reach Redis strictly one after another.

        While there is a backlog (the last read came back full), the next read is sent without
        BLOCK and its reply is received *before* this batch's commit is sent. The server writes
        a reply of over 64 KB (a 1,000-entry read is about 155 KB) over several turns of its
        event loop, so a commit arriving in between, which takes it 4-7 ms, held back the rest
        of the read, and the shard waited for it on every other batch. At the tail of the
        stream the read blocks, and the commit goes out first, as it must."""
        reader = self.reader
        reply, self._ahead = self._ahead, None
        blocked = reply is None and self._read_blocks
        if reply is None:
            if not reader.in_flight:
                room = self._room()
                if room <= 0:  # max_inputs reached (a resync may confirm the last batch)
                    self.stop()
                if self.stopping:  # nothing read ahead: only the commit in flight is left
                    await self._confirm()
                    return
                await self._send_read(room)
                blocked = self._read_blocks
            reply = await reader.recv()
        entries = cast(Entries, reply[0][1]) if reply else []
        self._backlog = len(entries) >= self._asked
        if entries:
            self.read_at = entries[-1][0].decode()
            room = self._room(len(entries))
            if room > 0 and not self.stopping:
                await self._send_read(room)
            self._apply(entries)
            await self._confirm()  # the previous batch's commit, which ran during _apply
            if reader.in_flight and not self._read_blocks:
                self._ahead = await reader.recv()  # no BLOCK: answered at once
            await self._send_commit(self.unconfirmed[0])
            if self._snapshot_due() or not (reader.in_flight or self._ahead is not None):
                await self._confirm()
                if self._snapshot_due():
                    await self.snapshot()
        else:
            await self._confirm()
        await self._poll_snapshot()
        await self._heartbeat()
        done = self.max_inputs is not None and self.inputs_done >= self.max_inputs
        if done or (self.exit_when_idle and blocked and not entries):
            self.stop()

    async def _send_read(self, count: int) -> None:
        config = self.config
        self._asked = count
        self._read_blocks = not self._backlog
        block = ("BLOCK", config.block_ms) if self._read_blocks else ()
        if self.store.ack == "setid":
            # From an explicit position: after the last entry read ahead, else the last applied.
            at = self.read_at
            if at is None:
                at = (self.unconfirmed[-1].target if self.unconfirmed else self.committed).last_id
            await self.reader.send("XREAD", "COUNT", count, *block, "STREAMS", self.keys.orders, at)
            return
        await self.reader.send(
            "XREADGROUP", "GROUP", config.group, self.consumer, "COUNT", count, *block,
            "STREAMS", self.keys.orders, ">",
        )  # fmt: skip

    def _decode(self, entry_id: str, pairs: list[bytes]) -> Input:
        return decode_entry(entry_id, pairs, self.config.max_entry_bytes)

    def _apply(self, entries: Entries) -> None:
        """Apply a batch to the engine; what it publishes joins ``self.unconfirmed``."""
        engine = self.engine
        apply = engine.apply
        max_bytes = self.config.max_entry_bytes
        committed = self.unconfirmed[-1].target if self.unconfirmed else self.committed
        trades: list[Trade] = []
        events: Row = []
        acks = [raw_id.decode() for raw_id, _ in entries]
        applied = acks
        todo: Iterable[tuple[str, list[bytes]]] = zip(acks, map(_fields, entries))  # noqa: B905
        if parse_id(acks[0]) <= parse_id(committed.last_id):
            # Applied before: cannot happen once ensure_group has run; acking them is harmless.
            after = parse_id(committed.last_id)
            todo = [(i, e[1]) for i, e in zip(acks, entries, strict=True) if parse_id(i) > after]
            applied = [i for i, _ in todo]
        reject = self.metrics.reject
        biggest = 0  # the largest oversize entry: what the next read's count is made from
        for entry_id, pairs in todo:
            event = apply(decode_entry(entry_id, pairs, max_bytes), entry_id, trades)
            if event.status == "rejected":
                reject(event.reason or "")
                if event.reason == OVERSIZE:
                    biggest = max(biggest, sum(map(len, pairs)))
            add_event(events, event)
        self.reads.taken(biggest)
        trade_rows: Row = []
        for trade in trades:
            add_trade(trade_rows, trade)
        target = Checkpoint(
            applied[-1] if applied else committed.last_id,
            engine.book.next_trade_id - 1,
            committed.events + len(applied),
            engine.digest(),
        )
        self.unconfirmed.append(
            _Pending(
                applied[0] if applied else "",
                committed,
                target,
                trade_rows,
                events,
                acks,
                len(applied),
                len(trades),
            )
        )

    async def _send_commit(self, pending: _Pending) -> None:
        self._commit_args = self.store.commit_args(
            pending.expected.last_id, pending.target, pending.trades, pending.events,
            pending.acks, self.config.output_maxlen, pending.first,
        )  # fmt: skip
        self._commit_sent = time.perf_counter()
        await self.writer.send(*self._commit_args)

    async def _confirm(self) -> None:
        """Read the reply of the commit in flight, if any; its errors surface here."""
        if not self.writer.in_flight:
            return
        pending = self.unconfirmed[0]
        try:
            recreated = await self.store.finish_commit(self.writer, self._commit_args)
            for key in recreated:
                self.metrics.outputs_recreated.inc()
                log.warning(
                    "an output stream was deleted; its earlier entries are gone, and it goes on "
                    "from the checkpoint (trade_id is not reused)",
                    extra={"fields": {"key": key, "last_id": pending.expected.last_id}},
                )
        except Fenced as fenced:
            if fenced.why != "FENCED" or not _same(fenced.checkpoint, pending.target):
                raise
            # Our own commit, applied before its reply was lost and the call re-sent.
        self.metrics.commit_seconds.observe(time.perf_counter() - self._commit_sent)
        self._committed(pending)

    async def _commit(self, pending: _Pending) -> None:
        await self._send_commit(pending)
        await self._confirm()

    def _committed(self, pending: _Pending) -> None:
        n = pending.inputs
        assert self.unconfirmed[0] is pending, "commits are confirmed in order"
        if self._failures or self.outage.kind is not None:
            self._resumed()
        self.unconfirmed.pop(0)
        self.committed = pending.target
        self.inputs_done += n
        self.inputs_since_snapshot += n
        metrics = self.metrics
        metrics.inputs.inc(n)
        metrics.trades.inc(pending.trade_count)
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
        if len(self.unconfirmed) > 1 or checkpoint is None:
            await self._recover()  # two batches in doubt: rebuild rather than untangle
            return
        if self.unconfirmed:
            pending = self.unconfirmed[0]
            if _same(checkpoint, pending.target):
                self._committed(pending)
            elif not _same(checkpoint, pending.expected):
                await self._recover()
                return
        elif not _same(checkpoint, self.committed):
            await self._recover()
            return
        await self._ensure_group()
        if self.unconfirmed:  # the batch never landed: send it again as it was
            await self._check_outputs(self.committed)
            await self._commit(self.unconfirmed[0])
        log.info("resynchronised", extra={"fields": {"last_id": self.committed.last_id}})

    async def _ensure_group(self) -> None:
        """Put the consumer group at the committed checkpoint, creating it if it is gone."""
        if await self.store.ensure_group(self.committed, self.consumer) and self.committed.events:
            log.warning(
                "the consumer group was missing; created again at the checkpoint",
                extra={"fields": {"group": self.config.group, "at": self.committed.last_id}},
            )

    async def _note_run_id(self) -> None:
        info = await self.store.redis.info("server")
        run_id = str(info.get("run_id"))
        if self.run_id is not None and run_id != self.run_id:
            log.warning(
                "redis restarted (new run_id); checking the checkpoint",
                extra={"fields": {"run_id": run_id}},
            )
        self.run_id = run_id
        version = str(info.get("redis_version"))
        if not supported_server(version):
            raise RecoveryError(
                f"the server reports Redis {version}; the shard needs Redis 7.0 or newer (or "
                "Valkey): its commit script declares that it writes (a #!lua shebang), so that "
                "Redis refuses it whole when over maxmemory, and ack = setid needs XGROUP "
                "SETID ... ENTRIESREAD"
            )

    async def _renew_lease(self) -> None:
        if self.has_lease and not await self.store.renew_lease(
            self.holder, int(self.config.lease_ttl * 1000)
        ):
            raise LeaseLost

    async def _take_over(self) -> None:
        """Hold the pair's lease (waiting as a standby while another daemon does), then
        recover. The lease keeps one daemon active per pair; the commit fence stays the safety
        net should two ever overlap."""
        ttl = int(self.config.lease_ttl * 1000)
        announced = False
        warned_at = -LEASE_WARN_EVERY
        while (holder := await self.store.acquire_lease(self.holder, ttl)) is not None:
            if not announced:
                log.info(
                    "standby: another daemon holds the pair",
                    extra={"fields": {"holder": holder, "me": self.holder}},
                )
                announced = True
            now = time.monotonic()
            if now - warned_at >= LEASE_WARN_EVERY and await self.store.lease_ttl_ms() == -1:
                warned_at = now
                log.warning(
                    "the lease key has no expiry, so no daemon will ever take the pair over: "
                    "a daemon never sets one like that; delete the key if its holder is gone",
                    extra={"fields": {"key": self.keys.lease, "holder": holder}},
                )
            if self.stopping:
                raise _Stopping("as a standby")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.5)  # not a Redis call
        self.has_lease = True
        if announced:
            log.info("took over the pair", extra={"fields": {"me": self.holder}})
        await self._recover()

    async def _recover(self) -> None:
        """Rebuild the engine from the snapshot and the input stream up to the checkpoint."""
        await self._abandon_snapshot()  # it reads the engine this replaces
        store = self.store
        started = time.perf_counter()
        await self._note_run_id()
        # The engine, its checkpoint and the unconfirmed batches are replaced together, at the
        # end: if this fails half-way and a resync runs instead, it still sees the batches in
        # doubt and does not take the old engine for a consistent one.
        checkpoint = await store.checkpoint()
        if checkpoint is None:
            checkpoint = await self._rebuild_checkpoint()
        meta = await store.snapshot_meta()
        engine, at, events = await self._load_snapshot(meta)
        if parse_id(at) > parse_id(checkpoint.last_id):
            raise RecoveryError(
                f"the snapshot at {at} is ahead of the checkpoint {checkpoint.last_id}: the "
                f"checkpoint was moved back, or the snapshot comes from another pair or run; "
                f"restore {self.keys.checkpoint} from the backup the snapshot came with"
            )
        done = await self._replay(engine, at, events, checkpoint.last_id)
        at, events, replayed = done.at, done.events, done.replayed
        found = Checkpoint(at, engine.book.next_trade_id - 1, events, engine.digest())
        if not _same(found, checkpoint, digest=checkpoint.digest.startswith(DIGEST_SCHEME)):
            raise RecoveryError(
                f"replay does not reproduce the checkpoint: expected {checkpoint}, got {found}; "
                f"input entries after the snapshot are missing from {self.keys.orders} (trimmed "
                "or deleted) or the engine changed behaviour. Restore the input stream, or the "
                "snapshot and checkpoint that go with what is left of it"
            )
        await self._check_outputs(checkpoint)
        self.engine = engine
        self.committed = checkpoint
        self.unconfirmed = []
        self.inputs_since_snapshot = replayed
        collector.settle()  # the old engine goes, the new one leaves the collector's view
        # A non-empty index is a tracked dict, frozen now; an empty one is not tracked yet.
        self._index_frozen = len(engine.book) > 0
        await self._ensure_group()
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

    async def _load_snapshot(self, meta: SnapshotMeta | None) -> tuple[Engine, str, int]:
        """The engine of the stored snapshot, the last input it covers and its event count (an
        empty engine at ``0-0`` without one)."""
        if meta is None:
            return Engine(), ZERO_ID, 0
        engine = Engine.restore(await self.store.load_snapshot(meta))
        if meta.digest.startswith(DIGEST_SCHEME) and engine.digest() != meta.digest:
            raise RecoveryError(f"snapshot at {meta.input_id} does not match its own digest")
        return engine, meta.input_id, meta.events

    async def _replay(self, engine: Engine, at: str, events: int, until: str) -> _Replayed:
        """Apply the inputs after ``at`` up to ``until`` to ``engine`` without publishing."""
        replayed = 0
        scratch: list[Trade] = []
        last_event: Event | None = None
        last_trade: Trade | None = None
        start = f"({at}"
        config = self.config
        pages = ReadBudget(REPLAY_PAGE, config.read_budget_bytes, config.max_entry_bytes)
        while parse_id(at) < parse_id(until):
            page = cast(
                Entries,
                await self.store.redis.xrange(
                    self.keys.orders, min=start, max=until, count=pages.count
                ),
            )
            if not page:
                break
            biggest = 0
            for raw_id, fields in page:
                at = raw_id.decode()
                last_event = engine.apply(self._decode(at, fields), at, scratch)
                if last_event.reason == OVERSIZE:
                    biggest = max(biggest, sum(map(len, fields)))
                if scratch:
                    last_trade = scratch[-1]
                    scratch.clear()
                events += 1
                replayed += 1
            pages.taken(biggest)
            start = f"({at}"
            await self._renew_lease()  # a long replay must not let a standby take over
        return _Replayed(at, events, replayed, last_event, last_trade)

    async def _check_outputs(self, checkpoint: Checkpoint) -> None:
        """Before publishing after ``checkpoint``: the outputs must end where it says. An event
        of a later input, or a trade past its count, means a commit half-written (which the
        commit script is built never to leave) or forged entries; publishing on top of them
        would duplicate outputs, so recovery stops instead. Read in one script with the
        checkpoint: if that has moved meanwhile, another daemon is publishing, and the fence
        settles it."""
        keys = self.keys
        last, input_id, trade_id = await self.store.tails()
        if last != checkpoint.last_id:
            return
        event_after = STREAM_ID.fullmatch(input_id) and parse_id(input_id) > parse_id(last)
        if event_after or (trade_id.isdigit() and int(trade_id) > checkpoint.trades):
            raise RecoveryError(
                f"the outputs go past the checkpoint at {checkpoint.last_id} (last event for "
                f"input {input_id or '-'}, last trade_id {trade_id or '-'} of "
                f"{checkpoint.trades}): a commit was half-written or entries were forged into "
                f"{keys.trades}/{keys.events}. Delete the entries after the checkpoint (XDEL), "
                "then start the daemon again"
            )

    async def _rebuild_checkpoint(self) -> Checkpoint:
        """There is no checkpoint. A new pair starts from the beginning of the input, but a pair
        whose checkpoint was deleted must not publish its outputs again: the checkpoint is
        rebuilt from the outputs (the last event names the last input committed) and verified
        by replaying the inputs up to there (the last event and the last trade must come out
        the same), or recovery stops with what to repair."""
        store, keys = self.store, self.keys
        last_event = await store.last_entry(keys.events)
        last_trade = await store.last_entry(keys.trades)
        meta = await store.snapshot_meta()
        if last_event is None:
            published = await store.entries_added(keys.events)
            if last_trade is None and meta is None and not published:
                log.info("no checkpoint and no outputs: a new pair, from the first input")
                return Checkpoint()
            raise RecoveryError(
                f"{keys.checkpoint} is missing and {keys.events} is empty although this pair "
                f"has published ({published} events ever added"
                f"{', trades in ' + keys.trades if last_trade else ''}"
                f"{', a snapshot' if meta else ''}): where its outputs stop cannot be known. "
                f"Restore {keys.checkpoint} from a backup; or, to start the pair over, delete "
                f"{keys.trades}, {keys.events} and {keys.prefix}shard:{{{keys.pair}}}:* "
                "(consumers will then see trade_id 1 again)"
            )
        until = last_event[1].get("input_id", "")
        if not STREAM_ID.fullmatch(until):
            raise RecoveryError(
                f"{keys.checkpoint} is missing, and the last entry of {keys.events} "
                f"({last_event[0]}) is not one the shard wrote (input_id {until!r}): the stream "
                f"holds forged entries. Delete them (XDEL), or restore {keys.checkpoint}"
            )
        if meta is not None and parse_id(meta.input_id) > parse_id(until):
            meta = None  # a snapshot ahead of the outputs cannot be the one they went with
        # The replay must see every input up to the last event: from the first one ever added
        # (nothing trimmed or deleted), or from a snapshot with nothing deleted after it.
        orders = await store.stream_info(keys.orders)
        since = meta.input_id if meta else ZERO_ID
        deleted = orders.get("max-deleted-entry-id", ZERO_ID)
        first = orders.get("recorded-first-entry-id", ZERO_ID)
        if (meta is None and orders.get("entries-added", "0") != orders.get("length", "0")) or (
            meta is not None and max(parse_id(deleted), parse_id(first)) > parse_id(since)
        ):
            raise RecoveryError(
                f"{keys.checkpoint} is missing, and inputs that a rebuild would replay are "
                f"gone from {keys.orders} (trimmed or deleted after {since}): the checkpoint "
                f"cannot be verified. Restore {keys.checkpoint} from a backup"
            )
        engine, at, events = await self._load_snapshot(meta)
        done = await self._replay(engine, at, events, until)
        events, trades = done.events, engine.book.next_trade_id - 1
        replayed_event = done.last_event
        if (
            done.at != until
            or (replayed_event and event_fields(replayed_event) != _fields_list(last_event[1]))
            or (last_trade is not None and not _same_trade(last_trade[1], trades, done.last_trade))
        ):
            raise RecoveryError(
                f"{keys.checkpoint} is missing, and replaying {keys.orders} up to the last "
                f"event's input {until!r} does not reproduce the last event and trade stored "
                "(inputs trimmed or deleted, or entries forged in the outputs). Restore "
                f"{keys.checkpoint} from a backup"
            )
        checkpoint = Checkpoint(until, trades, events, engine.digest())
        if not await store.write_rebuilt_checkpoint(checkpoint):
            stored = await store.checkpoint()  # another daemon rebuilt it first
            if stored is None:
                raise RecoveryError(f"{keys.checkpoint} appeared and vanished during recovery")
            return stored
        log.warning(
            "the checkpoint was missing; rebuilt from the outputs and verified by replay",
            extra={"fields": {"last_id": until, "trades": trades, "events": events}},
        )
        return checkpoint

    # -- snapshots and health --------------------------------------------------------------------

    def _snapshot_due(self) -> bool:
        if self.snapshotter.running is not None:
            return False
        config = self.config
        since = self.inputs_since_snapshot + sum(p.inputs for p in self.unconfirmed)
        return since >= config.snapshot_every_inputs or bool(
            since and time.monotonic() - self.snapshot_time >= config.snapshot_every_seconds
        )

    async def snapshot(self) -> None:
        """Start a snapshot at the committed checkpoint (written a slice at a time between
        batches unless configured otherwise); its task publishes it, and
        :meth:`_snapshot_done` trims the inputs below it."""
        assert not self.unconfirmed, "snapshots are taken between batches"
        self.inputs_since_snapshot = 0
        self.snapshot_time = time.monotonic()
        started = time.perf_counter()
        if not self._index_frozen:  # a book grown from empty joins the frozen heap, once
            collector.freeze_survivors()
            self._index_frozen = len(self.engine.book) > 0
        await self.snapshotter.start(self.engine, self.committed, self.store)
        self.metrics.snapshot_stall.observe(time.perf_counter() - started)
        await self._poll_snapshot()  # inline, it has ended already

    async def _poll_snapshot(self) -> None:
        if self.snapshotter.running is None:
            return
        meta, failure = self.snapshotter.poll()
        if meta is not None:
            await self._snapshot_done(meta)
        elif failure is not None:
            self.metrics.snapshot_failures.inc()
            log.warning(
                "snapshot failed; the previous one stays", extra={"fields": {"why": failure}}
            )

    async def _finish_snapshot(self, timeout: float = 60.0) -> None:
        """On a clean stop: wait for a snapshot being written and publish it; then take one
        more if one fell due meanwhile (and wait for that too)."""
        deadline = time.monotonic() + timeout
        for _ in range(2):
            while self.snapshotter.running is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
                await self._poll_snapshot()
            if self.unconfirmed or not self._snapshot_due():
                return
            await self.snapshot()

    async def _abandon_snapshot(self) -> None:
        if self.snapshotter.running is not None:
            await self.snapshotter.abandon()
            log.info("snapshot abandoned")

    async def _snapshot_done(self, meta: SnapshotMeta) -> None:
        """The snapshot task has published ``meta``: trim the inputs below it in a task of its
        own (the trim holds the server for a few ms per 100k entries, and matching need not
        wait for its reply)."""
        self.metrics.last_snapshot = time.monotonic()
        self.metrics.snapshots.inc()
        log.info(
            "snapshot stored",
            extra={
                "fields": {
                    "input_id": meta.input_id,
                    "bytes": meta.bytes,
                    "chunks": meta.chunks,
                    "seconds": round(self.snapshotter.last_seconds, 3),
                }
            },
        )
        if self.config.trim_inputs:
            self._trim_below = self._trim_point(meta.input_id)
            if self._trimming is None or self._trimming.done():
                self._trimming = asyncio.get_running_loop().create_task(self._trim())

    def _trim_point(self, snapshot_id: str) -> str:
        ms = parse_id(snapshot_id)[0]
        keep = self.config.keep_inputs_ms
        return snapshot_id if keep <= 0 else f"{max(0, ms - keep)}-0"

    async def _trim(self) -> None:
        """Trim the inputs below :attr:`_trim_below` (a newer snapshot may move it meanwhile). A
        refused trim (an ACL without XTRIM, Redis out of memory, ...) is logged once, counted
        and retried with backoff: left alone, the input stream would grow without bound."""
        failures = 0
        while True:
            below = self._trim_below
            try:
                trimmed = await self.store.trim_inputs(below)
            except RETRIED as exc:
                failures += 1
                self.metrics.trim_failures.inc()
                (log.warning if failures == 1 else log.debug)(
                    "trimming inputs failed; retrying with backoff",
                    extra={"fields": {"below": below, "error": describe(exc)}},
                )
                if self.stopping:
                    return  # the next snapshot's trim covers these
                await self._pause(self._backoff.compute(failures))
                continue
            log.info("inputs trimmed", extra={"fields": {"below": below, "trimmed": trimmed}})
            if below == self._trim_below:
                return

    async def _finish_trim(self) -> None:
        trimming, self._trimming = self._trimming, None
        if trimming is not None:
            await wait_out(trimming)

    async def _heartbeat(self) -> None:
        """Once a second, from the loop: start a task that renews the lease and writes the
        heartbeat (three round trips that no batch waits for). The previous task's error, a
        lost lease or a Redis error, is raised here, in the loop; while it is still on its way,
        no new one starts."""
        now = time.monotonic()
        if now - self.last_health < 1.0:
            return
        beat, self._beat = self._beat, None
        if beat is not None:
            if not beat.done():
                self._beat = beat
                return
            beat.result()
            if self.outage.kind is not None:
                self._resumed()
        self.last_health = now
        self._beat = asyncio.get_running_loop().create_task(
            self._beat_once(self.committed.last_id, self.inputs_done)
        )

    async def _finish_beat(self) -> None:
        beat, self._beat = self._beat, None
        if beat is not None:
            await wait_out(beat)  # the daemon is stopping or resynchronising

    async def _beat_once(self, last_id: str, inputs: int) -> None:
        await self._renew_lease()
        redis = self.store.redis
        lag = None
        for group in await redis.xinfo_groups(self.keys.orders):
            if text(group.get("name")) == self.config.group:
                lag = group.get("lag")
        if isinstance(lag, int):
            self.metrics.lag.set(lag)
        doc = {
            "pair": self.config.pair,
            "pid": os.getpid(),
            "last_id": last_id,
            "inputs": inputs,
            "lag": lag,
            "time": time.time(),
        }
        await redis.set(self.keys.health, json.dumps(doc), px=int(self.config.health_ttl * 1000))


def _fields_list(fields: dict[str, str]) -> list[str]:
    return [x for pair in fields.items() for x in pair]


def _same_trade(stored: dict[str, str], trades: int, replayed: Trade | None) -> bool:
    """Whether the last stored trade is the replay's last: the same ``trade_id`` as the count,
    and the same fields when the replay made it (else the snapshot covers it)."""
    if trade_from_fields(stored).trade_id != trades:
        return False
    return replayed is None or trade_fields(replayed) == _fields_list(stored)


def _same(a: Checkpoint, b: Checkpoint, *, digest: bool = False) -> bool:
    same = (a.last_id, a.trades, a.events) == (b.last_id, b.trades, b.events)
    return same and (not digest or a.digest == b.digest)
