"""The harness floor: a stand-in for ``shard run`` that answers each input and does nothing else.

``shard load --local --floor`` runs this in place of the daemons, so the same schedule, server
and report show what the load generator, the server and the machine cost on their own. The
shard's own figures are worth reading against it: what the floor already spends is not the
shard's to save.

For each entry of ``orders:{P}`` (from the newest one at start), it XADDs one entry
``input_id <id> status relayed`` to ``events:{P}``: no decoding, no matching, no checkpoint, no
atomic commit, no trades. It is not a shard and keeps none of the contract's promises.

One blocking connection; each round trip writes the previous read's XADDs, the heartbeat when
due, and the next ``XREAD ... BLOCK`` together, then reads their replies in order. SIGTERM or
SIGINT stop it after the read in hand (at most ``BLOCK_MS``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from typing import Any, cast

import hiredis
import redis

from shard.cluster import cluster_enabled, node_of_url, node_url
from shard.config import Config, ConfigError, Keys, load
from shard.load.nodes import owners

BLOCK_MS = 200
COUNT = 1000
HEARTBEAT_SECONDS = 1.0


def _pack(*args: Any) -> bytes:
    packed: bytes = hiredis.pack_command(cast(Any, args))
    return packed


def event_commands(events_key: str, entries: list[Any]) -> list[bytes]:
    """One packed ``XADD events * input_id <id> status relayed`` per input entry."""
    return [
        _pack(b"XADD", events_key, b"*", b"input_id", entry_id, b"status", b"relayed")
        for entry_id, _ in entries
    ]


def owner_client(config: Config) -> redis.Redis:
    """A client on the server of the pair's keys: the URL's, or on a cluster the master that
    owns the pair's slot (asked once, ``CLUSTER SLOTS``), since the relay's raw connection
    must be there."""
    client = redis.Redis.from_url(config.redis_url, protocol=2, **config.tls_options())
    if config.cluster == "no" or not cluster_enabled(client.info("cluster")):
        return client
    asked = node_of_url(config.redis_url)
    reply = client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
    client.close()
    owner = owners(reply, asked, [config.pair], config.key_prefix)[config.pair]
    url = node_url(config.redis_url, owner)
    return redis.Redis.from_url(url, protocol=2, **config.tls_options())


def relay(config: Config, keys: Keys, stop: list[bool]) -> int:
    """Answer inputs until ``stop[0]`` is set; how many were answered."""
    client = owner_client(config)
    conn = client.connection_pool.get_connection()
    try:
        newest = client.xrevrange(keys.orders, count=1)
        last: Any = newest[0][0] if newest else b"0-0"
        heartbeat = json.dumps({"pid": os.getpid(), "relay": True})
        answered = 0
        pending: list[bytes] = []
        beat_at = 0.0
        while not stop[0]:
            out = pending
            now = time.monotonic()
            beat = now - beat_at >= HEARTBEAT_SECONDS
            if beat:
                out = [*out, _pack("SET", keys.health, heartbeat, "EX", "15")]
                beat_at = now
            read = _pack("XREAD", "COUNT", COUNT, "BLOCK", BLOCK_MS, "STREAMS", keys.orders, last)
            conn.send_packed_command([*out, read], check_health=False)  # type: ignore[no-untyped-call]
            for _ in range(len(out)):
                conn.read_response()  # XADD IDs and OK; an error reply raises
            answered += len(pending)
            reply = conn.read_response()
            entries = reply[0][1] if reply else []
            pending = event_commands(keys.events, entries)
            if entries:
                last = entries[-1][0]
        if pending:
            conn.send_packed_command(pending, check_health=False)  # type: ignore[no-untyped-call]
            for _ in pending:
                conn.read_response()
            answered += len(pending)
        client.delete(keys.health)
        return answered
    finally:
        client.connection_pool.release(conn)
        client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shard.load.relay", description=__doc__)
    p.add_argument("--pair", required=True)
    p.add_argument("--redis-url")
    args = p.parse_args(argv)
    # The URL and key prefix come from the same file, environment and flags as `shard run`'s.
    try:
        config = load(None, pair=args.pair, redis_url=args.redis_url)
    except ConfigError as exc:
        raise SystemExit(f"shard.load.relay: {exc}") from None
    stop = [False]

    def on_signal(*_: object) -> None:
        stop[0] = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    relay(config, Keys(config.pair, config.key_prefix), stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
