"""The pair's engine, replayed in the gateway, so that it can say where any live order stands.

``book:{P}`` is L2 only: it cannot say an order's side, price, remaining quantity or account.
The engine can, and it is deterministic, so the gateway keeps one of its own: the shard's
snapshot, then every input up to the checkpoint (as recovery does, read-only), then the inputs
of each batch of events the gateway reads, applied in the same order. Each replayed event must
equal the committed one; the first that does not (inputs trimmed under a gateway that was
away, a daemon with another ``max_entry_bytes``) rebuilds the replica from the snapshot.

The inputs come read ahead: the feed's reader asks for the inputs after :attr:`Replica.read_id`
in the same pipeline as its blocking read of the events (:meth:`Replica.read_ahead`), so they
cost no socket write of their own; an event past what was read ahead (a backlog, a replica
just built) reads the rest with one XRANGE.

Cost: the engine's own, per input (about a third of the shard's CPU), and its memory (the
book, about 170 bytes an order; at most :data:`AHEAD_KEPT` inputs read ahead).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Final, NamedTuple

from shard.batch import Entries, apply_entries
from shard.checkpoint import ZERO_ID, parse_id
from shard.config import Config
from shard.engine import Engine
from shard.messages import Event, Trade
from shard.recovery import load_snapshot, replay
from shard.store import Store
from shard.terms import parse_terms

log = logging.getLogger("shard.gateway")

FINISHED_KEPT: Final = 100_000
"""Finished orders remembered (their last event or fill), oldest forgotten first."""
AHEAD_KEPT: Final = 1000
"""Inputs read ahead of their events at most, before the replica stops asking for more."""


class LiveOrder(NamedTuple):
    order_id: str
    side: str
    price: int
    remaining: int
    account: str | None


async def _nothing() -> None:
    return None


class Replica:
    """An engine that follows the committed inputs (see the module)."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self.engine: Engine | None = None
        self.at = ZERO_ID
        """The last input applied."""
        self.read_id = ZERO_ID
        """The last input read: those after :attr:`at` up to it are in :attr:`ahead`."""
        self.ahead: deque[tuple[str, list[bytes]]] = deque()
        self.finished: OrderedDict[str, dict[str, object]] = OrderedDict()
        self.rebuilds = 0

    async def build(self) -> None:
        """The engine at the stored checkpoint: the snapshot, then the inputs up to it."""
        store = self.store
        checkpoint = await store.checkpoint()
        terms = parse_terms(checkpoint.terms) if checkpoint else None
        terms = terms or self.config.terms
        engine, at, events = await load_snapshot(store, await store.snapshot_meta(), terms)
        if checkpoint is not None:
            done = await replay(
                store, self.config, engine, at, events, checkpoint.last_id, _nothing
            )
            at = done.at
        self.engine, self.at = engine, at
        self.read_id = at
        self.ahead.clear()
        self.rebuilds += 1

    def wants_inputs(self) -> bool:
        """Whether the reader should read inputs ahead for it (it is built, and has room)."""
        return self.engine is not None and len(self.ahead) < AHEAD_KEPT

    def read_ahead(self, entries: Entries) -> None:
        """Keep the inputs read after :attr:`read_id` (raw XRANGE entries) for their events."""
        self.ahead.extend((raw_id.decode(), fields) for raw_id, fields in entries)
        if entries:
            self.read_id = self.ahead[-1][0]

    async def advance(self, committed: list[Event]) -> None:
        """Apply the inputs of ``committed`` (events in stream order) not applied yet, checking
        each replayed event against its committed one; rebuild on the first difference."""
        if self.engine is None:
            await self.build()
        assert self.engine is not None
        fresh = [e for e in committed if parse_id(e.input_id or ZERO_ID) > parse_id(self.at)]
        if not fresh:
            return
        until = fresh[-1].input_id or ZERO_ID
        last = parse_id(until)
        pairs: list[tuple[str, list[bytes]]] = []
        ahead = self.ahead
        while ahead and parse_id(ahead[0][0]) <= last:
            pairs.append(ahead.popleft())
        if parse_id(self.read_id) < last:  # not all read ahead: the rest, in one XRANGE
            entries = await self.store.read_inputs(f"({self.read_id}", until, len(fresh) + 1)
            pairs += [(raw_id.decode(), fields) for raw_id, fields in entries]
            self.read_id = until
        trades: list[Trade] = []
        events: list[Event] = []
        apply_entries(self.engine, pairs, self.config.max_entry_bytes, trades, events)
        self.engine.discard_depth()
        if events != fresh:
            log.warning(
                "%s order replica out of step at %s (inputs trimmed, or another "
                "max_entry_bytes than the daemon's): rebuilding it from the snapshot",
                self.config.pair, until,
            )  # fmt: skip
            self.engine = None
            await self.build()
            return
        self.at = until
        self._remember(trades, events)

    def _remember(self, trades: list[Trade], events: list[Event]) -> None:
        book = self.engine.book if self.engine else None
        for trade in trades:
            if book is not None and trade.maker_order_id not in book:
                self._finish(
                    trade.maker_order_id,
                    {
                        "status": "filled",
                        "by_trade": trade.trade_id,
                        "account": trade.maker_account,
                    },
                )
        for event in events:
            oid = event.order_id
            if oid is None or (book is not None and oid in book):
                continue
            self._finish(oid, {"status": event.status, "input_id": event.input_id,
                               "reason": event.reason, "detail": event.detail,
                               "account": event.account})  # fmt: skip

    def _finish(self, order_id: str, outcome: dict[str, object]) -> None:
        self.finished[order_id] = {k: v for k, v in outcome.items() if v is not None}
        self.finished.move_to_end(order_id)
        if len(self.finished) > FINISHED_KEPT:
            self.finished.popitem(last=False)

    # -- what the routes ask -------------------------------------------------------------------

    def live(self, order_id: str) -> LiveOrder | None:
        if self.engine is None:
            return None
        book = self.engine.book
        got = book.get(order_id)
        if got is None:
            return None
        side, price, remaining = got
        return LiveOrder(order_id, side, price, remaining, book.owners.account_of(order_id))

    def open_orders(self, account: str) -> list[LiveOrder]:
        """The account's live orders, in the book's order (bids best first, then asks)."""
        if self.engine is None:
            return []
        book = self.engine.book
        ids = book.in_priority(book.owners.orders_of(account))
        return [order for order_id in ids if (order := self.live(order_id)) is not None]
