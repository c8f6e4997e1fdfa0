"""Snapshots written by a forked process, so a large book does not stall the shard.

At a batch boundary the daemon forks. The child holds a copy-on-write image of the engine at the
committed checkpoint: it encodes the snapshot, writes the chunks of a new generation over its
own connection and exits; the parent goes on matching. When the child has exited, the parent
points the header at the new generation and trims the inputs below it. Costs to the parent: the
fork (a few ms for a 200 MB process: page tables only) and one ``waitpid`` per batch. Memory:
the child copies the pages it touches, up to the size of the book, for the ~0.5 s it runs.

Rules:

- one snapshot at a time;
- the generation is the checkpoint's event count, so two writers of one generation (a child
  orphaned by a killed daemon and its successor's) write the same bytes;
- any Redis error, fence or recovery in the parent abandons the child (it is killed and its
  generation is never published): the checkpoint it was taken at may no longer hold;
- a child still running after :data:`TIMEOUT` is killed and reported as failed;
- without ``os.fork`` (or with ``snapshot_in_background = false``) the same steps run inline.

A child killed half-way leaves the chunks it wrote; nothing points at them.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import time
import warnings
from dataclasses import dataclass
from typing import NoReturn

from redis import Redis as SyncRedis

from shard.config import Config, Keys
from shard.engine import Engine
from shard.store import Checkpoint, SnapshotMeta, write_snapshot_chunks


def _write(engine: Engine, config: Config, keys: Keys, generation: int) -> dict[str, int]:
    data = engine.snapshot()
    client = SyncRedis.from_url(
        config.redis_url,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.connect_timeout,
        client_name=f"shard:{config.pair}:snapshot",
    )
    try:
        chunks = write_snapshot_chunks(client, keys, generation, data, config.snapshot_chunk_bytes)
    finally:
        client.close()
    return {"chunks": chunks, "bytes": len(data)}


TIMEOUT = 300.0
"""A snapshot process running longer than this (s) is killed; the next snapshot starts over."""


def _child(
    engine: Engine, config: Config, keys: Keys, generation: int, read_end: int, write_end: int
) -> NoReturn:
    """The forked process: no event loop, no signal handlers of the parent's, no return. Its
    result, or the error that stopped it, goes to the parent through the pipe."""
    report: dict[str, object] = {"error": "did not finish"}
    code = 1
    try:
        os.close(read_end)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        gc.disable()  # the collector would touch (and copy) every page
        os.nice(19)  # matching comes first: on a busy machine the snapshot takes longer instead
        report = dict(_write(engine, config, keys, generation))
        code = 0
    except BaseException as exc:
        report = {"error": repr(exc)[:500]}
    finally:
        with contextlib.suppress(BaseException):
            os.write(write_end, json.dumps(report).encode())
        os._exit(code)


@dataclass
class Running:
    pid: int
    pipe: int
    checkpoint: Checkpoint
    generation: int
    started: float


class Snapshotter:
    """Takes one snapshot at a time of a daemon's engine; see the module's rules."""

    def __init__(self, config: Config, keys: Keys) -> None:
        self.config = config
        self.keys = keys
        self.running: Running | None = None
        self.last_seconds = 0.0  # how long the last finished snapshot took
        self.background = config.snapshot_in_background and hasattr(os, "fork")

    def start(self, engine: Engine, checkpoint: Checkpoint) -> SnapshotMeta | None:
        """Begin a snapshot of ``engine`` at ``checkpoint``. Inline, the meta of the finished
        snapshot; in the background, None (see :meth:`poll`)."""
        assert self.running is None, "one snapshot at a time"
        generation = checkpoint.events
        started = time.perf_counter()
        if not self.background:
            result = _write(engine, self.config, self.keys, generation)
            self.last_seconds = time.perf_counter() - started
            return self._meta(checkpoint, generation, result)
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process with threads (the metrics server's):
            # the child never takes a lock those threads may hold (no logging, no imports).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            _child(engine, self.config, self.keys, generation, read_end, write_end)
        os.close(write_end)
        self.running = Running(pid, read_end, checkpoint, generation, started)
        return None

    def poll(self) -> tuple[SnapshotMeta | None, str | None]:
        """If the child has exited: ``(meta, None)`` on success, ``(None, why)`` on failure;
        ``(None, None)`` while it runs or when there is none. O(1): one ``waitpid``."""
        running = self.running
        if running is None:
            return None, None
        pid, status = os.waitpid(running.pid, os.WNOHANG)
        if pid == 0:
            if self.seconds() > TIMEOUT:  # stuck (a lock inherited mid-use, a dead server)
                self.abandon()
                return None, f"snapshot process still running after {TIMEOUT:.0f} s; killed"
            return None, None
        self.running = None
        self.last_seconds = time.perf_counter() - running.started
        with os.fdopen(running.pipe, "rb") as pipe:
            report = pipe.read()
        code = os.waitstatus_to_exitcode(status)
        result = json.loads(report) if report else {}
        if code != 0 or "error" in result or not result:
            return None, f"snapshot process exited with {code}: {result.get('error', 'no report')}"
        return self._meta(running.checkpoint, running.generation, result), None

    def abandon(self) -> None:
        """Kill a running child; its generation is never published."""
        running, self.running = self.running, None
        if running is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(running.pid, signal.SIGKILL)
        os.waitpid(running.pid, 0)
        os.close(running.pipe)

    def seconds(self) -> float:
        return time.perf_counter() - self.running.started if self.running else 0.0

    @staticmethod
    def _meta(cp: Checkpoint, generation: int, result: dict[str, int]) -> SnapshotMeta:
        return SnapshotMeta(
            cp.last_id,
            generation,
            result["chunks"],
            result["bytes"],
            cp.trades,
            cp.events,
            cp.digest,
        )
