"""``shard replay``: run JSON-lines messages through the engine offline, no Redis.

Prints, as JSON lines, what the daemon would publish for the same input: every trade, and with
``events=True`` also every event, in commit order (an input's trades, then its order events, then
its own event). A line
with ``trade_id`` is a trade, a line with ``status`` an event. Stream IDs do not exist offline,
so ``input_id`` is left out and a message needs its own ``timestamp``. Blank lines are skipped;
any other line that cannot be read gets a ``rejected`` event and the run goes on.

Memory grows with the book, not with the input: lines are read, applied and written in chunks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

import msgspec

from shard.decode import decode_json
from shard.engine import Engine
from shard.messages import Event, Trade

CHUNK_LINES = 4096


def replay(
    lines: Iterable[bytes],
    out: BinaryIO,
    *,
    events: bool = False,
    engine: Engine | None = None,
    chunk_lines: int = CHUNK_LINES,
) -> Engine:
    """Apply every line to ``engine`` (a new one by default), write outputs to ``out``."""
    engine = engine or Engine()
    apply = engine.apply
    encode_lines = msgspec.json.Encoder().encode_lines
    write = out.write
    pending: list[Trade | Event] = []
    trades: list[Trade] = pending  # type: ignore[assignment]  # events interleave when asked
    append = pending.append
    side = engine.order_events
    count = 0
    for line in lines:
        if line.isspace() or not line:
            continue
        event = apply(decode_json(line), None, trades)
        if side:
            if events:
                pending += side
            side.clear()
        if events:
            append(event)
        count += 1
        if count >= chunk_lines:
            write(encode_lines(pending))
            pending.clear()
            count = 0
    if pending:
        write(encode_lines(pending))
    out.flush()
    return engine
