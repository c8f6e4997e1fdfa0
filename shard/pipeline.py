"""The exactly-once protocol's state and decisions, without I/O (the h11 idea: the daemon sends
and receives, this says what to send and what a reply means).

The daemon keeps two pipes to Redis: a reader (``XREAD``/``XREADGROUP``) and a writer (the
commit script). A batch is read, applied, and its commit sent; its reply is read after the next
batch has been applied, so at most two batches are applied and not yet confirmed. What the
pipeline holds:

* ``committed``: the checkpoint of the last confirmed commit;
* ``unconfirmed``: the batches applied to the engine whose commit is not confirmed, oldest
  first (the oldest may be in flight);
* the read position (with ``ack = "setid"`` reads go by position), whether the last read came
  back full (a backlog: the next read is sent without ``BLOCK``), and the read budget
  (:class:`shard.reads.ReadBudget`);
* the reply of a read already received ahead of the commit it would otherwise wait behind.

After an error the daemon drops both pipes (:meth:`Pipeline.reset`); when it resynchronises,
the stored checkpoint, against the batches in doubt, says what to do (:func:`resync`).
"""

from __future__ import annotations

import enum
from collections import deque

from shard.batch import Batch, Entries, build_batch
from shard.checkpoint import Checkpoint
from shard.commit import Fenced
from shard.config import Config, Keys
from shard.engine import Engine
from shard.reads import ReadBudget

Command = tuple[str | int, ...]


class ProtocolError(RuntimeError):
    """The daemon broke one of the pipeline's rules: a bug. It stops the daemon."""


class Resync(enum.Enum):
    """What a resynchronisation does, from the stored checkpoint and the batches in doubt."""

    RECOVER = "recover"
    """Redis holds another state (another daemon, a rollback, a lost checkpoint), or two
    batches are in doubt: rebuild the engine from Redis rather than untangle."""
    LANDED = "landed"
    """The batch in doubt was committed (its reply was lost): confirm it and go on."""
    RESEND = "resend"
    """The batch in doubt never landed: send its commit again as it was."""
    CONTINUE = "continue"
    """Nothing is in doubt, and Redis holds what the daemon believes: go on."""


def resync(stored: Checkpoint | None, committed: Checkpoint, unconfirmed: list[Batch]) -> Resync:
    """The resync table: what the ``stored`` checkpoint means for a daemon that believes
    ``committed`` with ``unconfirmed`` batches applied on top of it."""
    if stored is None or len(unconfirmed) > 1:
        return Resync.RECOVER
    if not unconfirmed:
        return Resync.CONTINUE if stored.same_place(committed) else Resync.RECOVER
    batch = unconfirmed[0]
    if stored.same_place(batch.target):
        return Resync.LANDED
    if stored.same_place(batch.expected):
        return Resync.RESEND
    return Resync.RECOVER


class Pipeline:
    """The state of the read -> apply -> commit pipeline; see the module's docstring. Every
    method is O(1) except :meth:`apply` (the batch's own cost)."""

    def __init__(self, config: Config, keys: Keys, max_inputs: int | None = None) -> None:
        self.orders = keys.orders
        self.group = config.group
        self.consumer = config.pair
        self.by_position = config.ack == "setid"
        self.block_ms = config.block_ms
        self.max_entry_bytes = config.max_entry_bytes
        self.max_inputs = max_inputs
        self.budget = ReadBudget(
            config.batch_size, config.read_budget_bytes, config.max_entry_bytes
        )
        self.committed = Checkpoint()
        self.unconfirmed: deque[Batch] = deque()
        self.inputs_done = 0
        """Inputs applied and committed since the start."""
        self.read_at: str | None = None
        """With reads by position: the last input entry read (None: from what was applied)."""
        self.backlog = False
        """The last read came back full: the next one is sent without BLOCK."""
        self.asked = 0
        """The count of the last read sent."""
        self.read_blocks = True
        """Whether the last read sent has BLOCK."""
        self.ahead: Entries | None = None
        """A read's entries received before the commit went out, not yet applied."""

    # -- reads -----------------------------------------------------------------------------------

    def room(self, taken: int = 0) -> int:
        """How many entries the next read may take: the read budget's count; ``max_inputs``
        bounds the total, counting ``taken`` (entries in hand) and the unconfirmed batches."""
        count = self.budget.count
        if self.max_inputs is not None:
            outstanding = sum(len(b.acks) for b in self.unconfirmed)
            count = min(count, self.max_inputs - self.inputs_done - outstanding - taken)
        return count

    def next_read(self, taken: int = 0) -> Command | None:
        """The read to send now, noted as sent (its count and whether it blocks), or None if
        ``max_inputs`` leaves no room. It blocks unless the last read came back full. With
        ``ack = "setid"`` it reads after the last entry read ahead, else after the last one
        applied."""
        count = self.room(taken)
        if count <= 0:
            return None
        self.asked, self.read_blocks = count, not self.backlog
        block: Command = ("BLOCK", self.block_ms) if self.read_blocks else ()
        if not self.by_position:
            return (
                "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count, *block,
                "STREAMS", self.orders, ">",
            )  # fmt: skip
        at = self.read_at
        if at is None:
            at = self.unconfirmed[-1].target.last_id if self.unconfirmed else self.committed.last_id
        return ("XREAD", "COUNT", count, *block, "STREAMS", self.orders, at)

    def received(self, reply: object) -> Entries:
        """A read's reply (raw RESP2: ``[[stream, entries]]``, or nil after a BLOCK timed out)
        as its entries; notes the backlog and the read position."""
        entries: Entries = reply[0][1] if reply else []  # type: ignore[index]
        self.backlog = len(entries) >= self.asked
        if entries:
            self.read_at = entries[-1][0].decode()
        return entries

    def read_ahead_first(self, reading: bool) -> bool:
        """Whether the read in flight (``reading``: there is one) is received before the next
        commit is sent: only a read without BLOCK, which the server answers at once (see
        :meth:`shard.daemon.Shard.step`)."""
        return reading and not self.read_blocks

    # -- batches ---------------------------------------------------------------------------------

    def apply(self, engine: Engine, entries: Entries) -> Batch:
        """Apply a read's entries on top of the last batch; the batch joins ``unconfirmed``."""
        last = self.unconfirmed[-1].target if self.unconfirmed else self.committed
        batch = build_batch(engine, entries, last, self.max_entry_bytes)
        self.budget.taken(batch.oversize)
        self.unconfirmed.append(batch)
        return batch

    @property
    def in_doubt(self) -> Batch:
        """The oldest unconfirmed batch: the one whose commit is sent, or in flight."""
        if not self.unconfirmed:
            raise ProtocolError("no batch is waiting for its commit")
        return self.unconfirmed[0]

    def own_commit(self, fenced: Fenced) -> bool:
        """Whether a fenced commit reply is this daemon's own commit, applied before its reply
        was lost and the command sent again: the checkpoint is where the batch takes it."""
        return fenced.why == "FENCED" and fenced.checkpoint.same_place(self.in_doubt.target)

    def confirmed(self, batch: Batch) -> None:
        """``batch``'s commit is confirmed: commits are confirmed in order."""
        if not self.unconfirmed or self.unconfirmed[0] is not batch:
            raise ProtocolError("a commit confirmed out of order")
        self.unconfirmed.popleft()
        self.committed = batch.target
        self.inputs_done += batch.inputs

    @property
    def pending_inputs(self) -> int:
        """Inputs applied in the unconfirmed batches."""
        return sum(b.inputs for b in self.unconfirmed)

    # -- after an error --------------------------------------------------------------------------

    def reset(self) -> None:
        """Both pipes were dropped with what was in flight: the next read starts from what was
        applied, with a count of one entry (what follows is not known)."""
        self.read_at = None
        self.budget.restart()
        self.ahead, self.backlog = None, False

    def resync(self, stored: Checkpoint | None) -> Resync:
        """:func:`resync` on this pipeline's state."""
        return resync(stored, self.committed, list(self.unconfirmed))

    def recovered(self, checkpoint: Checkpoint) -> None:
        """The engine was rebuilt at ``checkpoint``: nothing is in doubt."""
        self.committed = checkpoint
        self.unconfirmed.clear()
