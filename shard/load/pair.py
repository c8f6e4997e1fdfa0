"""One pair's load: its messages, packed before the timed phase; the sender; and the two readers
that time each input from its send to its event.

Per pair, two connections (RESP2, raw replies, no socket timeout so no per-reply timer):

- the **sender** writes the XADDs that are due (pre-packed, so the send loop only joins bytes)
  and never waits for a reply: the load is open loop;
- the **ID reader** reads the XADD replies on the sender's connection: the entry IDs, which
  are the ``input_id`` of each message's event;
- the **event reader** blocks on ``events:{P}`` and, for each event, reports the time from the
  send of its input to the moment it was read to the run, which records it.

An event read before its XADD reply is parked until the reply comes, so the two readers may run
in any order. Each send, reply and event costs O(1) beside its I/O.

On a cluster, an outage of the pair's owner (a failover, a killed master) is followed
(:class:`shard.load.follow.Follower`): the side that met it takes a connection on the new owner
and carries on. The event reader resumes after the last event it read. The sender first
settles the inputs *in doubt*, sent but with no reply read: the new owner's ``orders:{P}``
after the last acknowledged entry is read (``XRANGE``, at most as many entries as in doubt),
and the entries that are, in order, exactly the packed commands in doubt count as sent
(their IDs are their replies); the rest are sent again, late, so their latency from schedule
shows the outage. Nothing is sent twice, unless another producer writes the same stream
with the very same fields during the run (then its entry is taken for the load's own). An
acknowledged input that a forced failover or a crash lost never gets its event: the report
counts it missing. Cost: one ``XRANGE`` per outage, beside the reconnection.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from shard.config import Keys
from shard.load.follow import Follower, connection, first_failure
from shard.workload import Message, resting_orders, standard_mix

if TYPE_CHECKING:
    from shard.load.runner import LoadRun

PRELOAD_CHUNK = 10_000
READ_COUNT = 10_000
BLOCK_MS = 100
clock = time.perf_counter


def pack(key: str, messages: Iterable[Message]) -> Iterator[bytes]:
    """Each message as a packed ``XADD key * field value ...`` (flat fields)."""
    for msg in messages:
        args = ["XADD", key, "*"]
        for name, value in msg.items():
            args += (name, str(value))
        yield hiredis.pack_command(cast(Any, tuple(args)))


class PairLoad:
    """One pair's messages, sender and readers."""

    def __init__(self, run: LoadRun, pair: str, index: int) -> None:
        spec = run.spec
        self.run = run
        self.keys = Keys(pair, spec.key_prefix)
        seed = spec.seed + index
        self.commands = list(
            pack(
                self.keys.orders,
                standard_mix(spec.schedule.total, seed, prefix=f"{spec.id_prefix}o"),
            )
        )
        self.preload = list(
            pack(
                self.keys.orders,
                resting_orders(
                    spec.preload, seed, levels=spec.preload_levels, prefix=f"{spec.id_prefix}r"
                ),
            )
        )
        self.sent_at = array("d", bytes(8 * spec.schedule.total))
        self.pending: dict[bytes, int] = {}  # input_id -> message index, reply read first
        self.early: dict[bytes, float] = {}  # input_id -> time its event was read, event first
        self.sent = 0
        self.writing = 0  # the inputs up to here may have been written (sent, or being sent)
        self.acked = 0  # the XADD replies read: inputs sent + acked ... sent are in doubt
        self.last_acked = b"0-0"  # the entry ID of the last acknowledged input (or before)
        self.resent = 0  # inputs in doubt after an outage that had not landed: sent again
        self.landed = 0  # inputs in doubt after an outage found in the stream: not sent again
        self.completed = 0
        self.events_from = b"0-0"
        self.events_last = b"0-0"  # the last event read
        self.trades_from = 0
        self.depth_from = 0

    # -- before the timed phase -----------------------------------------------------------------

    async def do_preload(self, client: Redis) -> tuple[int, float]:
        """Publish the resting orders (closed loop, chunked) and wait until the shard has
        applied the last one; how many and how long it took."""
        if not self.preload:
            return 0, 0.0
        started = clock()
        conn = await connection(client)
        last_id = b""
        try:
            for i in range(0, len(self.preload), PRELOAD_CHUNK):
                chunk = self.preload[i : i + PRELOAD_CHUNK]
                await conn.send_packed_command(chunk, check_health=False)
                for _ in chunk:
                    last_id = await conn.read_response()
        finally:
            await client.connection_pool.release(conn)
        await self.wait_applied(client, last_id)
        count = len(self.preload)
        self.preload = []
        return count, clock() - started

    async def wait_applied(self, client: Redis, input_id: bytes) -> None:
        """Wait until the newest event answers ``input_id`` or a later input."""
        target = _id_tuple(input_id)
        while True:
            newest: Any = await client.xrevrange(self.keys.events, count=1)
            if newest and _id_tuple(newest[0][1][b"input_id"]) >= target:
                return
            await asyncio.sleep(0.1)

    async def mark_start(self, client: Redis) -> None:
        newest: Any = await client.xrevrange(self.keys.events, count=1)
        self.events_from = self.events_last = newest[0][0] if newest else b"0-0"
        newest = await client.xrevrange(self.keys.orders, count=1)
        self.last_acked = newest[0][0] if newest else b"0-0"
        self.trades_from = await self.last_trade_id(client)
        self.depth_from = await self.last_seq(client)

    async def last_trade_id(self, client: Redis) -> int:
        newest: Any = await client.xrevrange(self.keys.trades, count=1)
        return int(newest[0][1][b"trade_id"]) if newest else 0

    async def last_seq(self, client: Redis) -> int:
        newest: Any = await client.xrevrange(self.keys.depth, count=1)
        return int(newest[0][1].get(b"seq", 0)) if newest else 0

    async def market_data(self, client: Redis, sample: int = 1000) -> tuple[int, int, int]:
        """The ``depth:{P}`` entries published since :meth:`mark_start`, and the bytes of
        field names and values in the last ``sample`` of them (0, 0, 0 without a shard)."""
        entries = await self.last_seq(client) - self.depth_from
        if entries <= 0:
            return 0, 0, 0
        last: Any = await client.xrevrange(self.keys.depth, count=min(sample, entries))
        payload = sum(len(k) + len(v) for _, fields in last for k, v in fields.items())
        return entries, payload, len(last)

    # -- the timed phase ------------------------------------------------------------------------

    async def send_side(self, follower: Follower) -> None:
        """The sender and the ID reader, on the owner; after an outage, on the new owner once
        the inputs in doubt are settled."""

        async def both(conn: Connection) -> None:
            await self.settle(conn)
            await first_failure(self.send_loop(conn), self.id_loop(conn))

        await _on_owner(follower, both)

    async def event_side(self, follower: Follower) -> None:
        """The event reader, on the owner; after an outage, on the new owner."""
        await _on_owner(follower, self.event_loop)

    async def send_loop(self, conn: Connection) -> None:
        run, schedule, commands, sent_at = (
            self.run,
            self.run.spec.schedule,
            self.commands,
            self.sent_at,
        )
        total = schedule.total
        i = self.sent
        while i < total:
            now = clock() - run.t0
            due = schedule.due_by(now)
            if due <= i:
                # Event-loop timers tick in whole milliseconds (shorter sleeps spin under
                # uvloop): what falls due within a tick goes out together at its end.
                await asyncio.sleep(min(0.01, max(0.001, schedule.due_at(i) - now)))
                continue
            behind = now - schedule.due_at(i)
            # Stamped before the write: a send that blocks (the server not reading) counts. The
            # stamps are stored before it too: while it blocks, the reader tasks may already see
            # these messages' replies and events (an unset stamp read as 0 was an hour).
            stamp = clock()
            sent_at[i:due] = array("d", [stamp]) * (due - i)
            self.writing = due  # before the write: if it fails, these are in doubt
            await conn.send_packed_command(commands[i:due], check_health=False)
            run.note_sent(stamp, due - i, behind)
            self.sent = i = due

    def _done(self, k: int, seen: float) -> None:
        """Message ``k``'s event was read at ``seen``."""
        self.run.complete(seen, self.sent_at[k], k)
        self.completed += 1

    def _ack(self, k: int, entry_id: bytes) -> None:
        """Message ``k`` is in the stream as ``entry_id``: its command is not needed again."""
        self.commands[k] = b""  # let the memory go
        self.acked, self.last_acked = k + 1, entry_id
        seen = self.early.pop(entry_id, None)
        if seen is None:
            self.pending[entry_id] = k
        else:
            self._done(k, seen)

    async def id_loop(self, conn: Connection) -> None:
        for k in range(self.acked, self.run.spec.schedule.total):
            entry_id = await conn.read_response()
            if not isinstance(entry_id, bytes):
                raise RuntimeError(f"XADD to {self.keys.orders} failed: {entry_id!r}")
            self._ack(k, entry_id)

    async def settle(self, conn: Connection) -> None:
        """Sort the inputs in doubt (sent, no reply read): those the stream holds after the
        last acknowledged entry, in order and exactly as packed, are acknowledged; the others
        are left for the sender to send again. O(in doubt)."""
        doubt = self.writing - self.acked
        if doubt <= 0:
            return
        key = self.keys.orders
        await conn.send_command("XRANGE", key, b"(" + self.last_acked, "+", "COUNT", doubt)
        entries: Any = await conn.read_response()
        for entry_id, fields in entries:
            k = self.acked
            if hiredis.pack_command(("XADD", key, "*", *fields)) != self.commands[k]:
                break
            self._ack(k, entry_id)
        self.landed += self.acked - (self.writing - doubt)
        self.resent += self.writing - self.acked
        self.sent = self.writing = self.acked

    async def event_loop(self, conn: Connection) -> None:
        run, pending, early = self.run, self.pending, self.early
        total = run.spec.schedule.total
        key = self.keys.events
        while self.completed < total and not run.timed_out():
            await conn.send_command(
                "XREAD", "COUNT", READ_COUNT, "BLOCK", BLOCK_MS, "STREAMS", key, self.events_last
            )
            reply = await conn.read_response()
            now = clock()
            if not reply:
                continue
            entries = reply[0][1]
            for _entry_id, fields in entries:
                if fields[-2] == b"resting_order":
                    continue  # an order event: the input's own event follows it
                input_id = fields[1]
                k = pending.pop(input_id, None)
                if k is None:
                    early[input_id] = now
                else:
                    self._done(k, now)
            self.events_last = entries[-1][0]


async def _on_owner(follower: Follower, body: Callable[[Connection], Awaitable[None]]) -> None:
    """``body`` on a connection to the pair's owner until it ends; after an outage the
    follower follows, again on a connection to the owner found again."""
    conn = await follower.connect()
    try:
        while True:
            try:
                await body(conn)
                return
            except Exception as exc:
                if not follower.follows(exc):
                    raise
                await conn.disconnect()
                conn = await follower.reconnect(exc)
    finally:
        await conn.disconnect()


def _id_tuple(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)
