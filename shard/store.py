"""What a shard keeps in Redis, and the one atomic step that commits a batch.

Keys (see :class:`shard.config.Keys`):

* ``shard:{P}:checkpoint`` hash: ``last_id`` (last input entry applied and committed), ``trades``
  and ``events`` (how many were ever published), ``digest`` (the engine's state digest there).
* ``shard:{P}:snapshot`` hash: ``input_id`` (the last input the snapshot covers), ``generation``,
  ``chunks``, ``bytes``, ``trades``, ``events``, ``digest``; the snapshot's bytes are in
  ``shard:{P}:snapshot:<generation>:<i>`` chunks, written before the hash points at them;
  ``shard:{P}:snapshot-writing`` names the generation last begun (see
  :meth:`Store.begin_snapshot`).

The commit is one Lua script: it checks that the checkpoint is still where this daemon believes
it is (a fence: a second daemon, a lost reply or a Redis rollback all show up here) and that the
batch starts with the input entry right after it (no gap, whatever the consumer group did), then
acknowledges its input entries (moves the consumer group past them, or XACKs them), XADDs the
batch's trades and events and moves the checkpoint, all or nothing. The outputs travel as one
msgpack argument of rows (:data:`shard.wire.Row`: a shape index, then values, every value a
string since Lua numbers are doubles); the field names are constants in the script. Every key is
in KEYS and carries the pair's hash tag, so it also runs on Redis Cluster.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from shard.config import Keys
from shard.transport import Channel
from shard.wire import EVENT_SHAPES, TRADE_NAMES, Row

StreamId = tuple[int, int]
ZERO_ID: Final = "0-0"


def parse_id(entry_id: str) -> StreamId:
    """A stream entry ID as a comparable (milliseconds, sequence) pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _lua_shapes(shapes: tuple[tuple[str, ...], ...]) -> str:
    """A Lua table constructor: shape index -> list of field names."""
    return (
        "{"
        + ", ".join(
            f"[{i}] = {{{', '.join(repr(n) for n in names)}}}" for i, names in enumerate(shapes)
        )
        + "}"
    )


def _lua_xadd_rows() -> str:
    """The Lua function that XADDs a batch's rows (see :data:`shard.wire.Row`) to one stream,
    stopping at the first that fails: how many it added, and the error (nil if none). One
    call per entry spelled out for each field count: a generic loop into a reused argument
    table cost the server about 8% more per input, and a msgpack table per entry with its names
    about 20% more."""
    arities = sorted({len(names) for names in (*EVENT_SHAPES, TRADE_NAMES)}, reverse=True)
    branches = "\n    else".join(
        f"if k == {k} then\n      r = pcall('XADD', key, '*', "
        + ", ".join(f"nm[{j}], rows[i + {j}]" for j in range(1, k + 1))
        + ")"
        for k in arities
    )
    return f"""local pcall = redis.pcall
local function xadd_rows(key, rows, shapes)
  local i, n, added = 1, #rows, 0
  local r
  while i <= n do
    local nm = shapes[rows[i]]
    if nm == nil or i + #nm > n then
      return added, 'bad_rows'
    end
    local k = #nm
    {branches}
    end
    if type(r) == 'table' and r.err then
      return added, r.err
    end
    added = added + 1
    i = i + k + 1
  end
  return added, nil
end"""


XADD_ROWS_LUA: Final = _lua_xadd_rows()
TRADE_SHAPES_LUA: Final = _lua_shapes((TRADE_NAMES,))
EVENT_SHAPES_LUA: Final = _lua_shapes(EVENT_SHAPES)

COMMIT_LUA: Final = (
    # The shebang declares a script that may write and is not allowed to when Redis is over
    # maxmemory: such a script is refused before it runs. Without it, Redis checks the limit
    # only at the first command that adds memory, after the acknowledgement has been written.
    "#!lua\n"
    + r"""
-- KEYS: trades, events, orders, checkpoint
-- ARGV: group, expected last_id, new last_id, trades total, events total, digest,
--       output maxlen (0: none), msgpack [trade rows, event rows, [ack ids]],
--       first input applied ('' if none), ack mode ('xack' or 'setid')
-- Redis keeps the writes of a script that fails, so no write here may fail after another:
-- what can be checked cheaply is checked first (the fence, the gap, the output streams'
-- types), and the writes that can still fail (an output stream out of IDs, a missing group)
-- go first, each through pcall; if one fails, the entries already added are deleted again
-- and the script answers REFUSED. The trims and the checkpoint come last and cannot fail.
local cp = redis.call('HMGET', KEYS[4], 'last_id', 'trades', 'events')
local last = cp[1] or '0-0'
if last ~= ARGV[2] then
  return {'FENCED', last, cp[2] or '0', cp[3] or '0'}
end
-- No gap: the batch starts with the entry that follows the checkpoint in the input stream.
if ARGV[9] ~= '' then
  local nxt = redis.call('XRANGE', KEYS[3], '(' .. last, '+', 'COUNT', 1)
  if #nxt == 0 or nxt[1][1] ~= ARGV[9] then
    return {'GAP', last, cp[2] or '0', cp[3] or '0'}
  end
end
"""
    + XADD_ROWS_LUA
    + """
local batch = cmsgpack.unpack(ARGV[8])
local keys, rows, published = {KEYS[1], KEYS[2]}, {batch[1], batch[2]}, {cp[2], cp[3]}
local shapes = {"""
    + TRADE_SHAPES_LUA
    + ", "
    + EVENT_SHAPES_LUA
    + """}
local maxlen = tonumber(ARGV[7])
local existed, added, notes = {}, {0, 0}, {}
for s = 1, 2 do
  if #rows[s] > 0 or maxlen > 0 then
    local kind = redis.call('TYPE', keys[s])['ok']
    if kind ~= 'stream' and kind ~= 'none' then
      return {'REFUSED', 'wrong_type', keys[s], 'the key holds a ' .. kind}
    end
    existed[s] = kind == 'stream'
  end
end
local function undo()
  for s = 1, 2 do
    if added[s] > 0 and not existed[s] then
      redis.pcall('DEL', keys[s])
    elseif added[s] > 0 then
      local mine = redis.call('XREVRANGE', keys[s], '+', '-', 'COUNT', added[s])
      for i = 1, #mine, 1000 do
        local ids = {}
        for j = i, math.min(i + 999, #mine) do
          ids[#ids + 1] = mine[j][1]
        end
        redis.pcall('XDEL', keys[s], unpack(ids))
      end
    end
  end
end
local function refused(err, key, why)
  undo()
  if err == 'bad_rows' then
    why = 'bad_rows'
  elseif string.find(err, '^WRONGTYPE') then
    why = 'wrong_type'
  elseif string.find(err, 'exhausted') then
    why = 'ids_exhausted'
  end
  return {'REFUSED', why, key, err}
end
for s = 1, 2 do
  if #rows[s] > 0 then
    -- A stream that is gone although entries were published to it was deleted: it is
    -- created again, and said so.
    if not existed[s] and tonumber(published[s] or '0') > 0 then
      notes[#notes + 1] = keys[s]
    end
    local n, err = xadd_rows(keys[s], rows[s], shapes[s])
    added[s] = n
    if err then
      return refused(err, keys[s], 'xadd_failed')
    end
  end
end
if ARGV[10] == 'setid' then
  -- Inputs read with XREAD: the group moves past them (entries-read keeps its lag exact).
  local r = redis.pcall('XGROUP', 'SETID', KEYS[3], ARGV[1], ARGV[3], 'ENTRIESREAD', ARGV[5])
  if type(r) == 'table' and r.err then
    return refused(r.err, KEYS[3], 'no_group')  -- the group, or the input stream, is gone
  end
else
  -- XACK of a group that is gone acknowledges nothing and fails nothing: the next read
  -- (XREADGROUP) meets NOGROUP and the daemon creates the group again at the checkpoint.
  local acks = batch[3]
  for i = 1, #acks, 1000 do
    redis.call('XACK', KEYS[3], ARGV[1], unpack(acks, i, math.min(i + 999, #acks)))
  end
end
"""
    + r"""if maxlen > 0 then
  redis.pcall('XTRIM', KEYS[1], 'MAXLEN', '~', maxlen)  -- a stream, or none: cannot fail
  redis.pcall('XTRIM', KEYS[2], 'MAXLEN', '~', maxlen)
end
redis.call('HSET', KEYS[4], 'last_id', ARGV[3], 'trades', ARGV[4], 'events', ARGV[5],
           'digest', ARGV[6])
return {'OK', unpack(notes)}
"""
)

TAILS_LUA: Final = """#!lua flags=no-writes
-- KEYS: checkpoint, events, trades. One consistent read of where the checkpoint and the two
-- output streams end: its last_id, the last event's input_id, the last trade's trade_id.
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
return {last, field(events, 'input_id'), field(trades, 'trade_id')}
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


class Checkpoint(msgspec.Struct, frozen=True):
    """Where the published outputs stand: after input ``last_id``, ``trades``/``events`` total."""

    last_id: str = ZERO_ID
    trades: int = 0
    events: int = 0
    digest: str = ""


class SnapshotMeta(msgspec.Struct, frozen=True):
    input_id: str
    generation: int
    chunks: int
    bytes: int
    trades: int
    events: int
    digest: str


class Fenced(Exception):
    """The commit was refused: the checkpoint in Redis is not where this daemon believed
    (``FENCED``), or the batch does not start right after it (``GAP``). Resynchronise."""

    def __init__(self, checkpoint: Checkpoint, why: str = "FENCED") -> None:
        super().__init__(f"commit refused ({why}): checkpoint at {checkpoint.last_id}")
        self.checkpoint = checkpoint
        self.why = why


class CommitRefused(Exception):
    """The commit script changed nothing because Redis could not take this batch as it stands:
    ``why`` is ``wrong_type`` (``key`` holds another type), ``ids_exhausted`` (``key`` has run out
    of IDs for ``XADD *``), ``no_group`` (the consumer group is gone), ``xadd_failed`` (another
    error, in ``error``) or ``bad_rows`` (a bug: the rows do not match their shapes). Waited out:
    an operator or a resync repairs it."""

    def __init__(self, why: str, key: str, error: str = "") -> None:
        super().__init__(f"commit refused ({why}): {key}: {error}")
        self.why = why
        self.key = key
        self.error = error


_batch_encoder = msgspec.msgpack.Encoder()


def _field_values(struct: msgspec.Struct) -> list[str]:
    """A struct as the field/value list of an HSET."""
    return [x for k, v in msgspec.structs.asdict(struct).items() for x in (k, str(v))]


def text(value: object) -> str | None:
    """A reply value as text (bytes decoded as UTF-8; None stays None)."""
    if isinstance(value, bytes):
        return value.decode()
    return None if value is None else str(value)


def supported_server(redis_version: str) -> bool:
    """Whether a server of this ``redis_version`` (INFO) runs the shard: Redis 7.0 and later
    (script shebangs, ``XGROUP SETID ... ENTRIESREAD``); Valkey reports a Redis version of
    7.2.4."""
    major = redis_version.partition(".")[0]
    return major.isdigit() and int(major) >= 7


class Store:
    """The pair's Redis state, through one client."""

    def __init__(self, redis: Redis, keys: Keys, group: str, ack: str = "setid") -> None:
        self.redis = redis
        self.keys = keys
        self.group = group
        self.ack = ack  # see Config.ack
        self._commit = redis.register_script(COMMIT_LUA)
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

    def commit_args(
        self,
        expected_last: str,
        checkpoint: Checkpoint,
        trades: Row,
        events: Row,
        acks: list[str],
        output_maxlen: int,
        first: str,
    ) -> list[Any]:
        """The EVALSHA command that commits a batch (see :meth:`finish_commit`)."""
        keys = self.keys
        return [
            "EVALSHA", self._commit.sha, 4,
            keys.trades, keys.events, keys.orders, keys.checkpoint,
            self.group, expected_last, checkpoint.last_id, checkpoint.trades, checkpoint.events,
            checkpoint.digest, output_maxlen,
            _batch_encoder.encode((trades, events, acks if self.ack == "xack" else ())),
            first, self.ack,
        ]  # fmt: skip

    async def finish_commit(self, channel: Channel, args: list[Any]) -> list[str]:
        """Read the reply of a commit sent on ``channel``; raise :class:`Fenced` if the
        checkpoint had moved, :class:`CommitRefused` if Redis could not take the batch (nothing
        was written either way). A server that lost the script (restart) gets it again. Returns
        the output streams the commit had to create again although entries had been published
        to them (someone deleted them)."""
        try:
            reply = await channel.recv()
        except NoScriptError:
            await self.redis.script_load(COMMIT_LUA)
            await channel.send(*args)
            reply = await channel.recv()
        status = text(reply[0])
        if status == "OK":
            return [str(text(key)) for key in reply[1:]]
        if status == "REFUSED":
            raise CommitRefused(str(text(reply[1])), str(text(reply[2])), str(text(reply[3])))
        last, trades_total, events_total = (text(x) for x in reply[1:4])
        raise Fenced(
            Checkpoint(last or ZERO_ID, int(trades_total or 0), int(events_total or 0)),
            str(status),
        )

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

    async def last_entry(self, key: str) -> tuple[str, dict[str, str]] | None:
        """The last entry of stream ``key`` (ID and fields as text), or None if it has none."""
        reply: Any = await self.redis.xrevrange(key, count=1)
        if not reply:
            return None
        entry_id, fields = reply[0]
        return str(text(entry_id)), {str(text(k)): str(text(v)) for k, v in fields.items()}

    async def tails(self) -> tuple[str, str, str]:
        """Read together: the checkpoint's ``last_id``, the last event's ``input_id`` and the
        last trade's ``trade_id`` (``''`` where there is none)."""
        reply: Any = await self._tails(
            keys=[self.keys.checkpoint, self.keys.events, self.keys.trades]
        )
        last, input_id, trade_id = (str(text(x) or "") for x in reply)
        return last, input_id, trade_id

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
