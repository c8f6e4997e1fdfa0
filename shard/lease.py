"""The pair's lease, which keeps one daemon active per pair, and the heartbeat that renews it.

The lease is a key holding the active daemon's name with a TTL (``lease_ttl``). A daemon that
finds it held waits as a standby and takes the pair over once it expires. The active daemon
renews it once a second from a heartbeat task that also writes ``shard:{P}:health`` (three
round trips that no batch waits for), and during long waits and replays. The commit fence stays
the safety net should two daemons ever overlap; the lease keeps that rare.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from typing import Final

from shard.config import Config, Keys
from shard.logs import Log
from shard.metrics import Metrics
from shard.outage import Stopping
from shard.store import Store
from shard.tasks import wait_out
from shard.transport import text

log = Log("shard.daemon")

BEAT_EVERY: Final = 1.0
"""Seconds between two heartbeats (each renews the lease)."""
STANDBY_POLL: Final = 0.5
"""Seconds between two attempts of a standby to take the lease."""
NO_EXPIRY_WARN_EVERY: Final = 60.0
"""Seconds between two warnings that the lease key has no expiry."""


class LeaseLost(Exception):
    """Another daemon holds the pair's lease now: stop publishing and stand by."""


class Lease:
    """This daemon's hold on the pair: :meth:`take` (standing by while another daemon holds
    it), :meth:`renew`, :meth:`release`, and :meth:`beat`, which the loop polls."""

    def __init__(
        self, config: Config, keys: Keys, store: Store, metrics: Metrics, stop: asyncio.Event
    ) -> None:
        self.config = config
        self.keys = keys
        self.store = store
        self.metrics = metrics
        self.stop = stop
        self.holder = config.instance or socket.gethostname()
        self.ttl_ms = int(config.lease_ttl * 1000)
        self.held = False
        self.standing_by = False
        """Said it stands by and has not taken the pair yet: kept across calls of :meth:`take`,
        so a wait cut short by a Redis error still ends in ``took over the pair``."""
        self._beat: asyncio.Task[None] | None = None
        self._last_beat = 0.0

    async def take(self) -> None:
        """Hold the lease, waiting as a standby while another daemon does; :class:`Stopping`
        if a stop comes first."""
        warned_at = -NO_EXPIRY_WARN_EVERY
        store = self.store
        while (holder := await store.acquire_lease(self.holder, self.ttl_ms)) is not None:
            if not self.standing_by:
                log.info("standby: another daemon holds the pair", holder=holder, me=self.holder)
                self.standing_by = True
            now = time.monotonic()
            if now - warned_at >= NO_EXPIRY_WARN_EVERY and await store.lease_ttl_ms() == -1:
                warned_at = now
                log.warning(
                    "the lease key has no expiry, so no daemon will ever take the pair over: "
                    "a daemon never sets one like that; delete the key if its holder is gone",
                    key=self.keys.lease,
                    holder=holder,
                )
            if self.stop.is_set():
                raise Stopping("as a standby")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), STANDBY_POLL)  # not a Redis call
        self.held = True
        if self.standing_by:
            self.standing_by = False
            log.info("took over the pair", me=self.holder)

    def lost(self) -> None:
        """Another daemon holds the lease now (a renewal said so)."""
        self.held = False

    async def renew(self) -> None:
        """Extend the lease if this daemon holds it; :class:`LeaseLost` if another does now."""
        if self.held and not await self.store.renew_lease(self.holder, self.ttl_ms):
            raise LeaseLost

    async def release(self) -> None:
        """Hand the pair over at once (on a clean stop) rather than after the lease expires."""
        if self.held:
            await self.store.release_lease(self.holder)

    def beat(self, now: float, last_id: str, inputs: int) -> bool:
        """Once every :data:`BEAT_EVERY` seconds, start a task that renews the lease and writes
        the heartbeat. The previous task's error (a lost lease, a Redis error) is raised here,
        in the loop; while it is still on its way, no new one starts. True when a previous
        beat has just been seen to succeed. O(1)."""
        if now - self._last_beat < BEAT_EVERY:
            return False
        beat, self._beat = self._beat, None
        served = False
        if beat is not None:
            if not beat.done():
                self._beat = beat
                return False
            beat.result()
            served = True
        self._last_beat = now
        self._beat = asyncio.get_running_loop().create_task(self._beat_once(last_id, inputs))
        return served

    async def stop_beating(self) -> None:
        """Wait the heartbeat in flight out, dropping its error (the daemon is stopping or
        resynchronising)."""
        beat, self._beat = self._beat, None
        if beat is not None:
            await wait_out(beat)

    async def _beat_once(self, last_id: str, inputs: int) -> None:
        await self.renew()
        redis, config = self.store.redis, self.config
        lag = None
        for group in await redis.xinfo_groups(self.keys.orders):
            if text(group.get("name")) == config.group:
                lag = group.get("lag")
        if isinstance(lag, int):
            self.metrics.lag.set(lag)
        doc = {
            "pair": config.pair,
            "pid": os.getpid(),
            "last_id": last_id,
            "inputs": inputs,
            "lag": lag,
            "time": time.time(),
        }
        await redis.set(self.keys.health, json.dumps(doc), px=int(config.health_ttl * 1000))
