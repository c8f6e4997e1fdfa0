"""Where a pair's published outputs stand, and where its snapshot stands: plain values, no I/O.

A stream entry ID is compared as a (milliseconds, sequence) pair, never as text.
"""

from __future__ import annotations

from typing import Final

import msgspec

StreamId = tuple[int, int]
ZERO_ID: Final = "0-0"


def parse_id(entry_id: str) -> StreamId:
    """A stream entry ID as a comparable (milliseconds, sequence) pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Checkpoint(msgspec.Struct, frozen=True):
    """Where the published outputs stand: after input ``last_id``, ``trades`` in all and
    ``events``, the inputs' own events in all (one per input: order events are not counted),
    the engine's state ``digest`` there, the market data's ``seq`` and the trading terms."""

    last_id: str = ZERO_ID
    trades: int = 0
    events: int = 0
    digest: str = ""
    seq: int = 0
    """The ``seq`` of the last ``depth:{P}`` entry published (0: none yet)."""
    terms: str = ""
    """The trading terms the inputs up to here were applied under (:mod:`shard.terms`; empty:
    recorded before terms were, which reads as the defaults)."""

    def same_place(self, other: Checkpoint) -> bool:
        """The same input, trade and event counts (the digest aside: a fenced reply has none)."""
        return (self.last_id, self.trades, self.events) == (
            other.last_id,
            other.trades,
            other.events,
        )


class SnapshotMeta(msgspec.Struct, frozen=True):
    """A stored snapshot's header: the last input it covers, its generation (the checkpoint's
    event count there), how its bytes are chunked, and the counts and digest it was taken at."""

    input_id: str
    generation: int
    chunks: int
    bytes: int
    trades: int
    events: int
    digest: str
