"""How the daemon waits out trouble with Redis: back off, stay stoppable, log each kind once.

An outage (the connection lost, ``OOM``, ``LOADING``, a refused commit ...) is logged once when
it starts and once when it ends, not at every retry; the wait before the next attempt is a
jittered exponential backoff that grows with each failure until something succeeds. A stop
(SIGTERM) ends a wait at once, and the lease is renewed every second meanwhile, since a wait may
outlast it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Final

from redis.backoff import ExponentialWithJitterBackoff

from shard.logs import Log
from shard.metrics import Metrics
from shard.transport import RETRIED, describe, error_code, waited_out

log = Log("shard.daemon")

BACKOFF_BASE: Final = 0.05
"""Seconds of the first backoff step; it doubles with each failure up to reconnect_max_delay."""
RENEW_EVERY: Final = 1.0
"""Seconds between two lease renewals while waiting."""


class NotYet(Exception):
    """A step that must succeed before the daemon goes on did not, for a reason that can pass
    (a snapshot not stored): waited out with backoff, like an error Redis raises."""


class Stopping(Exception):
    """A stop was requested while waiting (for Redis, or for the lease)."""


class Outage:
    """Which trouble with Redis the daemon is waiting out, so that each kind is logged once
    when it starts and once when it ends, not at every retry."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.since = 0.0

    def begin(self, kind: str, now: float) -> bool:
        """Note ``kind`` at ``now``; True if it was not the kind already being waited out."""
        if kind == self.kind:
            return False
        if self.kind is None:
            self.since = now
        self.kind = kind
        return True

    def end(self, now: float) -> float | None:
        """The outage is over: how long it lasted, or None if there was none."""
        if self.kind is None:
            return None
        self.kind = None
        return now - self.since


class Waits:
    """The daemon's waits: :meth:`retry` runs an action until Redis serves it, :meth:`failed`
    notes a failure in the loop and backs off, :meth:`served` ends the outage once something
    succeeds. ``renew`` renews the lease (it raises if another daemon holds it now)."""

    def __init__(
        self,
        metrics: Metrics,
        stop: asyncio.Event,
        max_delay: float,
        renew: Callable[[], Awaitable[None]],
    ) -> None:
        self.metrics = metrics
        self.stop = stop
        self.renew = renew
        self.backoff = ExponentialWithJitterBackoff(cap=max_delay, base=BACKOFF_BASE)
        self.outage = Outage()
        self.failures = 0
        """Refusals and errors in the loop since the last success: the next backoff."""

    def note(self, kind: str, why: str, key: str = "") -> None:
        """Log a kind of trouble with Redis once, when it starts (later retries at debug)."""
        fields = {"kind": kind, "why": why, **({"key": key} if key else {})}
        if self.outage.begin(kind, time.monotonic()):
            self.metrics.redis_waits(kind)
            self.metrics.waiting.set(1)
            log.warning("waiting for redis; retrying with backoff", **fields)
        else:
            log.debug("still waiting for redis", **fields)

    async def failed(self, kind: str, why: str, key: str = "") -> None:
        """After a refusal or an error in the loop: note it and back off; the wait grows with
        each failure until :meth:`served`."""
        self.note(kind, why, key)
        self.failures += 1
        await self.pause(self.backoff.compute(self.failures))

    def served(self) -> None:
        """Redis served the daemon: the outage (if any) is over and the backoff starts again."""
        self.failures = 0
        lasted = self.outage.end(time.monotonic())
        if lasted is not None:
            self.metrics.waiting.set(0)
            log.info("redis serves the daemon again", after=round(lasted, 3))

    @property
    def troubled(self) -> bool:
        return bool(self.failures) or self.outage.kind is not None

    async def retry(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action`` until it succeeds, backing off while Redis cannot serve it (or it
        raises :class:`NotYet`). An error it does not wait out ends the attempts, and so does a
        stop, at once (a SIGTERM is served while the daemon waits, not after the backoff)."""
        failures = 0
        while True:
            try:
                await action()
                return
            except (*RETRIED, NotYet) as error:
                if not isinstance(error, NotYet) and not waited_out(error):
                    raise
                failures += 1
                self.metrics.reconnects.inc()
                kind = "not_yet" if isinstance(error, NotYet) else error_code(error)
                self.note(kind or "connection", describe(error))
                if not await self.pause(self.backoff.compute(failures)):
                    raise Stopping("while Redis was unavailable") from error

    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless a stop comes first; False if stopping. The lease is renewed
        every :data:`RENEW_EVERY` seconds meanwhile (its errors, but a lost lease, ignored)."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), min(left, RENEW_EVERY))
            if not self.stop.is_set():
                with contextlib.suppress(*RETRIED):
                    await self.renew()
        return not self.stop.is_set()
