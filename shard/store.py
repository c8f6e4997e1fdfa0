"""What a shard keeps in Redis besides its outputs: checkpoint, snapshot, lease, consumer group.

Keys (see :class:`shard.config.Keys`):

* ``shard:{P}:checkpoint`` hash: ``last_id`` (last input entry applied and committed), ``trades``
  and ``events`` (how many were ever published), ``digest`` (the engine's state digest there).
* ``shard:{P}:snapshot`` hash: ``input_id`` (the last input the snapshot covers), ``generation``,
  ``chunks``, ``bytes``, ``trades``, ``events``, ``digest``; the snapshot's bytes are in
  ``shard:{P}:snapshot:<generation>:<i>`` chunks, written before the hash points at them;
  ``shard:{P}:snapshot-writing`` names the generation last begun (see
  :meth:`Store.begin_snapshot`).

The commit itself, the one atomic step that moves the checkpoint, is :mod:`shard.commit`. The
lease (``shard:{P}:lease``) keeps one daemon active per pair (:mod:`shard.lease`).
"""

from __future__ import annotations

from typing import Any, Final, cast

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError, WatchError

from shard.batch import Entries
from shard.checkpoint import Checkpoint, SnapshotMeta
from shard.config import Keys
from shard.transport import text

TAILS_LUA: Final = """#!lua flags=no-writes
-- KEYS: checkpoint, events, trades, depth. One consistent read of where the checkpoint and
-- the output streams end: its last_id, the last event's input_id, the last trade's trade_id,
-- the last depth entry's seq.
local function field(entries, name)
  if #entries == 0 then
    return ''
  end
  local f = entries[1][2]
  for i = 1, #f, 2 do
    if f[i] == name then
      return f[i + 1]
    end
  end
  return ''
end
local last = redis.call('HGET', KEYS[1], 'last_id') or ''
local events = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local trades = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local depth = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
return {last, field(events, 'input_id'), field(trades, 'trade_id'), field(depth, 'seq')}
"""

REBUILD_LUA: Final = """
-- KEYS: checkpoint. ARGV: its field/value pairs. Written only where there is none (a hash
-- without last_id counts as none, as Store.checkpoint reads it).
if redis.call('HEXISTS', KEYS[1], 'last_id') == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


RENEW_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
PUBLISH_LUA: Final = r"""
-- KEYS: snapshot header, checkpoint
-- ARGV: generation, then the header's field/value pairs
-- A snapshot is published only ahead of the one stored, and never ahead of the checkpoint (a
-- Redis that lost its last writes, or a slower writer, must not move the header wrongly).
local gen = tonumber(ARGV[1])
local cur = redis.call('HMGET', KEYS[1], 'generation', 'chunks')
if cur[1] and tonumber(cur[1]) >= gen then
  return {'STALE', cur[1], cur[2] or '0'}
end
local events = redis.call('HGET', KEYS[2], 'events')
if not events or tonumber(events) < gen then
  return {'AHEAD', events or '0', '0'}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return {'OK', cur[1] or '', cur[2] or '0'}
"""
RELEASE_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _field_values(struct: msgspec.Struct) -> list[str]:
    """A struct as the field/value list of an HSET."""
    return [x for k, v in msgspec.structs.asdict(struct).items() for x in (k, str(v))]


def supported_server(redis_version: str) -> bool:
    """Whether a server of this ``redis_version`` (INFO) runs the shard: Redis 7.0 and later
    (script shebangs, ``XGROUP SETID ... ENTRIESREAD``); Valkey reports a Redis version of
    7.2.4."""
    major = redis_version.partition(".")[0]
    return major.isdigit() and int(major) >= 7


class Store:
    """The pair's Redis state, through one client."""

    def __init__(self, redis: Redis, keys: Keys, group: str, ack: str = "setid") -> None:
        self.keys = keys
        self.group = group
        self.ack = ack  # see Config.ack
        self.bind(redis)

    def bind(self, redis: Redis) -> None:
        """Use ``redis`` from now on (on a cluster: the client of the slot's new owner)."""
        self.redis = redis
        self._rebuild = redis.register_script(REBUILD_LUA)
        self._tails = redis.register_script(TAILS_LUA)
        self._renew = redis.register_script(RENEW_LUA)
        self._release = redis.register_script(RELEASE_LUA)
        self._publish = redis.register_script(PUBLISH_LUA)

    # -- the lease: one active daemon per pair ---------------------------------------------------

    async def acquire_lease(self, holder: str, ttl_ms: int) -> str | None:
        """Take the lease if it is free or already ours; else return who holds it."""
        if await self.redis.set(self.keys.lease, holder, nx=True, px=ttl_ms):
            return None
        if await self.renew_lease(holder, ttl_ms):
            return None
        current = await self.redis.get(self.keys.lease)
        return text(current) or "(expired just now)"

    async def lease_ttl_ms(self) -> int:
        """The lease key's PTTL: -1 if it has no expiry, -2 if it is gone."""
        return int(await self.redis.pttl(self.keys.lease))

    async def renew_lease(self, holder: str, ttl_ms: int) -> bool:
        return bool(await self._renew(keys=[self.keys.lease], args=[holder, ttl_ms]))

    async def release_lease(self, holder: str) -> None:
        await self._release(keys=[self.keys.lease], args=[holder])

    async def checkpoint(self) -> Checkpoint | None:
        """The stored checkpoint, or None if there is none (a new pair, or a deleted key: a hash
        without ``last_id`` counts as none)."""
        raw = await self.redis.hgetall(self.keys.checkpoint)
        fields = {text(k): text(v) for k, v in raw.items()}
        if not fields.get("last_id"):
            return None
        return msgspec.convert(fields, Checkpoint, strict=False)

    async def write_rebuilt_checkpoint(self, checkpoint: Checkpoint) -> bool:
        """Store a checkpoint rebuilt from the outputs, only if there is still none."""
        fields = _field_values(checkpoint)
        return bool(await self._rebuild(keys=[self.keys.checkpoint], args=fields))

    async def ensure_group(self, checkpoint: Checkpoint, consumer: str) -> bool:
        """Create the consumer group at the checkpoint (and the stream), or move it there;
        True if it had to be created.

        Moving the group to the checkpoint makes ``>`` deliver exactly the entries after it,
        whatever was delivered before a crash; those still pending are delivered again. With
        ``setid`` the group's entries-read is set too, as each commit does, so its ``lag`` is
        exact from the start; and the group has no consumer: one left by an ``xack`` run is
        deleted with its pending entries, which are read again by position.
        """
        at = checkpoint.last_id
        read = checkpoint.events if self.ack == "setid" else None
        created = True
        try:
            await self.redis.xgroup_create(
                self.keys.orders, self.group, id=at, mkstream=True, entries_read=read
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            created = False
            await self.redis.xgroup_setid(self.keys.orders, self.group, id=at, entries_read=read)
        if self.ack == "setid":
            await self.redis.xgroup_delconsumer(self.keys.orders, self.group, consumer)
        return created

    async def has_input(self, entry_id: str) -> bool:
        """Whether input entry ``entry_id`` is in ``orders:{P}``."""
        reply: Any = await self.redis.xrange(self.keys.orders, min=entry_id, max=entry_id)
        return bool(reply)

    async def read_inputs(self, after: str, until: str, count: int) -> Entries:
        """Up to ``count`` input entries from ``after`` (``(id`` excludes it) to ``until``, raw
        (the client from :func:`shard.transport.connect` leaves XRANGE replies raw)."""
        reply: Any = await self.redis.xrange(self.keys.orders, min=after, max=until, count=count)
        return cast(Entries, reply)

    async def last_entry(self, key: str) -> tuple[str, dict[str, str]] | None:
        """The last entry of stream ``key`` (ID and fields as text), or None if it has none."""
        reply: Any = await self.redis.xrevrange(key, count=1)
        if not reply:
            return None
        entry_id, fields = reply[0]
        return str(text(entry_id)), {str(text(k)): str(text(v)) for k, v in fields.items()}

    async def tails(self) -> tuple[str, str, str, str]:
        """Read together: the checkpoint's ``last_id``, the last event's ``input_id``, the
        last trade's ``trade_id`` and the last depth entry's ``seq`` (``''`` where none)."""
        keys = self.keys
        reply: Any = await self._tails(keys=[keys.checkpoint, keys.events, keys.trades, keys.depth])
        last, input_id, trade_id, seq = (str(text(x) or "") for x in reply)
        return last, input_id, trade_id, seq

    async def entries_added(self, key: str) -> int:
        """How many entries were ever added to stream ``key`` (trimmed ones too); 0 if none."""
        return int((await self.stream_info(key)).get("entries-added", "0"))

    async def stream_info(self, key: str) -> dict[str, str]:
        """``XINFO STREAM key``'s counters as text (``length``, ``entries-added``,
        ``max-deleted-entry-id``, ``recorded-first-entry-id``); empty if there is no stream."""
        if await self.redis.exists(key) == 0:
            return {}
        info: Any = await self.redis.xinfo_stream(key)
        return {
            str(text(k)): str(text(v))
            for k, v in info.items()
            if isinstance(v, bytes | str | int) and not isinstance(v, bool)
        }

    # -- market data -----------------------------------------------------------------------------

    async def book_fields(self) -> dict[str, str]:
        """``book:{P}`` as text (empty if there is none)."""
        raw = await self.redis.hgetall(self.keys.book)
        return {str(text(k)): str(text(v)) for k, v in raw.items()}

    async def replace_book(self, fields: dict[str, str], last_id: str) -> bool:
        """Write ``book:{P}`` anew, all at once (MULTI: DEL, then HSET in chunks), only while
        the checkpoint stands at ``last_id`` (WATCHed): a daemon recovering behind another
        that publishes must not write its older book over the newer. Whether it was written."""
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self.keys.checkpoint)
                if text(await pipe.hget(self.keys.checkpoint, "last_id")) != last_id:
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.delete(self.keys.book)
                items = list(fields.items())
                for i in range(0, len(items), 1000):
                    pipe.hset(self.keys.book, mapping=dict(items[i : i + 1000]))
                await pipe.execute()
            except WatchError:
                return False
        return True

    # -- snapshots -------------------------------------------------------------------------------

    async def snapshot_meta(self) -> SnapshotMeta | None:
        raw = await self.redis.hgetall(self.keys.snapshot)
        if not raw:
            return None
        fields = {text(k): text(v) for k, v in raw.items()}
        return msgspec.convert(fields, SnapshotMeta, strict=False)

    async def load_snapshot(self, meta: SnapshotMeta) -> bytes:
        names = [self.keys.snapshot_chunk(meta.generation, i) for i in range(meta.chunks)]
        parts: list[bytes] = []
        for name in names:
            part = await self.redis.get(name)
            if not isinstance(part, bytes):
                raise RuntimeError(f"snapshot chunk {name} is missing")
            parts.append(part)
        data = b"".join(parts)
        if len(data) != meta.bytes:
            raise RuntimeError(f"snapshot is {len(data)} bytes, its header says {meta.bytes}")
        return data

    async def trim_inputs(self, below: str) -> int:
        """Drop input entries older than ``below`` (XTRIM MINID): only after a snapshot."""
        removed: Any = await self.redis.xtrim(self.keys.orders, minid=below, approximate=False)
        return int(removed)

    async def begin_snapshot(self, generation: int, live: int | None) -> None:
        """Note that ``generation`` is being written. Chunks of a generation noted before that
        was never published (its writer was killed) are deleted first: nothing else would."""
        key = self.keys.snapshot_writing
        before = text(await self.redis.set(key, str(generation), get=True))
        if before is None or int(before) in (generation, live):
            return
        index = 0
        while await self.redis.unlink(self.keys.snapshot_chunk(int(before), index)):
            index += 1  # chunks are written in order: the first missing one ends them

    async def publish_snapshot(self, meta: SnapshotMeta) -> str:
        """Point the header at a generation whose chunks are all written, then unlink the
        previous generation's chunks; a crash at any point leaves a complete snapshot.
        ``"OK"``, or why nothing changed: ``"STALE"`` (the header already names this
        generation or a later one) or ``"AHEAD"`` (the checkpoint is behind the snapshot)."""
        header = _field_values(meta)
        reply: Any = await self._publish(
            keys=[self.keys.snapshot, self.keys.checkpoint], args=[meta.generation, *header]
        )
        status, old_generation, old_chunks = (text(x) or "" for x in reply)
        if status == "OK" and old_generation:
            stale = [
                self.keys.snapshot_chunk(int(old_generation), i) for i in range(int(old_chunks))
            ]
            if stale:
                await self.redis.unlink(*stale)  # freed by a server thread, not its main one
        return status
