"""The run: generate every pair's messages, wait for the shards, preload, then the timed phase,
with the once-a-second tick that samples and prints the live line.

One more connection than the pairs' own (:mod:`shard.load.pair`) does everything outside the
timed path: the heartbeats, the preload's wait, and the samples (:mod:`shard.load.probes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import uvloop
from redis.asyncio import Redis

from shard.cluster import node_url
from shard.config import Keys
from shard.load.follow import Follower, outage
from shard.load.latency import Recorder, Window
from shard.load.nodes import Route, open_route
from shard.load.pair import PairLoad, clock
from shard.load.probes import ProcStat, Sampler, describe_server, local_shard_pid
from shard.load.schedule import Schedule


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
        self.depth: dict[str, int] = {"entries": 0, "payload_bytes": 0, "sampled": 0}
        self.server_version = ""
        self.sampler = Sampler(
            [Keys(pair, spec.key_prefix) for pair in spec.pairs],
            {p: ProcStat(pid) for p, pid in spec.shard_pids.items()},
        )
        self.peak_rss_mb: dict[str, float] = {}
        self.elapsed = 0.0
        self.followers: list[Follower] = []
        self.skipped_samples = 0  # probes an outage interrupted

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

    def outages(self) -> dict[str, int]:
        """What following the owners cost the run: connections given again after an outage,
        owner changes followed (summed over pairs), and the inputs in doubt then (found in the
        stream, or sent again)."""
        return {
            "reconnects": sum(f.reconnects for f in self.followers),
            "owner_changes": sum(f.owner_changes for f in self.followers),
            "in_doubt_landed": sum(p.landed for p in self.pairs),
            "in_doubt_resent": sum(p.resent for p in self.pairs),
        }

    async def run(self) -> None:
        spec = self.spec
        route = await open_route(spec.url, spec.pairs, spec.key_prefix, self._make)
        try:
            client = next(iter(route.nodes.values()))
            self.server_version = describe_server(
                await client.info("server"), await client.info("memory")
            )
            if route.cluster:
                self.server_version += f"; a cluster, the pairs' masters: {len(route.nodes)}"
            self._say(f"generating {spec.schedule.total:,} messages per pair ...")
            started = clock()
            self.pairs = [PairLoad(self, pair, i) for i, pair in enumerate(spec.pairs)]
            self._say(f"generated in {clock() - started:.1f} s")
            gc.collect()
            gc.freeze()  # the pre-packed messages never die: keep them out of collections
            await self._await_shards(route)
            if spec.preload:
                self._say(f"preloading {spec.preload:,} resting orders per pair ...")
                done = await asyncio.gather(
                    *(p.do_preload(route.of(p.keys.pair)) for p in self.pairs)
                )
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
                await p.mark_start(route.of(p.keys.pair))
            await self._timed(route)
            await self._follow(route)
            for p in self.pairs:
                client = route.of(p.keys.pair)
                self.trades += await p.last_trade_id(client) - p.trades_from
                for name, n in zip(self.depth, await p.market_data(client), strict=True):
                    self.depth[name] += n
            self.peak_rss_mb = self.sampler.peak_rss_mb()
        finally:
            await route.aclose()

    async def _await_shards(self, route: Route, timeout: float = 60.0) -> None:
        """Wait for every pair's heartbeat, so start-up is not counted as latency; find the
        daemons' processes if they run here."""
        spec = self.spec
        deadline = clock() + timeout
        for p in self.pairs:
            client = route.of(p.keys.pair)
            while not await client.exists(p.keys.health):
                if clock() > deadline:
                    raise RuntimeError(
                        f"no shard answers for {p.keys.pair}: no heartbeat at {p.keys.health}; "
                        "start one (`shard run --pair ...` or `shard up`) or use --local"
                    )
                await asyncio.sleep(0.1)
            if p.keys.pair not in self.sampler.shards and spec.find_local_shards:
                heartbeat: Any = await client.get(p.keys.health)
                pid = local_shard_pid(heartbeat)
                if pid is not None:
                    self.sampler.shards[p.keys.pair] = ProcStat(pid)

    def _make(self, url: str) -> Redis:
        return Redis.from_url(url, protocol=2, socket_keepalive=True, **self.spec.tls)

    async def _timed(self, route: Route) -> None:
        spec = self.spec
        # The raw connections (no socket timeout): on each pair's own server (its slot's owner
        # on a cluster), which each pair's follower finds again after a failover.
        self.followers = [
            Follower(
                spec.url,
                p.keys.pair,
                spec.key_prefix,
                route.owner[p.keys.pair],
                route.seeds,
                lambda url: Redis.from_url(
                    url, protocol=2, socket_keepalive=True, socket_timeout=None, **spec.tls
                ),
                cluster=route.cluster,
            )
            for p in self.pairs
        ]
        await self.sampler.begin(route)
        self.t0 = clock()
        tasks = []
        for p, follower in zip(self.pairs, self.followers, strict=True):
            tasks += [p.send_side(follower), p.event_side(follower)]
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
                await self._sample(route, second)
                second += 1
            await work
        finally:
            if not work.done():
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
            for follower in self.followers:
                await follower.aclose()
        self.elapsed = clock() - self.t0

    async def _follow(self, route: Route) -> None:
        """Point each pair's probe client at the owner its follower found, and measure the
        server figures afresh from the new set of owners (a no-op on one server and while no
        owner changed)."""
        moved = False
        for p, follower in zip(self.pairs, self.followers, strict=True):
            if route.owner[p.keys.pair] != follower.node:
                url = node_url(self.spec.url, follower.node)
                await route.move(p.keys.pair, follower.node, functools.partial(self._make, url))
                moved = True
        if moved:
            await self.sampler.rebase(route)

    async def _sample(self, route: Route, second: int) -> None:
        """Second ``second``'s offered count, backlog and probes; then its live line."""
        w = self.recorder.window(second)
        schedule = self.spec.schedule
        w.offered = (schedule.due_by(second + 1 - 1e-9) - schedule.due_by(second - 1e-9)) * len(
            self.pairs
        )
        w.samples["in_flight"] = self.sent - self.completed
        w.samples["send_behind_ms"] = round(self.send_behind.get(second, 0.0) * 1000, 2)
        try:
            await self._follow(route)
            w.samples.update(await self.sampler.sample(route))
        except Exception as exc:
            if not (route.cluster and outage(exc)):
                raise
            self.skipped_samples += 1  # the owner moved under the probe: next second's will do
        self._progress(w)

    def _progress(self, w: Window) -> None:
        if self.spec.progress is None:
            return
        total = self.recorder.total(before=w.second + 1)
        q = w.hist
        s = w.samples
        line = (
            f"[{w.second + 1:4d}s] offered {w.offered:>7,}/s sent {w.sent:>7,}/s "
            f"done {w.completed:>7,}/s in-flight {s['in_flight']:,} lag {s.get('lag', 0):,} | "
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


def run_load(spec: LoadSpec) -> LoadRun:
    """Run the load on uvloop (the default loop costs the generator far more CPU)."""
    load = LoadRun(spec)
    uvloop.run(load.run())
    return load
