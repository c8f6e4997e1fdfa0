"""The shard daemon: one pair, Redis Streams in and out, exactly-once output through crashes.

Loop (:meth:`Shard.step`): read up to ``batch_size`` entries from ``orders:{P}``, apply them all
to the engine, then commit the batch's trades and events, the acknowledgement and the new
checkpoint in one atomic Lua call; every so often, snapshot the engine and trim the inputs
below it. Where each part lives:

* :mod:`shard.pipeline`: the protocol's state and decisions, without I/O (what to read next,
  whether a fenced reply is our own commit, the resync table);
* :mod:`shard.batch`: entries decoded and applied, and what their commit publishes;
* :mod:`shard.commit`: the commit script and its command;
* :mod:`shard.recovery`: the engine rebuilt from the snapshot and the input stream;
* :mod:`shard.lease`: one active daemon per pair, and the heartbeat;
* :mod:`shard.snapshotter`: when to snapshot, the snapshot task, the trim after it;
* :mod:`shard.outage` and :mod:`shard.transport`: waiting Redis out, and the link to it.
* :mod:`shard.cluster` and :mod:`shard.cluster_link`: on a Redis Cluster, the master that owns
  the pair's slot, found at the start of every repair (one server: asked once, then nothing).

After an error the daemon drops its pipes and repairs (:class:`Repair`): a fenced commit means
another daemon or a rollback, and it recovers; a lost lease, and it takes the pair back; a
refused commit or an error that Redis raises because it cannot serve now (:func:`assess`) is
waited out with backoff, then it resynchronises (a commit whose reply was lost is recognised by
the checkpoint: done, or sent again as it was). Any other error, an error reply that says the
command was wrong among them, is a bug and stops the daemon.

Life cycle: SIGTERM/SIGINT let the batch in hand finish and commit, then the daemon exits 0.
Bounded modes for tests: ``max_inputs`` and ``exit_when_idle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Final, NamedTuple

from shard import collector
from shard.cluster import Node, node_url
from shard.cluster_link import ClusterLink
from shard.commit import Commit, CommitRefused, Fenced
from shard.config import Config, Keys
from shard.engine import Engine
from shard.lease import Lease, LeaseLost
from shard.logs import Log
from shard.metrics import Metrics
from shard.outage import Stopping, Waits
from shard.pipeline import Pipeline, Resync
from shard.recovery import RecoveryError, check_outputs, place_group, recover, server_run_id
from shard.snapshotter import Snapshots
from shard.store import Store
from shard.transport import RETRIED, Channel, connect, describe, error_code, waited_out

__all__ = ["RecoveryError", "Shard"]

log = Log("shard.daemon")

REFUSED: Final = {
    "wrong_type": "the key is not a stream: nothing is published until it is renamed or deleted",
    "ids_exhausted": "XADD * ran out of IDs: an entry was forged with the largest ID (rebuild "
    "the stream without it: docs/daemon.md)",
    "no_group": "the consumer group is gone: it is created again at the checkpoint",
    "xadd_failed": "an XADD failed",
}
"""Why a commit was refused with nothing written, for the log (see :class:`CommitRefused`)."""


class Trouble(NamedTuple):
    """An error the daemon waits out, for the log: its kind, a sentence, the key concerned."""

    kind: str
    why: str
    key: str = ""


PROTOCOL: Final = Trouble("", "")
"""What :func:`assess` says of a fence or a lost lease: the protocol at work, not trouble."""


def assess(exc: Exception) -> Trouble | None:
    """What an error in the loop is: :data:`PROTOCOL` for a fence or a lost lease; the
    :class:`Trouble` of a refused commit or of an error Redis raises because it cannot serve
    now (both waited out); None for anything else, a bug (a batch the script cannot read, an
    error reply that says the command was wrong), which stops the daemon."""
    if isinstance(exc, Fenced | LeaseLost):
        return PROTOCOL
    if isinstance(exc, CommitRefused):
        if exc.why == "bad_rows":
            return None
        return Trouble(exc.why, f"{REFUSED.get(exc.why, exc.why)} ({exc.error})", exc.key)
    if waited_out(exc):
        return Trouble(error_code(exc) or "connection", describe(exc))
    return None


class Repair(enum.Enum):
    """What must happen before the next step, after a start or an error."""

    TAKE_OVER = "take over"  # hold the lease (standing by meanwhile), then recover
    RECOVER = "recover"  # rebuild the engine from Redis
    RESYNC = "resync"  # check the checkpoint against the batches in doubt


class Shard:
    """One pair's daemon. ``await Shard(config).run()``; :meth:`stop` asks it to finish."""

    def __init__(
        self, config: Config, *, max_inputs: int | None = None, exit_when_idle: bool = False
    ) -> None:
        self.config = config
        self.keys = keys = Keys(config.pair, config.key_prefix)
        self.exit_when_idle = exit_when_idle
        self.metrics = metrics = Metrics(config.pair)
        self.engine = Engine(track_depth=True)
        self.pipeline = Pipeline(config, keys, max_inputs)
        self.redis = redis = connect(config)  # connects on first use
        self.store = store = Store(redis, keys, config.group, config.ack)
        self.commit = Commit(
            redis, keys, config.group, config.ack, config.output_maxlen, config.depth_maxlen
        )
        self.reader, self.writer = Channel(redis), Channel(redis)
        self._stop = asyncio.Event()
        self.lease = Lease(config, keys, store, metrics, self._stop)
        self.waits = Waits(metrics, self._stop, config.reconnect_max_delay, self.lease.renew)
        self.snapshots = Snapshots(config, keys, store, metrics, self.waits)
        self.run_id: str | None = None
        self.cluster = ClusterLink(config)
        self._moved = False  # moved to another node since the last run_id was read

    @property
    def inputs_done(self) -> int:
        return self.pipeline.inputs_done

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Finish the batch in hand, commit it and return from :meth:`run`."""
        if not self._stop.is_set():
            log.info("stop requested; finishing the batch in hand")
        self._stop.set()

    # -- life cycle ------------------------------------------------------------------------------

    async def run(self, *, install_signals: bool = True) -> None:
        """Take the pair over, then read, apply and commit batches until stopped."""
        with collector.tuned():
            await self._run(install_signals)
        log.info("stopped", last_id=self.pipeline.committed.last_id, inputs=self.inputs_done)

    async def _run(self, install_signals: bool) -> None:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if install_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self.stop)
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
        log.info("starting", orders=self.keys.orders, pid=os.getpid())
        failing = False
        try:
            await self._loop()
        except Stopping as exc:
            log.info(f"stopped {exc}; uncommitted work is redone by the next holder")
        except BaseException:
            failing = True
            raise
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            await self._close(failing)

    async def _close(self, failing: bool) -> None:
        """Drop the pipes, wait for a trim, release the lease, close the client. Redis errors
        are ignored (a clean stop stays one); while another error is on its way out, so is
        any error here, logged, so that it does not hide the first one."""
        steps: list[Callable[[], Awaitable[None]]] = [
            self._reset,
            self.snapshots.finish_trim,
            self.lease.release,
            self.redis.aclose,
        ]
        for step in steps:
            try:
                await step()
            except RETRIED:
                pass
            except Exception as exc:
                if not failing:
                    raise
                log.warning("cleanup failed after an error", error=describe(exc))

    async def _loop(self) -> None:
        """Repair, then step, until stopped; after a stop, a batch already read ahead is still
        applied and committed."""
        repair: Repair | None = Repair.TAKE_OVER
        actions = {Repair.TAKE_OVER: self._take_over, Repair.RECOVER: self._recover}
        actions[Repair.RESYNC] = self._resync
        while (
            not self.stopping
            or self.reader.in_flight
            or self.writer.in_flight
            or (self.pipeline.ahead is not None)
        ):
            try:
                if repair is not None:
                    await self.waits.retry(functools.partial(self._repair, actions[repair]))
                    repair = None
                await self.step()
            except (Fenced, LeaseLost, CommitRefused, *RETRIED) as exc:
                if (trouble := assess(exc)) is None:
                    raise
                repair = await self._repair_after(exc, trouble)
        if repair is None:
            with contextlib.suppress(*RETRIED):
                await self.snapshots.finish(self.engine, self.pipeline)

    async def _repair_after(self, exc: Exception, trouble: Trouble) -> Repair:
        """Drop the pipes and choose the repair for an error in the loop (see :func:`assess`):
        recover after a fence, take the pair back after a lost lease, else back off and
        resynchronise (which sends the batch again only if the checkpoint and outputs allow)."""
        await self._reset()
        self.cluster.failed(exc)
        if isinstance(exc, Fenced):
            checkpoint = exc.checkpoint.last_id
            log.warning("commit refused; recovering", why=exc.why, checkpoint=checkpoint)
            return Repair.RECOVER
        if isinstance(exc, LeaseLost):
            log.warning("lease lost to another daemon; standing by")
            self.lease.lost()
            return Repair.TAKE_OVER
        try:
            await self.waits.failed(trouble.kind, trouble.why, trouble.key)
        except LeaseLost:
            log.warning("lease lost to another daemon while waiting; standing by")
            self.lease.lost()
            return Repair.TAKE_OVER
        return Repair.RESYNC

    async def _reset(self) -> None:
        """Drop both pipes and whatever was in flight on them: undelivered input is delivered
        again once the consumer group is back at the checkpoint; a commit in doubt is settled
        by the resync that follows. A snapshot being written is abandoned."""
        await self.snapshots.abandon()
        await self.lease.stop_beating()
        self.pipeline.reset()
        for channel in (self.reader, self.writer):
            with contextlib.suppress(*RETRIED):
                await channel.reset()

    # -- the loop --------------------------------------------------------------------------------

    async def step(self) -> None:
        """One batch through the pipeline. Its read went out before the previous batch's CPU
        work; its commit goes out now and is confirmed after the next batch's CPU work.
        Commits still reach Redis strictly one after another.

        While there is a backlog (the last read came back full), the next read is sent without
        BLOCK and its reply is received *before* this batch's commit is sent: the server writes
        a large reply over several turns of its event loop, and a commit arriving in between
        would hold back the rest of the read. At the tail of the stream the read blocks, and
        the commit goes out first, as it must."""
        pipeline, reader = self.pipeline, self.reader
        entries, pipeline.ahead = pipeline.ahead, None
        blocked = entries is None and pipeline.read_blocks
        if entries is None:
            if not reader.in_flight:
                if self.stopping or (read := pipeline.next_read()) is None:
                    # Stopping, or max_inputs reached (a resync may confirm the last batch):
                    # nothing is read ahead, only the commit in flight is left.
                    self.stop()
                    await self._confirm()
                    return
                await reader.send(*read)
                blocked = pipeline.read_blocks
            entries = pipeline.received(await reader.recv())
        if entries:
            if not self.stopping and (read := pipeline.next_read(len(entries))) is not None:
                await reader.send(*read)
            for reason in pipeline.apply(self.engine, entries).rejected:
                self.metrics.reject(reason)
            await self._confirm()  # the previous batch's commit, which ran meanwhile
            if pipeline.read_ahead_first(reader.in_flight > 0):
                pipeline.ahead = pipeline.received(await reader.recv()) or None
            await self._send_commit()
            if self._snapshot_due() or not (reader.in_flight or pipeline.ahead is not None):
                await self._confirm()
                if self._snapshot_due():
                    await self._snapshot()
        else:
            await self._confirm()
        await self.snapshots.poll()
        beat_ok = self.lease.beat(time.monotonic(), pipeline.committed.last_id, self.inputs_done)
        if beat_ok and self.waits.outage.kind is not None:
            self.waits.served()
        done = pipeline.max_inputs is not None and self.inputs_done >= pipeline.max_inputs
        if done or (self.exit_when_idle and blocked and not entries):
            self.stop()

    async def _send_commit(self) -> None:
        await self.commit.send(self.writer, self.pipeline.in_doubt)

    async def _confirm(self) -> None:
        """Read the reply of the commit in flight, if any; its errors surface here."""
        if not self.writer.in_flight:
            return
        batch = self.pipeline.in_doubt
        try:
            for key in await self.commit.finish(self.writer):
                self.metrics.outputs_recreated.inc()
                log.warning(
                    "an output stream was deleted; its earlier entries are gone, and it goes on "
                    "from the checkpoint (trade_id is not reused)",
                    key=key,
                    last_id=batch.expected.last_id,
                )
        except Fenced as fenced:
            if not self.pipeline.own_commit(fenced):
                raise
        self.metrics.commit_seconds.observe(time.perf_counter() - self.commit.sent_at)
        self._committed()

    def _committed(self) -> None:
        """The batch in doubt is committed."""
        batch = self.pipeline.in_doubt
        self.pipeline.confirmed(batch)
        if self.waits.troubled:
            self.waits.served()
        self.snapshots.committed(batch.inputs)
        if batch.depth:
            self.metrics.depth_entries.inc()
            self.metrics.level_changes.observe(len(batch.book_set) // 2 + len(batch.book_del))
        book = self.engine.book
        levels = len(book.bids.levels) + len(book.asks.levels)
        self.metrics.committed(batch.inputs, batch.trade_count, len(batch.acks), len(book), levels)

    # -- repairs ---------------------------------------------------------------------------------

    async def _repair(self, action: Callable[[], Awaitable[None]]) -> None:
        """One attempt at a repair: on a cluster, move to the slot's owner first."""
        if (owner := await self.cluster.owner(self.redis)) is not None:
            await self._bind(owner)
        await action()

    async def _bind(self, owner: Node) -> None:
        """Talk to ``owner`` from now on: a new client for the store, the commit and both
        pipes (closed before), the old client closed."""
        for channel in (self.reader, self.writer):
            with contextlib.suppress(*RETRIED):
                await channel.reset()
        old, self.redis = self.redis, connect(self.config, node_url(self.config.redis_url, owner))
        self.store.bind(self.redis)
        self.commit.redis = self.reader.redis = self.writer.redis = self.redis
        self._moved = True
        log.info("talking to the owner of the pair's slot", node=str(owner))
        with contextlib.suppress(*RETRIED):
            await old.aclose()

    async def _server_run_id(self) -> None:
        self.run_id = await server_run_id(self.store, self.run_id, self._moved)
        self._moved = False

    async def _resync(self) -> None:
        """After a Redis error: continue if Redis holds what we believe, else recover. A batch
        whose commit never landed is sent again only if its inputs are all still there (a
        failover or a restart may have lost the last ones: replication and the append-only
        file keep a prefix, so the last input stands for all)."""
        await self._server_run_id()
        plan = self.pipeline.resync(await self.store.checkpoint())
        if plan is Resync.RESEND and not await self.store.has_input(
            self.pipeline.in_doubt.target.last_id
        ):
            log.warning(
                "the inputs of the batch in doubt are gone (lost by the server); recovering",
                last_id=self.pipeline.in_doubt.target.last_id,
            )
            plan = Resync.RECOVER
        if plan is Resync.RECOVER:
            await self._recover()
            return
        if plan is Resync.LANDED:
            self._committed()
        await place_group(self.store, self.pipeline.committed, self.config.pair)
        if plan is Resync.RESEND:  # the batch never landed: send it again as it was
            await check_outputs(self.store, self.pipeline.committed)
            await self._send_commit()
            await self._confirm()
        log.info("resynchronised", last_id=self.pipeline.committed.last_id)

    async def _take_over(self) -> None:
        """Hold the pair's lease (waiting as a standby while another daemon does), then
        recover."""
        await self.lease.take()
        await self._recover()

    async def _recover(self) -> None:
        """Rebuild the engine from the snapshot and the input stream up to the checkpoint. The
        engine, its checkpoint and the batches in doubt are replaced together, at the end: if
        recovery fails half-way, a resync still sees the batches in doubt."""
        await self.snapshots.abandon()  # it reads the engine this replaces
        started = time.perf_counter()
        await self._server_run_id()
        done = await recover(self.store, self.config, self.lease.renew)
        self.engine = engine = done.engine
        self.pipeline.recovered(done.checkpoint)
        self.snapshots.recovered(done.replayed, len(engine.book))
        collector.settle()  # the old engine goes, the new one leaves the collector's view
        await place_group(self.store, self.pipeline.committed, self.config.pair)
        if done.terms_were is not None:
            await self.snapshots.store_now(engine, self.pipeline)
            log.warning(
                "trading terms changed: the inputs after the checkpoint are applied under "
                "the new ones",
                was=done.terms_were.text(),
                now=engine.terms.text(),
                after=done.checkpoint.last_id,
            )
        self.metrics.recoveries.inc()
        self.metrics.resting_orders.set(len(engine.book))
        log.info(
            "recovered",
            snapshot=done.snapshot,
            replayed=done.replayed,
            last_id=done.checkpoint.last_id,
            trades=done.checkpoint.trades,
            events=done.checkpoint.events,
            resting=len(engine.book),
            seconds=round(time.perf_counter() - started, 3),
            **dict(done.spans),
        )

    def _snapshot_due(self) -> bool:
        return self.snapshots.due(self.pipeline.pending_inputs, time.monotonic())

    async def _snapshot(self) -> None:
        await self.snapshots.take(self.engine, self.pipeline, time.monotonic())
