"""What a load run and the benchmarks measure besides latency: the shards' processes, this
process and the server.

- :class:`ProcStat`: a local process's RSS and CPU from ``/proc`` (Linux);
- :class:`SelfCpu`: this process's CPU, from ``getrusage``;
- :func:`describe_server`, :func:`main_thread_cpu`: the server's name, version and allocator,
  and its main thread's CPU, from ``INFO`` (the benchmarks print and divide them);
- :class:`Sampler`: the once-a-second figures of a run, read from the server and ``/proc``.

Each sample costs a few round trips per pair and a few small reads of ``/proc``; nothing here
touches the timed path. Needs no package of the load extra, so the benchmarks can use it alone.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from shard.config import Keys

if TYPE_CHECKING:
    from shard.load.nodes import Route


def describe_server(server: Mapping[str, Any], memory: Mapping[str, Any]) -> str:
    """``valkey 9.1.2, libc malloc`` from ``INFO server`` and ``INFO memory``: the benchmarks
    print it, since the allocator alone moves a server's CPU per input."""
    name = str(server.get("server_name", "redis"))
    version = server.get(f"{name}_version", server.get("redis_version"))
    return f"{name} {version}, {memory.get('mem_allocator', '?')} malloc"


def main_thread_cpu(info: Mapping[str, Any]) -> float:
    """The server's main-thread CPU seconds so far (user + system), from ``INFO cpu``; the
    benchmarks divide its growth by the inputs."""
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


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


def local_shard_pid(heartbeat: bytes | None) -> int | None:
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


async def server_usage(clients: Iterable[Redis]) -> tuple[tuple[float, float], float, int]:
    """((now, the servers' CPU seconds so far), their RSS in MB, their forks so far) from each
    server's INFO, summed (one server, or a cluster's nodes that own the pairs)."""
    cpu = rss = 0.0
    forks = 0
    for client in clients:
        info = await client.info()
        cpu += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        rss += int(info["used_memory_rss"]) / 2**20
        forks += int(info.get("total_forks", 0))
    return (time.monotonic(), cpu), rss, forks


class Sampler:
    """The once-a-second figures of a run besides latency: the input groups' lag, the snapshots
    the shards stored and the forks the server made (the stalls), the server's RSS and CPU, this
    process's CPU, and the shards' RSS and CPU when they run here (``shards``, by pair)."""

    def __init__(self, keys: Sequence[Keys], shards: dict[str, ProcStat]) -> None:
        self.keys = list(keys)
        self.shards = shards
        self._cpu: SelfCpu | None = None
        self._server_cpu = (0.0, 0.0)
        self._forks = 0
        self._generations: dict[str, Any] = {}

    async def begin(self, route: Route) -> None:
        """Take the baselines the first sample is measured from, just before the timed phase."""
        self._cpu = SelfCpu()
        self._server_cpu, _, self._forks = await server_usage(route.nodes.values())
        for k in self.keys:
            self._generations[k.pair] = await route.of(k.pair).hget(k.snapshot, "generation")

    async def rebase(self, route: Route) -> None:
        """Measure the server figures from now on the route's nodes (after an owner change:
        the new owner's CPU and forks are not the old one's)."""
        self._server_cpu, _, self._forks = await server_usage(route.nodes.values())

    async def sample(self, route: Route) -> dict[str, float]:
        """The figures since the previous sample (or :meth:`begin`)."""
        if self._cpu is None:
            raise RuntimeError("Sampler.sample() before begin()")
        s: dict[str, float] = {}
        lag = 0
        for k in self.keys:
            for group in await route.of(k.pair).xinfo_groups(k.orders):
                lag += int(group.get("lag") or 0)
        s["lag"] = lag
        # What else stalls: snapshots the shards stored, forks the server made (AOF rewrites).
        snapshots = 0
        for k in self.keys:
            generation: Any = await route.of(k.pair).hget(k.snapshot, "generation")
            before = self._generations[k.pair]
            if generation != before:
                snapshots += before is not None
                self._generations[k.pair] = generation
        s["shard_snapshots"] = snapshots
        now_cpu, server_rss, forks = await server_usage(route.nodes.values())
        s["server_rss_mb"] = round(server_rss, 1)
        s["server_forks"] = forks - self._forks
        self._forks = forks
        last_cpu, self._server_cpu = self._server_cpu, now_cpu
        s["server_cpu_pct"] = round(
            100 * (now_cpu[1] - last_cpu[1]) / max(1e-9, now_cpu[0] - last_cpu[0]), 1
        )
        s["loadgen_cpu_pct"] = round(self._cpu.pct(), 1)
        rss = [r for st in self.shards.values() if (r := st.rss_mb()) is not None]
        if rss:
            s["shard_rss_mb"] = round(sum(rss), 1)
        shard_cpu = [c for st in self.shards.values() if (c := st.cpu_pct()) is not None]
        if shard_cpu:
            s["shard_cpu_pct"] = round(sum(shard_cpu), 1)
        return s

    def peak_rss_mb(self) -> dict[str, float]:
        """Each local shard's peak RSS so far (``VmHWM``), by pair."""
        peaks = {pair: stat.rss_mb("VmHWM") for pair, stat in self.shards.items()}
        return {pair: round(peak, 1) for pair, peak in peaks.items() if peak is not None}
