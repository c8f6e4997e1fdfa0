"""The one atomic step that commits a batch: a Lua script, and the command that sends it.

The script checks that the checkpoint is still where this daemon believes it is (a fence: a
second daemon, a lost reply or a Redis rollback all show up here) and that the batch starts
with the input entry right after it (no gap, whatever the consumer group did); then it XADDs
the batch's trades and events, acknowledges its inputs (moves the consumer group past them, or
XACKs them) and moves the checkpoint, all or nothing. The outputs travel as one msgpack
argument of rows (:data:`shard.wire.Row`: a shape index, then values, every value a string
since Lua numbers are doubles); the field names are constants in the script. Every key is in
KEYS and carries the pair's hash tag, so it also runs on Redis Cluster.

Redis keeps the writes of a script that fails, so no write may fail after another: what can be
checked is checked first, the writes that can still fail go first, each through ``pcall``, and
a failure deletes the entries already added and answers ``REFUSED`` (:class:`CommitRefused`).
"""

from __future__ import annotations

import time
from string import Template
from typing import Any, Final

import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from shard.batch import Batch
from shard.checkpoint import ZERO_ID, Checkpoint
from shard.config import Keys
from shard.transport import Channel, text
from shard.wire import (
    EVENT_BITS,
    EVENT_NAMES,
    EVENT_SHAPES,
    TRADE_BITS,
    TRADE_NAMES,
    TRADE_SHAPES,
)

UNDO_CHUNK: Final = 1000
"""Entry IDs per XDEL or XACK call in the script (Lua's unpack has a stack limit)."""


def _lua_shapes(
    shapes: tuple[tuple[str, ...], ...], names: tuple[str, ...], bits: dict[str, int], common: int
) -> str:
    """A Lua expression: a table from shape index to its list of field names. The ``common``
    shapes (the indexes below it) are spelled out; any other is made when first asked for. A
    call meets only a few shapes, and every table spelled out is built on every call: the 32
    event shapes without accounts cost a 2-input commit 5.5% more of the server than making
    the few it meets (``scripts/bench_instructions.py --batch 2``), and saved 0.3% at 1,000."""
    spelled = ", ".join(
        f"[{i}] = {{{', '.join(repr(n) for n in shapes[i])}}}" for i in range(common)
    )
    flags = ", ".join(str(bits.get(name, 0)) for name in names)
    quoted = ", ".join(repr(name) for name in names)
    return f"shapes_of({{{spelled}}}, {{{quoted}}}, {{{flags}}}, {len(shapes)})"


def _lua_xadd_branches() -> str:
    """One XADD call spelled out per field count: a generic loop into a reused argument table,
    or a table of names per entry, costs the server more per input (docs/benchmarks.md). The
    counts of entries without accounts or fees come first (largest first), the longer ones
    after them, so the common entries take as few tests as before those fields existed."""
    arities = sorted(
        {len(names) for names in (*EVENT_SHAPES, *TRADE_SHAPES)},
        key=lambda k: (k > len(TRADE_SHAPES[0]), -k),
    )
    return "\n    else".join(
        f"if k == {k} then\n      r = pcall('XADD', key, '*', "
        + ", ".join(f"nm[{j}], rows[i + {j}]" for j in range(1, k + 1))
        + ")"
        for k in arities
    )


XADD_ROWS_LUA: Final = Template("""local pcall = redis.pcall
-- Shape index -> field names: the names whose bit is 0 (always there) or set in the index,
-- in order. The common shapes come made; any other is made on first use (0 <= k < count).
local function shapes_of(made, names, bits, count)
  return setmetatable(made, {__index = function(t, k)
    if type(k) ~= 'number' or k < 0 or k >= count or k % 1 ~= 0 then
      return nil
    end
    local nm = {}
    for j = 1, #names do
      if bits[j] == 0 or bit.band(k, bits[j]) ~= 0 then
        nm[#nm + 1] = names[j]
      end
    end
    t[k] = nm
    return nm
  end})
end
-- XADD a batch's rows to one stream, stopping at the first that fails: how many it added, and
-- the error (nil if none).
local function xadd_rows(key, rows, shapes)
  local i, n, added = 1, #rows, 0
  local r
  while i <= n do
    local nm = shapes[rows[i]]
    if nm == nil or i + #nm > n then
      return added, 'bad_rows'
    end
    local k = #nm
    $branches
    end
    if type(r) == 'table' and r.err then
      return added, r.err
    end
    added = added + 1
    i = i + k + 1
  end
  return added, nil
end""").substitute(branches=_lua_xadd_branches())
TRADE_SHAPES_LUA: Final = _lua_shapes(TRADE_SHAPES, TRADE_NAMES, TRADE_BITS, 1)
EVENT_SHAPES_LUA: Final = _lua_shapes(EVENT_SHAPES, EVENT_NAMES, EVENT_BITS, 0)

TRIM_DEPTH_EVERY: Final = 64
"""``depth:{P}`` is trimmed (``XTRIM MAXLEN ~ depth_maxlen``) by the commits whose ``seq`` is a
multiple of this: a trim with nothing to do still costs the server a command per commit, and
the cap is approximate anyway (it may be passed by this many entries, plus a stream node)."""

COMMIT_LUA: Final = Template(r"""#!lua
-- The shebang declares a script that may write: Redis refuses it whole, before it runs, when
-- over maxmemory (without it, the limit is checked only at the first command that adds memory).
-- KEYS: trades, events, orders, checkpoint, depth, book, ticker
-- ARGV: group, expected last_id, new last_id, trades total, events total, digest,
--       output maxlen (0: none), msgpack [trade rows, event rows, [ack ids], depth values,
--       book fields to set, book fields to delete, ticker fields], first input applied
--       ('' if none), ack mode ('xack' or 'setid'), new seq, depth maxlen (0: none), the
--       trading terms the batch was applied under

-- 1. Checks that write nothing: the fence, the gap, the output streams' types.
local cp = redis.call('HMGET', KEYS[4], 'last_id', 'trades', 'events')
local last = cp[1] or '0-0'
if last ~= ARGV[2] then
  return {'FENCED', last, cp[2] or '0', cp[3] or '0'}
end
if ARGV[9] ~= '' then  -- the batch starts with the entry that follows the checkpoint
  local nxt = redis.call('XRANGE', KEYS[3], '(' .. last, '+', 'COUNT', 1)
  if #nxt == 0 or nxt[1][1] ~= ARGV[9] then
    return {'GAP', last, cp[2] or '0', cp[3] or '0'}
  end
end
local batch = cmsgpack.unpack(ARGV[8])
local keys, rows, published = {KEYS[1], KEYS[2], KEYS[5]}, {batch[1], batch[2]}, {cp[2], cp[3]}
local depth, book_set, book_del, tick = batch[4], batch[5], batch[6], batch[7]
local maxlen, depthmax = tonumber(ARGV[7]), tonumber(ARGV[12])
local existed, added, notes = {}, {0, 0, 0}, {}
local function is(key, want)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= want and kind ~= 'none' then
    return false, {'REFUSED', 'wrong_type', key, 'the key holds a ' .. kind}
  end
  return kind == want, nil
end
local wrong
-- depth:{P} is trimmed every TRIM_EVERY-th seq, and only by a commit that adds to it.
local trim_depth = depthmax > 0 and #depth > 0 and tonumber(ARGV[11]) % $trim_every == 0
for s = 1, 3 do
  local n = s < 3 and #rows[s] or #depth
  if n > 0 or (s < 3 and maxlen > 0) then
    existed[s], wrong = is(keys[s], 'stream')
    if wrong then
      return wrong
    end
  end
end
local _, wrong_book = is(KEYS[6], 'hash')
if wrong_book then
  return wrong_book
end
if #tick > 0 then
  local _, wrong_ticker = is(KEYS[7], 'hash')
  if wrong_ticker then
    return wrong_ticker
  end
end

-- 2. The writes that can fail, each through pcall; a failure undoes the entries added.
$xadd_rows
local shapes = {$trade_shapes, $event_shapes}
local function undo()
  for s = 1, 3 do
    if added[s] > 0 and not existed[s] then
      redis.pcall('DEL', keys[s])
    elseif added[s] > 0 then
      local mine = redis.call('XREVRANGE', keys[s], '+', '-', 'COUNT', added[s])
      for i = 1, #mine, $chunk do
        local ids = {}
        for j = i, math.min(i + $chunk - 1, #mine) do
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
local depth_id = nil
if #depth > 0 then
  local r = redis.pcall('XADD', KEYS[5], '*', 'seq', ARGV[11], 'input_id', ARGV[3],
                        'bids', depth[1], 'asks', depth[2], 'best_bid', depth[3],
                        'best_ask', depth[4], 'checksum', depth[5])
  if type(r) == 'table' and r.err then
    return refused(r.err, KEYS[5], 'xadd_failed')
  end
  added[3] = 1
  depth_id = r
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
  for i = 1, #acks, $chunk do
    redis.call('XACK', KEYS[3], ARGV[1], unpack(acks, i, math.min(i + $chunk - 1, #acks)))
  end
end

-- 3. The writes that cannot fail (the types are checked): the trims (of a stream, or of none),
-- the book and the ticker (hashes, or none), the checkpoint.
if maxlen > 0 then
  redis.pcall('XTRIM', KEYS[1], 'MAXLEN', '~', maxlen)
  redis.pcall('XTRIM', KEYS[2], 'MAXLEN', '~', maxlen)
end
if trim_depth then
  redis.pcall('XTRIM', KEYS[5], 'MAXLEN', '~', depthmax)
end
for i = 1, #book_del, $chunk do
  redis.call('HDEL', KEYS[6], unpack(book_del, i, math.min(i + $chunk - 1, #book_del)))
end
-- The levels set and where the book stands, in as few HSETs as the chunks allow (one, mostly).
local n = #book_set
book_set[n + 1], book_set[n + 2] = 'input_id', ARGV[3]
if depth_id or ARGV[11] == '0' then
  book_set[n + 3], book_set[n + 4] = 'seq', ARGV[11]
  book_set[n + 5], book_set[n + 6] = 'depth_id', depth_id or '0-0'
end
for i = 1, #book_set, 2 * $chunk do
  redis.call('HSET', KEYS[6], unpack(book_set, i, math.min(i + 2 * $chunk - 1, #book_set)))
end
if #tick > 0 then
  redis.call('HSET', KEYS[7], unpack(tick))
end
redis.call('HSET', KEYS[4], 'last_id', ARGV[3], 'trades', ARGV[4], 'events', ARGV[5],
           'digest', ARGV[6], 'seq', ARGV[11], 'terms', ARGV[13])
return {'OK', unpack(notes)}
""").substitute(
    trade_shapes=TRADE_SHAPES_LUA,
    event_shapes=EVENT_SHAPES_LUA,
    xadd_rows=XADD_ROWS_LUA,
    chunk=UNDO_CHUNK,
    trim_every=TRIM_DEPTH_EVERY,
)
"""The commit script (see the module's docstring)."""


class Fenced(Exception):
    """The commit was refused: the checkpoint in Redis is not where this daemon believed
    (``FENCED``), or the batch does not start right after it (``GAP``). Resynchronise."""

    def __init__(self, checkpoint: Checkpoint, why: str) -> None:
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


class Commit:
    """Commits batches over a channel, one in flight at a time: :meth:`send` puts a batch's
    EVALSHA on the wire, :meth:`finish` reads its reply, loading the script and sending the
    same command again if the server lost it (a restart)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        group: str,
        ack: str,
        output_maxlen: int,
        depth_maxlen: int = 0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.group = group
        self.ack = ack  # see Config.ack
        self.output_maxlen = output_maxlen
        self.depth_maxlen = depth_maxlen
        self.sha = redis.register_script(COMMIT_LUA).sha
        self._sent: list[Any] = []
        self.sent_at = 0.0
        """When the last commit went on the wire (``time.perf_counter``), for the metrics."""

    def command(self, batch: Batch) -> list[Any]:
        """The EVALSHA command that commits ``batch``. Cost: one msgpack encoding of its rows."""
        keys, target = self.keys, batch.target
        rows = (
            batch.trades, batch.events, batch.acks if self.ack == "xack" else (),
            batch.depth, batch.book_set, batch.book_del, batch.ticker,
        )  # fmt: skip
        return [
            "EVALSHA", self.sha, 7,
            keys.trades, keys.events, keys.orders, keys.checkpoint,
            keys.depth, keys.book, keys.ticker,
            self.group, batch.expected.last_id, target.last_id, target.trades, target.events,
            target.digest, self.output_maxlen, _batch_encoder.encode(rows), batch.first, self.ack,
            target.seq, self.depth_maxlen, target.terms,
        ]  # fmt: skip

    async def send(self, channel: Channel, batch: Batch) -> None:
        self._sent = self.command(batch)
        self.sent_at = time.perf_counter()
        await channel.send(*self._sent)

    async def finish(self, channel: Channel) -> list[str]:
        """Read the reply of the commit sent last on ``channel``; raise :class:`Fenced` if the
        checkpoint had moved, :class:`CommitRefused` if Redis could not take the batch (nothing
        was written either way). Returns the output streams the commit had to create again
        although entries had been published to them (someone deleted them)."""
        try:
            reply = await channel.recv()
        except NoScriptError:
            await self.redis.script_load(COMMIT_LUA)
            await channel.send(*self._sent)
            reply = await channel.recv()
        return parse_reply(reply)


def parse_reply(reply: list[Any]) -> list[str]:
    """The commit script's reply: the recreated streams if ``OK``, else the exception."""
    status = text(reply[0])
    if status == "OK":
        return [str(text(key)) for key in reply[1:]]
    if status == "REFUSED":
        raise CommitRefused(str(text(reply[1])), str(text(reply[2])), str(text(reply[3])))
    last, trades_total, events_total = (text(x) for x in reply[1:4])
    raise Fenced(
        Checkpoint(last or ZERO_ID, int(trades_total or 0), int(events_total or 0)), str(status)
    )
