"""Publish on schedule, time every input to its event, sample the shard once a second.

Per pair, two connections (RESP2, raw replies, no socket timeout so no per-reply timer):

- the **sender** writes the XADDs that are due (pre-packed before the timed phase, so the send
  loop only joins bytes) and never waits for a reply: the load is open loop;
- the **ID reader** reads the XADD replies on the sender's connection: the entry IDs, which
  are the ``input_id`` of each message's event;
- the **event reader** blocks on ``events:{P}`` and, for each event, records the time from the
  send of its input to the moment it was read, in the window of the second it completed.

An event read before its XADD reply is parked until the reply comes, so the two readers may run
in any order. One more connection samples the consumer group's lag and the server's CPU each
second; the shard's RSS and CPU come from ``/proc`` when it runs on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import resource
import sys
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import hiredis
import uvloop
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from shard.config import Keys
from shard.load.latency import Recorder
from shard.load.schedule import Schedule
from shard.server import describe
from shard.workload import Message, resting_orders, standard_mix

PRELOAD_CHUNK = 10_000
READ_COUNT = 10_000
BLOCK_MS = 100
clock = time.perf_counter


def pack(key: str, messages: Iterable[Message]) -> Iterator[bytes]:
    """Each message as a packed ``XADD key * field value ...`` (flat fields)."""
    for msg in messages:
        args = ["XADD", key, "*"]
        for name, value in msg.items():
            args += (name, str(value))
        yield hiredis.pack_command(cast(Any, tuple(args)))


@dataclass
class LoadSpec:
    pairs: list[str]
    schedule: Schedule
    url: str
    tls: dict[str, Any] = field(default_factory=dict)
    """redis-py's TLS arguments for ``url`` (:meth:`shard.config.Config.tls_options`)."""
    seed: int = 1
    preload: int = 0
    preload_levels: int = 1000
    id_prefix: str = ""
    key_prefix: str = ""
    drain_seconds: float = 30.0
    shard_pids: dict[str, int] = field(default_factory=dict)
    find_local_shards: bool = False  # sample the daemon named in the heartbeat, if it is here
    progress: TextIO | None = sys.stderr


class ProcStat:
    """RSS and CPU of a local process from /proc (Linux); None where that is not readable."""

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last: tuple[float, float] | None = None

    def rss_mb(self, field_name: str = "VmRSS") -> float | None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(field_name + ":"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def cpu_pct(self) -> float | None:
        """CPU use since the previous call, in % of one core."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                # Fields after the command name (which may hold spaces): utime is 14th, stime 15th.
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        busy = (int(fields[11]) + int(fields[12])) / self.TICK
        now = time.monotonic()
        last, self.last = self.last, (now, busy)
        if last is None or now <= last[0]:
            return None
        return 100 * (busy - last[1]) / (now - last[0])


class SelfCpu:
    """This process's CPU use between calls, in % of one core."""

    def __init__(self) -> None:
        self.last = self._read()

    @staticmethod
    def _read() -> tuple[float, float]:
        u = resource.getrusage(resource.RUSAGE_SELF)
        return time.monotonic(), u.ru_utime + u.ru_stime

    def pct(self) -> float:
        now = self._read()
        last, self.last = self.last, now
        return 100 * (now[1] - last[1]) / max(1e-9, now[0] - last[0])


async def _conn(client: Redis) -> Connection:
    return cast(Connection, await client.connection_pool.get_connection())  # type: ignore[no-untyped-call]


class PairLoad:
    """One pair's messages, sender and readers."""

    def __init__(self, run: LoadRun, pair: str, index: int) -> None:
        spec = run.spec
        self.run = run
        self.keys = Keys(pair, spec.key_prefix)
        seed = spec.seed + index
        self.commands = list(
            pack(
                self.keys.orders,
                standard_mix(spec.schedule.total, seed, prefix=f"{spec.id_prefix}o"),
            )
        )
        self.preload = list(
            pack(
                self.keys.orders,
                resting_orders(
                    spec.preload, seed, levels=spec.preload_levels, prefix=f"{spec.id_prefix}r"
                ),
            )
        )
        self.sent_at = array("d", bytes(8 * spec.schedule.total))
        self.pending: dict[bytes, int] = {}  # input_id -> message index, reply read first
        self.early: dict[bytes, float] = {}  # input_id -> time its event was read, event first
        self.sent = 0
        self.completed = 0
        self.events_from = b"0-0"
        self.trades_from = 0
        self.snapshot_generation: Any = None

    # -- before the timed phase -----------------------------------------------------------------

    async def do_preload(self, client: Redis) -> tuple[int, float]:
        """Publish the resting orders (closed loop, chunked) and wait until the shard has
        applied the last one; how many and how long it took."""
        if not self.preload:
            return 0, 0.0
        started = clock()
        conn = await _conn(client)
        last_id = b""
        try:
            for i in range(0, len(self.preload), PRELOAD_CHUNK):
                chunk = self.preload[i : i + PRELOAD_CHUNK]
                await conn.send_packed_command(chunk, check_health=False)
                for _ in chunk:
                    last_id = await conn.read_response()
        finally:
            await client.connection_pool.release(conn)
        await self.wait_applied(client, last_id)
        count = len(self.preload)
        self.preload = []
        return count, clock() - started

    async def wait_applied(self, client: Redis, input_id: bytes) -> None:
        """Wait until the newest event answers ``input_id`` or a later input."""
        target = _id_tuple(input_id)
        while True:
            newest: Any = await client.xrevrange(self.keys.events, count=1)
            if newest and _id_tuple(newest[0][1][b"input_id"]) >= target:
                return
            await asyncio.sleep(0.1)

    async def mark_start(self, client: Redis) -> None:
        newest: Any = await client.xrevrange(self.keys.events, count=1)
        self.events_from = newest[0][0] if newest else b"0-0"
        self.trades_from = await self.last_trade_id(client)

    async def last_trade_id(self, client: Redis) -> int:
        newest: Any = await client.xrevrange(self.keys.trades, count=1)
        return int(newest[0][1][b"trade_id"]) if newest else 0

    # -- the timed phase ------------------------------------------------------------------------

    async def send_loop(self, conn: Connection) -> None:
        run, schedule, commands, sent_at = (
            self.run,
            self.run.spec.schedule,
            self.commands,
            self.sent_at,
        )
        total = schedule.total
        i = 0
        while i < total:
            now = clock() - run.t0
            due = schedule.due_by(now)
            if due <= i:
                # Event-loop timers tick in whole milliseconds (shorter sleeps spin under
                # uvloop): what falls due within a tick goes out together at its end.
                await asyncio.sleep(min(0.01, max(0.001, schedule.due_at(i) - now)))
                continue
            behind = now - schedule.due_at(i)
            # Stamped before the write: a send that blocks (the server not reading) counts. The
            # stamps are stored before it too: while it blocks, the reader tasks may already see
            # these messages' replies and events (an unset stamp read as 0 was an hour).
            stamp = clock()
            sent_at[i:due] = array("d", [stamp]) * (due - i)
            await conn.send_packed_command(commands[i:due], check_health=False)
            commands[i:due] = [b""] * (due - i)  # sent: let the memory go
            run.note_sent(stamp, due - i, behind)
            self.sent = i = due

    def _done(self, k: int, seen: float) -> None:
        """Message ``k``'s event was read at ``seen``."""
        self.run.complete(seen, self.sent_at[k], k)
        self.completed += 1

    async def id_loop(self, conn: Connection) -> None:
        pending, early = self.pending, self.early
        for k in range(self.run.spec.schedule.total):
            entry_id = await conn.read_response()
            if not isinstance(entry_id, bytes):
                raise RuntimeError(f"XADD to {self.keys.orders} failed: {entry_id!r}")
            seen = early.pop(entry_id, None)
            if seen is None:
                pending[entry_id] = k
            else:
                self._done(k, seen)

    async def event_loop(self, conn: Connection) -> None:
        run, pending, early = self.run, self.pending, self.early
        total = run.spec.schedule.total
        last = self.events_from
        key = self.keys.events
        while self.completed < total and not run.timed_out():
            await conn.send_command(
                "XREAD", "COUNT", READ_COUNT, "BLOCK", BLOCK_MS, "STREAMS", key, last
            )
            reply = await conn.read_response()
            now = clock()
            if not reply:
                continue
            entries = reply[0][1]
            for _entry_id, fields in entries:
                input_id = fields[1]
                k = pending.pop(input_id, None)
                if k is None:
                    early[input_id] = now
                else:
                    self._done(k, now)
            last = entries[-1][0]


def _id_tuple(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


class LoadRun:
    """The whole run: every pair's load, the recorder and the once-a-second sampler."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.recorder = Recorder()
        # The same completions timed from when the schedule said to send (coordinated omission:
        # if the sender itself falls behind, only this one shows it).
        self.from_schedule = Recorder()
        self.t0 = 0.0
        self.end = 0.0
        self.send_behind: dict[int, float] = {}  # second -> worst lateness of a send, seconds
        self.pairs: list[PairLoad] = []
        self.preload: dict[str, Any] = {}
        self.trades = 0
        self.server_version = ""
        self.shard_stats = {p: ProcStat(pid) for p, pid in spec.shard_pids.items()}
        self.peak_rss_mb: dict[str, float] = {}
        self.server_forks = 0

    def note_sent(self, stamp: float, count: int, behind: float) -> None:
        second = int(stamp - self.t0)
        self.recorder.window(second).sent += count
        if behind > self.send_behind.get(second, 0.0):
            self.send_behind[second] = behind

    def complete(self, stamp: float, sent: float, index: int) -> None:
        """Input ``index`` (of its pair's schedule), sent at ``sent``, completed at ``stamp``:
        recorded from its send and, to expose a lagging sender, from its due time."""
        second = int(stamp - self.t0)
        self.recorder.record(second, int((stamp - sent) * 1e6))
        due = self.t0 + self.spec.schedule.due_at(index)
        self.from_schedule.record(second, int((stamp - due) * 1e6))

    def timed_out(self) -> bool:
        return self.end > 0 and clock() > self.end

    @property
    def completed(self) -> int:
        return sum(p.completed for p in self.pairs)

    @property
    def sent(self) -> int:
        return sum(p.sent for p in self.pairs)

    async def run(self) -> None:
        spec = self.spec
        client = Redis.from_url(spec.url, protocol=2, socket_keepalive=True, **spec.tls)
        try:
            self.server_version = describe(await client.info("server"), await client.info("memory"))
            self._say(f"generating {spec.schedule.total:,} messages per pair ...")
            started = clock()
            self.pairs = [PairLoad(self, pair, i) for i, pair in enumerate(spec.pairs)]
            self._say(f"generated in {clock() - started:.1f} s")
            gc.collect()
            gc.freeze()  # the pre-packed messages never die: keep them out of collections
            await self._await_shards(client)
            if spec.preload:
                self._say(f"preloading {spec.preload:,} resting orders per pair ...")
                done = await asyncio.gather(*(p.do_preload(client) for p in self.pairs))
                seconds = max(s for _, s in done)
                self.preload = {
                    "orders_per_pair": spec.preload,
                    "seconds": round(seconds, 2),
                    "rate": round(sum(n for n, _ in done) / seconds) if seconds else 0,
                }
                self._say(
                    f"preloaded in {seconds:.1f} s ({self.preload['rate']:,} msgs/s, "
                    "publish and apply)"
                )
            for p in self.pairs:
                await p.mark_start(client)
            await self._timed(client)
            for p in self.pairs:
                self.trades += await p.last_trade_id(client) - p.trades_from
            for pair, stat in self.shard_stats.items():
                peak = stat.rss_mb("VmHWM")
                if peak is not None:
                    self.peak_rss_mb[pair] = round(peak, 1)
        finally:
            await client.aclose()

    async def _await_shards(self, client: Redis, timeout: float = 60.0) -> None:
        """Wait for every pair's heartbeat, so start-up is not counted as latency; find the
        daemons' processes if they run here."""
        spec = self.spec
        deadline = clock() + timeout
        for p in self.pairs:
            while not await client.exists(p.keys.health):
                if clock() > deadline:
                    raise RuntimeError(
                        f"no shard answers for {p.keys.pair}: no heartbeat at {p.keys.health}; "
                        "start one (`shard run --pair ...` or `shard up`) or use --local"
                    )
                await asyncio.sleep(0.1)
            if p.keys.pair not in self.shard_stats and spec.find_local_shards:
                heartbeat: Any = await client.get(p.keys.health)
                pid = _local_shard_pid(heartbeat)
                if pid is not None:
                    self.shard_stats[p.keys.pair] = ProcStat(pid)

    async def _timed(self, client: Redis) -> None:
        spec = self.spec
        io = Redis.from_url(
            spec.url, protocol=2, socket_keepalive=True, socket_timeout=None, **spec.tls
        )
        conns = [[await _conn(io) for _ in range(2)] for _ in self.pairs]
        cpu = SelfCpu()
        server_cpu, _, self.server_forks = await _server_info(client)
        for p in self.pairs:
            p.snapshot_generation = await client.hget(p.keys.snapshot, "generation")
        self.t0 = clock()
        tasks = []
        for p, (xadd, events) in zip(self.pairs, conns, strict=True):
            # The XADD replies come back on the sender's connection, read by the ID reader.
            tasks += [p.send_loop(xadd), p.id_loop(xadd), p.event_loop(events)]
        work = asyncio.gather(*tasks)
        try:
            second = 0
            while not work.done():
                tick = self.t0 + second + 1
                await asyncio.wait([work], timeout=max(0.0, tick - clock()))
                if work.done():
                    break
                if not self.end and all(p.sent == spec.schedule.total for p in self.pairs):
                    self.end = clock() + spec.drain_seconds
                server_cpu = await self._sample(client, second, cpu, server_cpu)
                second += 1
            await work
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
            for conn in (c for row in conns for c in row):
                await conn.disconnect()
            await io.aclose()
        self.elapsed = clock() - self.t0

    async def _sample(
        self, client: Redis, second: int, cpu: SelfCpu, server_cpu: tuple[float, float]
    ) -> tuple[float, float]:
        w = self.recorder.window(second)
        schedule = self.spec.schedule
        w.offered = (schedule.due_by(second + 1 - 1e-9) - schedule.due_by(second - 1e-9)) * len(
            self.pairs
        )
        s = w.samples
        s["in_flight"] = self.sent - self.completed
        s["send_behind_ms"] = round(self.send_behind.get(second, 0.0) * 1000, 2)
        lag = 0
        for p in self.pairs:
            for group in await client.xinfo_groups(p.keys.orders):
                lag += int(group.get("lag") or 0)
        s["lag"] = lag
        # What else stalls: snapshots the shards stored, forks the server made (AOF rewrites).
        snapshots = 0
        for p in self.pairs:
            generation: Any = await client.hget(p.keys.snapshot, "generation")
            if generation != p.snapshot_generation:
                snapshots += p.snapshot_generation is not None
                p.snapshot_generation = generation
        s["shard_snapshots"] = snapshots
        now_cpu, server_rss, forks = await _server_info(client)
        s["server_rss_mb"] = round(server_rss, 1)
        s["server_forks"] = forks - self.server_forks
        self.server_forks = forks
        s["server_cpu_pct"] = round(
            100 * (now_cpu[1] - server_cpu[1]) / max(1e-9, now_cpu[0] - server_cpu[0]), 1
        )
        s["loadgen_cpu_pct"] = round(cpu.pct(), 1)
        rss = [r for st in self.shard_stats.values() if (r := st.rss_mb()) is not None]
        if rss:
            s["shard_rss_mb"] = round(sum(rss), 1)
        shard_cpu = [c for st in self.shard_stats.values() if (c := st.cpu_pct()) is not None]
        if shard_cpu:
            s["shard_cpu_pct"] = round(sum(shard_cpu), 1)
        self._progress(w)
        return now_cpu

    def _progress(self, w: Any) -> None:
        if self.spec.progress is None:
            return
        total = self.recorder.total(before=w.second + 1)
        q = w.hist
        s = w.samples
        line = (
            f"[{w.second + 1:4d}s] offered {w.offered:>7,}/s sent {w.sent:>7,}/s "
            f"done {w.completed:>7,}/s in-flight {s['in_flight']:,} lag {s['lag']:,} | "
            f"p50 {q.get_value_at_percentile(50) / 1000:.2f} p99 "
            f"{q.get_value_at_percentile(99) / 1000:.2f} ms (run p99 "
            f"{total.get_value_at_percentile(99) / 1000:.2f})"
        )
        if "shard_rss_mb" in s:
            line += f" | shard {s['shard_rss_mb']:.0f} MB {s.get('shard_cpu_pct', 0):.0f}% cpu"
        self._say(line)

    def _say(self, text: str) -> None:
        if self.spec.progress is not None:
            print(text, file=self.spec.progress, flush=True)


async def _server_info(client: Redis) -> tuple[tuple[float, float], float, int]:
    """((now, the server's CPU seconds so far), its RSS in MB, its forks so far) from INFO."""
    info = await client.info()
    cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    forks = int(info.get("total_forks", 0))
    return (time.monotonic(), cpu), int(info["used_memory_rss"]) / 2**20, forks


def _local_shard_pid(heartbeat: bytes | None) -> int | None:
    """The heartbeat's pid if that process runs here and is the pair's ``shard`` daemon."""
    if not heartbeat:
        return None
    try:
        pid = int(json.loads(heartbeat)["pid"])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # The pid came from the pair's own heartbeat; a process here with that pid that is a
    # `shard run` is its daemon (unless the daemon runs elsewhere and the pid is a coincidence).
    return pid if any(b"shard" in a for a in argv) and b"run" in argv else None


def run_load(spec: LoadSpec) -> LoadRun:
    """Run the load on uvloop (the default loop's overhead doubles the generator's CPU)."""
    load = LoadRun(spec)
    uvloop.run(load.run())
    return load
