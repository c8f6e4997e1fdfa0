"""Producer and consumer commands: ``shard publish`` and ``shard trades``.

``publish`` sends JSON lines (the seed's format) to ``orders:{P}``, each line as the entry's
``data`` field, byte for byte, so the shard sees exactly what the file holds (a bad line gets its
``rejected`` event from the shard, as any producer's would). A single message can be given with
flags instead; it is sent as flat fields. Each entry ID is printed, one per line: it is the
``input_id`` of that message's event and trades.

``trades`` prints ``trades:{P}`` as JSON lines (stream field names, integers as JSON numbers).
Plain reads (XRANGE, then XREAD with ``--follow``) leave no trace in Redis; with ``--group`` it is
a proper consumer: its own consumer group (created at the stream's start if missing), XREADGROUP,
and XACK after each entry is printed, so a restarted consumer continues where it stopped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, TextIO, cast

import msgspec
import redis

from shard.config import Config, Keys
from shard.transport import sync_client
from shard.wire import trade_from_fields

PUBLISH_CHUNK = 1000
_encode = msgspec.json.Encoder().encode


def publish_lines(client: redis.Redis, keys: Keys, lines: Iterable[bytes], out: TextIO) -> int:
    """XADD every non-blank line as a ``data`` field, pipelined; print each entry ID."""
    count = 0
    pipe = client.pipeline(transaction=False)
    pending = 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        pipe.xadd(keys.orders, {"data": line})
        pending += 1
        if pending == PUBLISH_CHUNK:
            count += _flush(pipe, out)
            pending = 0
    if pending:
        count += _flush(pipe, out)
    return count


def _flush(pipe: Any, out: TextIO) -> int:
    ids = pipe.execute()
    out.write("".join(i.decode() + "\n" for i in ids))
    out.flush()
    return len(ids)


def publish_fields(client: redis.Redis, keys: Keys, fields: dict[str, str], out: TextIO) -> str:
    """XADD one message as flat fields; print and return its entry ID."""
    entry_id = cast(bytes, client.xadd(keys.orders, fields)).decode()  # type: ignore[arg-type]
    out.write(entry_id + "\n")
    return entry_id


def trade_lines(entries: Iterable[tuple[bytes, dict[bytes, bytes]]]) -> Iterator[bytes]:
    for _, fields in entries:
        yield _encode(trade_from_fields(fields)) + b"\n"


def print_trades(
    client: Any,  # redis.Redis over RESP2: replies are lists of (id, {field: value}) pairs
    keys: Keys,
    out: BinaryIO,
    *,
    follow: bool,
    group: str | None,
    consumer: str,
    block_ms: int = 1000,
    should_stop: Any = lambda: False,
) -> int:
    """Print the pair's trades; return how many. ``should_stop`` ends ``--follow``."""
    count = 0
    if group is None:
        last = "-"
        while True:
            start = last if last == "-" else f"({last}"
            batch = client.xrange(keys.trades, min=start, count=1000)
            if batch:
                out.write(b"".join(trade_lines(batch)))
                out.flush()
                count += len(batch)
                last = batch[-1][0].decode()
                continue
            if not follow or should_stop():
                return count
            reply = client.xread(
                {keys.trades: "0-0" if last == "-" else last}, block=block_ms, count=1
            )
            if not reply:
                continue
    try:
        client.xgroup_create(keys.trades, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    pending_first = True  # entries delivered to this consumer earlier but never acknowledged
    while True:
        reply = client.xreadgroup(
            group,
            consumer,
            {keys.trades: "0" if pending_first else ">"},
            count=1000,
            block=block_ms if follow and not pending_first else None,
        )
        entries = reply[0][1] if reply else []
        if pending_first and not entries:
            pending_first = False
            continue
        for entry_id, fields in entries:
            out.write(next(trade_lines([(entry_id, fields)])))
            out.flush()
            client.xack(keys.trades, group, entry_id)
            count += 1
        if not entries and (not follow or should_stop()):
            return count


def run_publish(config: Config, keys: Keys, source: str, fields: dict[str, str] | None) -> int:
    client = sync_client(config)
    try:
        if fields:
            publish_fields(client, keys, fields, sys.stdout)
            return 1
        if source == "-":
            return publish_lines(client, keys, sys.stdin.buffer, sys.stdout)
        with open(source, "rb") as f:
            return publish_lines(client, keys, f, sys.stdout)
    finally:
        client.close()


def message_from_flags(values: dict[str, Any]) -> dict[str, str]:
    """The flat fields of a message given as ``--type``/``--order-id``/... flags."""
    return {k: str(v) for k, v in values.items() if v is not None}
