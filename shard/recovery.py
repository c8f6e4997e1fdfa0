"""Recovery: the engine rebuilt from the snapshot and the input stream, up to the checkpoint.

:func:`recover` loads the latest snapshot, re-applies the inputs after it up to the checkpoint
without publishing (:func:`shard.batch.apply_entries`, the daemon's own path), and verifies the
trade and event counts and the state digest against the checkpoint. The input stream is the
journal and the engine is deterministic, so the outputs after any crash equal an uninterrupted
run's. A missing checkpoint is rebuilt from the outputs and verified by replay
(:func:`rebuild_checkpoint`). Anything that cannot be reproduced raises :class:`RecoveryError`,
which stops the daemon with what to repair: publishing on top of it could duplicate or lose
outputs.

Cost: O(snapshot size + inputs replayed), read in pages of :data:`REPLAY_PAGE` entries (fewer
when entries are large: :class:`shard.reads.ReadBudget`); the lease is renewed after each page.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Final, NamedTuple

from shard.batch import apply_entries
from shard.checkpoint import ZERO_ID, Checkpoint, SnapshotMeta, parse_id
from shard.config import Config
from shard.engine import DIGEST_SCHEME, Engine
from shard.logs import Log
from shard.messages import Event, Trade
from shard.outage import NotYet
from shard.reads import ReadBudget
from shard.store import Store, supported_server
from shard.terms import Terms, parse_terms
from shard.wire import event_fields, trade_fields, trade_from_fields

log = Log("shard.daemon")

REPLAY_PAGE: Final = 5000
"""Input entries per XRANGE of a replay (at most)."""
STREAM_ID: Final = re.compile(r"\d{1,20}-\d{1,20}")

Renew = Callable[[], Awaitable[None]]
"""Renews the lease during a long replay (raises if another daemon holds it now)."""


class RecoveryError(Exception):
    """Redis holds a state this engine cannot reproduce: a bug or lost input. Crash loudly."""


class Recovered(NamedTuple):
    """An engine at ``checkpoint``, from the snapshot at ``snapshot`` (None: from the first
    input) and ``replayed`` inputs after it."""

    engine: Engine
    checkpoint: Checkpoint
    replayed: int
    snapshot: str | None
    terms_were: Terms | None = None
    """The checkpoint's terms when the configured ones differ (the engine applies the new
    ones, but only after a snapshot is stored at the checkpoint); None when they are the same."""
    spans: tuple[tuple[str, float], ...] = ()
    """Seconds each step took, in order (see :func:`recover`), for the log."""


class Spans:
    """Wall time between marks (the daemon's, not the engine's: recovery is I/O)."""

    def __init__(self) -> None:
        self.took: list[tuple[str, float]] = []
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        """``name`` took the time since the last mark."""
        now = time.perf_counter()
        self.took.append((name, round(now - self._last, 3)))
        self._last = now


class Replayed(NamedTuple):
    """Where a replay stopped: the last input applied, the event count there, how many inputs
    it applied, and the last event and trade they produced (None if none)."""

    at: str
    events: int
    replayed: int
    last_event: Event | None
    last_trade: Trade | None


def check_server(redis_version: str) -> None:
    """Refuse a server older than Redis 7.0 (its ``INFO`` ``redis_version``)."""
    if not supported_server(redis_version):
        raise RecoveryError(
            f"the server reports Redis {redis_version}; the shard needs Redis 7.0 or newer (or "
            "Valkey): its commit script declares that it writes (a #!lua shebang), so that "
            "Redis refuses it whole when over maxmemory, and ack = setid needs XGROUP "
            "SETID ... ENTRIESREAD"
        )


async def server_run_id(store: Store, known: str | None, moved: bool = False) -> str:
    """The server's ``run_id``, its version checked (:func:`check_server`); one other than the
    ``known`` one means Redis restarted or, on a cluster after the daemon ``moved`` to another
    node, that the pair's slot has a new owner; either is logged."""
    info = await store.redis.info("server")
    run_id = str(info.get("run_id"))
    if known is not None and run_id != known:
        what = "slot owner changed" if moved else "redis restarted"
        log.warning(f"{what} (new run_id); checking the checkpoint", run_id=run_id)
    check_server(str(info.get("redis_version")))
    return run_id


async def place_group(store: Store, checkpoint: Checkpoint, consumer: str) -> None:
    """Put the consumer group at ``checkpoint``, creating it if it is gone (logged if the pair
    had published: someone deleted it)."""
    if await store.ensure_group(checkpoint, consumer) and checkpoint.events:
        log.warning(
            "the consumer group was missing; created again at the checkpoint",
            group=store.group,
            at=checkpoint.last_id,
        )


async def recover(store: Store, config: Config, renew: Renew) -> Recovered:
    """The engine at the stored checkpoint (rebuilt first if it is missing), verified, with the
    outputs checked to end where it says (:func:`check_outputs`)."""
    keys = store.keys
    spans = Spans()
    checkpoint = await store.checkpoint()
    if checkpoint is None:
        checkpoint = await rebuild_checkpoint(store, config, renew)
    terms = parse_terms(checkpoint.terms)
    if terms is None:
        raise RecoveryError(
            f"{keys.checkpoint} holds terms {checkpoint.terms!r}, which are not '<stp_default> "
            "<maker_fee_ppm> <taker_fee_ppm>': the inputs after the snapshot cannot be replayed "
            "under the terms they were applied under. Restore the field (the terms the pair ran "
            "with) or the checkpoint from a backup"
        )
    meta = await store.snapshot_meta()
    spans.mark("checkpoint_s")
    engine, at, events = await load_snapshot(store, meta, terms, spans)
    if parse_id(at) > parse_id(checkpoint.last_id):
        moved = await store.checkpoint()
        if moved is not None and moved.last_id != checkpoint.last_id:
            # Another daemon, which has not yet seen its lease go, committed and stored this
            # snapshot between the two reads (a lease handover): not a checkpoint moved back.
            raise NotYet(
                f"the checkpoint moved during recovery ({checkpoint.last_id} -> "
                f"{moved.last_id}): another daemon committed; recovering again"
            )
        raise RecoveryError(
            f"the snapshot at {at} is ahead of the checkpoint {checkpoint.last_id}: the "
            f"checkpoint was moved back, or the snapshot comes from another pair or run; "
            f"restore {keys.checkpoint} from the backup the snapshot came with"
        )
    done = await replay(store, config, engine, at, events, checkpoint.last_id, renew)
    spans.mark("replay_s")
    found = Checkpoint(done.at, engine.book.next_trade_id - 1, done.events, engine.digest())
    digest = checkpoint.digest.startswith(DIGEST_SCHEME)
    if not found.same_place(checkpoint) or (digest and found.digest != checkpoint.digest):
        raise RecoveryError(
            f"replay does not reproduce the checkpoint: expected {checkpoint}, got {found}; "
            f"input entries after the snapshot are missing from {keys.orders} (trimmed "
            "or deleted) or the engine changed behaviour. Restore the input stream, or the "
            "snapshot and checkpoint that go with what is left of it"
        )
    await check_outputs(store, checkpoint)
    await sync_book(store, engine, checkpoint)
    spans.mark("checks_s")
    # New terms apply from the next input on, once a snapshot is stored here (none is needed
    # where no input was ever applied).
    changed = terms if terms != config.terms and checkpoint.last_id != ZERO_ID else None
    engine.adopt(config.terms)
    snapshot = meta.input_id if meta else None
    return Recovered(engine, checkpoint, done.replayed, snapshot, changed, tuple(spans.took))


def book_of(engine: Engine) -> dict[str, str]:
    """The engine's L2 book as ``book:{P}``'s level fields. O(levels)."""
    fields: dict[str, str] = {}
    for prefix, side in (("b:", engine.book.bids), ("a:", engine.book.asks)):
        for level in side:
            fields[f"{prefix}{level.price}"] = f"{level.total}:{len(level.orders)}"
    return fields


async def sync_book(store: Store, engine: Engine, checkpoint: Checkpoint) -> None:
    """Make ``book:{P}`` hold the recovered engine's book at ``checkpoint``: it may be missing
    (a pair older than market data, an operator's DEL) or not match (a field changed by hand).
    Rebuilt all at once, keeping its ``depth_id`` when its ``seq`` is the checkpoint's (else the
    last ``depth:{P}`` entry's, or ``0-0``), and said so; not if the checkpoint has moved on
    meanwhile (another daemon publishing). Cost: O(levels), once per recovery."""
    keys = store.keys
    stored = await store.book_fields()
    want = book_of(engine)
    levels = {k: v for k, v in stored.items() if k[:2] in ("b:", "a:")}
    seq = str(checkpoint.seq)
    # An absent seq or input_id is the contract's "before any" value: no hash at all is the
    # empty book of a pair that has published nothing yet.
    stored_seq, stored_input = stored.get("seq", "0"), stored.get("input_id", ZERO_ID)
    if levels == want and stored_seq == seq and stored_input == checkpoint.last_id:
        return
    depth_id = stored.get("depth_id", "") if stored_seq == seq else ""
    if not depth_id:
        last = await store.last_entry(keys.depth)
        depth_id = last[0] if last and last[1].get("seq") == seq else ZERO_ID
    fields = {"seq": seq, "depth_id": depth_id, "input_id": checkpoint.last_id, **want}
    if not await store.replace_book(fields, checkpoint.last_id):
        return  # the checkpoint moved: another daemon publishes, and the fence settles it
    log.warning(
        "book:{P} did not hold the recovered book; rebuilt from the engine",
        key=keys.book,
        why="missing" if not stored else "levels differ" if levels != want else "seq or input_id",
        levels=len(want),
        seq=checkpoint.seq,
    )


async def load_snapshot(
    store: Store, meta: SnapshotMeta | None, terms: Terms, spans: Spans | None = None
) -> tuple[Engine, str, int]:
    """The engine of the stored snapshot under ``terms``, the last input it covers and its
    event count (an empty engine at ``0-0`` without one); the time to read it and to
    restore it marked in ``spans``."""
    if meta is None:
        return Engine(True, terms.fees, terms.stp_default), ZERO_ID, 0
    data = await store.load_snapshot(meta)
    if spans is not None:
        spans.mark("snapshot_read_s")
    engine = Engine.restore(data, True, terms.fees, terms.stp_default)
    if meta.digest.startswith(DIGEST_SCHEME) and engine.digest() != meta.digest:
        raise RecoveryError(f"snapshot at {meta.input_id} does not match its own digest")
    if spans is not None:
        spans.mark("restore_s")
    return engine, meta.input_id, meta.events


async def replay(
    store: Store, config: Config, engine: Engine, at: str, events: int, until: str, renew: Renew
) -> Replayed:
    """Apply the inputs after ``at`` up to ``until`` to ``engine`` without publishing."""
    replayed = 0
    trades: list[Trade] = []
    page_events: list[Event] = []
    last_event: Event | None = None
    last_trade: Trade | None = None
    pages = ReadBudget(REPLAY_PAGE, config.read_budget_bytes, config.max_entry_bytes)
    while parse_id(at) < parse_id(until):
        page = await store.read_inputs(f"({at}", until, pages.count)
        if not page:
            break
        entries = [(raw_id.decode(), fields) for raw_id, fields in page]
        pages.taken(apply_entries(engine, entries, config.max_entry_bytes, trades, page_events))
        engine.discard_depth()  # replayed changes were published already: not market data
        at = entries[-1][0]
        events += len(entries)
        replayed += len(entries)
        last_event = page_events[-1]
        if trades:
            last_trade = trades[-1]
        trades.clear()
        page_events.clear()
        await renew()  # a long replay must not let a standby take over
    return Replayed(at, events, replayed, last_event, last_trade)


async def check_outputs(store: Store, checkpoint: Checkpoint) -> None:
    """Before publishing after ``checkpoint``: the outputs must end where it says. An event of
    a later input, a trade past its count or a depth entry past its ``seq`` means a commit
    half-written (which the commit script is built never to leave) or forged entries;
    publishing on top of them would repeat outputs (or a ``seq``, which every client's gap
    check trusts), so recovery stops instead. Read in one script with the checkpoint: if that
    has moved meanwhile, another daemon is publishing, and the fence settles it."""
    keys = store.keys
    last, input_id, trade_id, seq = await store.tails()
    if last != checkpoint.last_id:
        return
    event_after = STREAM_ID.fullmatch(input_id) and parse_id(input_id) > parse_id(last)
    trade_after = trade_id.isdigit() and int(trade_id) > checkpoint.trades
    seq_after = seq.isdigit() and int(seq) > checkpoint.seq
    if event_after or trade_after or seq_after:
        raise RecoveryError(
            f"the outputs go past the checkpoint at {checkpoint.last_id} (last event for "
            f"input {input_id or '-'}, last trade_id {trade_id or '-'} of {checkpoint.trades}, "
            f"last depth seq {seq or '-'} of {checkpoint.seq}): a commit was half-written or "
            f"entries were forged into {keys.trades}/{keys.events}/{keys.depth}. Delete the "
            "entries after the checkpoint (XDEL), then start the daemon again"
        )


async def rebuild_checkpoint(store: Store, config: Config, renew: Renew) -> Checkpoint:
    """There is no checkpoint. A new pair starts from the beginning of the input, but a pair
    whose checkpoint was deleted must not publish its outputs again: the checkpoint is rebuilt
    from the outputs (the last event names the last input committed) and verified by replaying
    the inputs up to there (the last event and the last trade must come out the same), or
    recovery stops with what to repair."""
    keys = store.keys
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
    # The terms the outputs were made under died with the checkpoint: the configured ones.
    engine, at, events = await load_snapshot(store, meta, config.terms)
    done = await replay(store, config, engine, at, events, until, renew)
    trades = engine.book.next_trade_id - 1
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
    last_depth = await store.last_entry(keys.depth)  # seq goes on after the last published
    depth_seq = last_depth[1].get("seq", "") if last_depth else ""
    seq = int(depth_seq) if depth_seq.isdigit() else 0
    checkpoint = Checkpoint(until, trades, done.events, engine.digest(), seq, config.terms.text())
    if not await store.write_rebuilt_checkpoint(checkpoint):
        stored = await store.checkpoint()  # another daemon rebuilt it first
        if stored is None:
            raise RecoveryError(f"{keys.checkpoint} appeared and vanished during recovery")
        return stored
    log.warning(
        "the checkpoint was missing; rebuilt from the outputs and verified by replay",
        last_id=until,
        trades=trades,
        events=done.events,
    )
    return checkpoint


def _fields_list(fields: dict[str, str]) -> list[str]:
    return [x for pair in fields.items() for x in pair]


def _same_trade(stored: dict[str, str], trades: int, replayed: Trade | None) -> bool:
    """Whether the last stored trade is the replay's last: the same ``trade_id`` as the count,
    and the same fields when the replay made it (else the snapshot covers it)."""
    if trade_from_fields(stored).trade_id != trades:
        return False
    return replayed is None or trade_fields(replayed) == _fields_list(stored)
