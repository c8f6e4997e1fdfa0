"""Snapshots written a slice at a time between batches, so a large book does not stall the shard.

At a batch boundary the daemon opens a :class:`~shard.state.SnapshotWriter` on its engine at the
committed checkpoint. A task on the daemon's event loop then encodes it in slices, one a
millisecond at most, at a pace of ``snapshot_slice_orders`` orders a millisecond (250 by
default; after a long batch, a slice makes up for the time it waited), and writes each full
chunk of a new generation as soon as it is encoded, over its own connection, while the daemon
goes on matching: the book copies a level only when it changes one the writer has not reached
yet. The task also reads the header and notes the generation it begins
(:meth:`Store.begin_snapshot`); once every chunk is written it points the header at the new
generation (:meth:`Store.publish_snapshot`: only ahead of the stored one, never ahead of the
checkpoint) and unlinks the old one. The daemon then trims the inputs below it from another
task.

Costs to the daemon: opening is O(price levels); a batch waits for at most one slice at each
turn of the event loop; O(orders) to encode in all, plus the copies of the levels changed
before they were encoded (docs/benchmarks.md has the figures). Memory: one chunk and one slice
of encoded bytes, and those copies. No fork, no second process, no copy-on-write of the heap.

Rules:

- one snapshot at a time;
- the generation is the checkpoint's event count, so two writers of one generation (a daemon
  killed half-way and its successor) write the same bytes;
- any Redis error, fence or recovery in the daemon abandons the snapshot (its task is
  cancelled and, unless it had got that far, its generation is never published): the
  checkpoint it was taken at may no longer hold. The publish itself is fenced in Redis too;
- with ``snapshot_in_background = false`` the same slices run back to back, stalling matching.

A snapshot abandoned half-way leaves the chunks it wrote; nothing points at them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Final

import msgspec

from shard import collector
from shard.checkpoint import ZERO_ID, Checkpoint, SnapshotMeta, parse_id
from shard.config import Config, Keys
from shard.engine import Engine
from shard.logs import Log
from shard.metrics import Metrics
from shard.outage import NotYet, Waits
from shard.pipeline import Pipeline, ProtocolError
from shard.state import SnapshotWriter
from shard.store import Store
from shard.tasks import wait_out
from shard.transport import RETRIED, Channel, describe

log = Log("shard.daemon")

IN_FLIGHT = 2
"""Chunk writes sent ahead of their replies."""
PAUSE = 0.001
"""Seconds between two slices in the background (the event loop's timer resolution): back to
back, slices would run ahead of every batch at each step of its way through the loop."""
CATCH_UP: Final = 16
"""The most milliseconds of pace one slice makes up for (see :func:`write_chunks`)."""
WAIT_POLL: Final = 0.01
"""Seconds between two looks at a snapshot being finished on a clean stop."""
FINISH_WITHIN: Final = 60.0
"""Seconds a clean stop waits for a snapshot being written."""


async def write_chunks(
    writer: SnapshotWriter,
    channel: Channel,
    keys: Keys,
    generation: int,
    chunk_bytes: int,
    slice_orders: int,
    *,
    pause: bool,
) -> tuple[int, int]:
    """Encode ``writer`` to the end and store its bytes as the chunks of ``generation``, each
    one ``SET`` as soon as it is full. How many chunks and bytes.

    ``pause``: in the background, at a pace of ``slice_orders`` orders a millisecond: a slice
    covers the time since the last one began, so on a quiet loop (a slice a millisecond) it
    is ``slice_orders`` orders, and after a long batch (a backlog) up to :data:`CATCH_UP`
    times as many, so that draining a backlog does not stall the snapshot. Else, slices of
    ``slice_orders`` back to back. Chunk ``i`` holds bytes ``[i * chunk_bytes, (i + 1) *
    chunk_bytes)`` of the snapshot (at least one chunk, even if empty)."""
    pending = bytearray()
    chunks = size = 0

    async def put(part: bytes) -> None:
        nonlocal chunks
        if channel.in_flight >= IN_FLIGHT:
            await channel.recv()  # an error reply raises here
        await channel.send("SET", keys.snapshot_chunk(generation, chunks), part)
        chunks += 1

    began = time.perf_counter()
    while not writer.done:
        budget = slice_orders
        if pause:
            now = time.perf_counter()
            budget = int(slice_orders * min(CATCH_UP, max(1.0, (now - began) * 1000)))
            began = now
        data = writer.step(budget)
        size += len(data)
        pending += data
        while len(pending) >= chunk_bytes:
            await put(bytes(pending[:chunk_bytes]))
            del pending[:chunk_bytes]
        if pause:
            await asyncio.sleep(PAUSE)  # the daemon's batches go first
    if pending or not chunks:
        await put(bytes(pending))
    while channel.in_flight:
        await channel.recv()
    return chunks, size


Written = tuple[SnapshotMeta, str] | None
"""What a snapshot task ends with: its meta and :meth:`Store.publish_snapshot`'s status, or
None if the header already named its generation."""

REFUSED: Final = {
    "STALE": "the header already names it or a later one (another writer)",
    "AHEAD": "the checkpoint in Redis is behind it (Redis lost its last writes?)",
}


class SnapshotNotStored(NotYet):
    """A snapshot that had to be stored before going on was not (the sentence says why)."""


@dataclass
class Running:
    task: asyncio.Task[Written]
    writer: SnapshotWriter
    started: float


class Snapshotter:
    """Takes one snapshot at a time of a daemon's engine; see the module's rules."""

    def __init__(self, config: Config, keys: Keys) -> None:
        self.config = config
        self.keys = keys
        self.running: Running | None = None
        self.last_seconds = 0.0  # how long the last finished snapshot took
        self.background = config.snapshot_in_background

    async def start(self, engine: Engine, checkpoint: Checkpoint, store: Store) -> None:
        """Begin a snapshot of ``engine`` at ``checkpoint``, written and published through
        ``store``; :meth:`poll` tells when it has ended. The daemon pays for opening the
        writer only (inline, for all of it: this returns once it has ended)."""
        if self.running is not None:
            raise RuntimeError("one snapshot at a time: a bug in the caller")
        writer = engine.snapshot_writer()
        meta = SnapshotMeta(
            checkpoint.last_id, checkpoint.events, 0, 0, checkpoint.trades, checkpoint.events,
            checkpoint.digest,
        )  # fmt: skip
        work = self._write(writer, store, meta)
        task = asyncio.get_running_loop().create_task(work, name="snapshot")
        self.running = Running(task, writer, time.perf_counter())
        if not self.background:
            await asyncio.wait([task])

    async def _write(self, writer: SnapshotWriter, store: Store, meta: SnapshotMeta) -> Written:
        config = self.config
        channel = Channel(store.redis)
        try:
            old = await store.snapshot_meta()
            if old and old.generation == meta.generation:
                return None  # already stored at this point (or an older scheme's number)
            await store.begin_snapshot(meta.generation, old.generation if old else None)
            chunks, size = await write_chunks(
                writer, channel, self.keys, meta.generation, config.snapshot_chunk_bytes,
                config.snapshot_slice_orders, pause=self.background,
            )  # fmt: skip
            meta = msgspec.structs.replace(meta, chunks=chunks, bytes=size)
            return meta, await store.publish_snapshot(meta)
        finally:
            writer.close()
            await channel.reset()

    def poll(self) -> tuple[SnapshotMeta | None, str | None]:
        """If the snapshot's task has ended: ``(meta, None)`` once published, ``(None, why)``
        if it failed or was refused; ``(None, None)`` while it runs, when there is none, or
        when it found this generation already stored. O(1)."""
        running = self.running
        if running is None or not running.task.done():
            return None, None
        self.running = None
        self.last_seconds = time.perf_counter() - running.started
        error = running.task.exception()
        if error is not None:
            return None, f"snapshot failed: {describe(error)}"[:500]
        written = running.task.result()
        if written is None:
            return None, None
        meta, status = written
        if status != "OK":
            why = REFUSED.get(status, status)
            return None, f"snapshot of generation {meta.generation} not published: {why}"
        return meta, None

    async def abandon(self) -> None:
        """Cancel a running snapshot; its generation is never published."""
        running, self.running = self.running, None
        if running is None:
            return
        running.task.cancel()
        await wait_out(running.task)  # its cleanup runs (it may have ended on its own just before)
        running.writer.close()


class Snapshots:
    """When the daemon snapshots, and what follows: the policy (a snapshot is due after
    ``snapshot_every_inputs`` committed inputs, or ``snapshot_every_seconds`` with at least one),
    the one :class:`Snapshotter`, and, once a snapshot is stored, the trim of the inputs below
    it in a task of its own (the trim holds the server for a while, and matching need not wait
    for its reply). Decisions take ``now`` (monotonic seconds)."""

    def __init__(
        self, config: Config, keys: Keys, store: Store, metrics: Metrics, waits: Waits
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.waits = waits  # a refused trim backs off as the daemon does
        self.snapshotter = Snapshotter(config, keys)
        self.since = 0
        """Inputs committed since the last snapshot began."""
        self.began = time.monotonic()
        self.frozen = False
        """Whether the book has joined the collector's frozen heap (see :mod:`shard.collector`)."""
        self._trimming: asyncio.Task[None] | None = None
        self._trim_below = ZERO_ID
        self._closing = False

    def due(self, pending: int, now: float) -> bool:
        """Whether to snapshot once the ``pending`` inputs in doubt are committed."""
        if self.snapshotter.running is not None:
            return False
        config = self.config
        since = self.since + pending
        return since >= config.snapshot_every_inputs or bool(
            since and now - self.began >= config.snapshot_every_seconds
        )

    def committed(self, inputs: int) -> None:
        """``inputs`` more were committed: they count towards the next snapshot."""
        self.since += inputs

    def recovered(self, replayed: int, resting: int) -> None:
        """The engine was rebuilt with ``replayed`` inputs after its snapshot. A non-empty
        order index is a tracked dict, frozen by the recovery; an empty one is not tracked."""
        self.since = replayed
        self.frozen = resting > 0

    async def take(self, engine: Engine, pipeline: Pipeline, now: float) -> None:
        """Start a snapshot of ``engine`` at the pipeline's committed checkpoint: only between
        batches (none in doubt)."""
        await self._start(engine, pipeline, now)
        await self.poll()  # inline, it has ended already

    async def _start(self, engine: Engine, pipeline: Pipeline, now: float) -> None:
        if pipeline.unconfirmed:
            raise ProtocolError("a snapshot with batches in doubt")
        self.since = 0
        self.began = now
        started = time.perf_counter()
        if not self.frozen:  # a book grown from empty joins the frozen heap, once
            collector.freeze_survivors()
            self.frozen = len(engine.book) > 0
        await self.snapshotter.start(engine, pipeline.committed, self.store)
        self.metrics.snapshot_stall.observe(time.perf_counter() - started)

    async def store_now(self, engine: Engine, pipeline: Pipeline) -> None:
        """Snapshot ``engine`` at the committed checkpoint and wait until it is stored (or
        found stored already): what new trading terms need before the first batch under them
        (:mod:`shard.terms`). :class:`SnapshotNotStored` if it is not."""
        await self._start(engine, pipeline, time.monotonic())
        running = self.snapshotter.running
        if running is not None:
            await asyncio.wait([running.task])
            if (error := running.task.exception()) is not None:
                self.snapshotter.poll()  # forget it
                raise error  # a Redis error: waited out, and recovery runs again
        meta, failure = self.snapshotter.poll()
        if failure is not None:
            raise SnapshotNotStored(failure)
        if meta is not None:
            self._stored(meta)

    async def poll(self) -> None:
        """If the snapshot has ended: note it, and trim the inputs below it once stored."""
        if self.snapshotter.running is None:
            return
        meta, failure = self.snapshotter.poll()
        if meta is not None:
            self._stored(meta)
        elif failure is not None:
            self.metrics.snapshot_failures.inc()
            log.warning("snapshot failed; the previous one stays", why=failure)

    async def finish(self, engine: Engine, pipeline: Pipeline) -> None:
        """On a clean stop: wait for the snapshot being written (up to :data:`FINISH_WITHIN`
        seconds) and note it; then take one more if one fell due meanwhile, and wait for it."""
        deadline = time.monotonic() + FINISH_WITHIN
        for _ in range(2):  # the one being written, then the one due after it
            while self.snapshotter.running is not None and time.monotonic() < deadline:
                await asyncio.sleep(WAIT_POLL)
                await self.poll()
            if pipeline.unconfirmed or not self.due(0, time.monotonic()):
                return
            await self.take(engine, pipeline, time.monotonic())

    async def abandon(self) -> None:
        """Cancel the snapshot being written, if any: the checkpoint it was taken at may not
        survive what went wrong."""
        if self.snapshotter.running is not None:
            await self.snapshotter.abandon()
            log.info("snapshot abandoned")

    async def finish_trim(self) -> None:
        """On the way out: wait for the trim in flight; one that is failing gives up after its
        next attempt (the next snapshot's trim covers what is left)."""
        self._closing = True
        trimming, self._trimming = self._trimming, None
        if trimming is not None:
            await wait_out(trimming)

    def _stored(self, meta: SnapshotMeta) -> None:
        self.metrics.last_snapshot = time.monotonic()
        self.metrics.snapshots.inc()
        log.info(
            "snapshot stored",
            input_id=meta.input_id,
            bytes=meta.bytes,
            chunks=meta.chunks,
            seconds=round(self.snapshotter.last_seconds, 3),
        )
        if self.config.trim_inputs:
            self._trim_below = trim_point(meta.input_id, self.config.keep_inputs_ms)
            if self._trimming is None or self._trimming.done():
                self._trimming = asyncio.get_running_loop().create_task(self._trim())

    async def _trim(self) -> None:
        """Trim the inputs below ``_trim_below`` (a newer snapshot may move it meanwhile). A
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
                    below=below,
                    error=describe(exc),
                )
                if self._closing or self.waits.stop.is_set():
                    return  # the next snapshot's trim covers these
                await self.waits.pause(self.waits.backoff.compute(failures))
                continue
            log.info("inputs trimmed", below=below, trimmed=trimmed)
            if below == self._trim_below:
                return


def trim_point(snapshot_id: str, keep_inputs_ms: int) -> str:
    """Where inputs are trimmed after a snapshot at ``snapshot_id``: below it, or
    ``keep_inputs_ms`` before it."""
    ms = parse_id(snapshot_id)[0]
    return snapshot_id if keep_inputs_ms <= 0 else f"{max(0, ms - keep_inputs_ms)}-0"
