"""Open-loop send schedules: piecewise-constant rates, so every message has an exact due time.

A schedule is a list of segments ``(seconds, rate)``. Message ``i`` (from 0) is due at the time
the integral of the rate reaches ``i``: within a segment that starts at ``t0`` with ``n0``
messages before it, at ``t0 + (i - n0) / rate``. The sender sends what is due whatever the
replies say (open loop), so a slow shard shows up as latency instead of a slower offered load.
Lookups are O(log segments).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the run
    seconds: float
    rate: float  # messages per second
    first: int  # index of the segment's first message
    count: int  # messages due in the segment


@dataclass(frozen=True)
class Schedule:
    """Segments ``(seconds, rate)`` run back to back; ``name`` says which profile made them."""

    name: str
    segments: tuple[Segment, ...]
    _starts: tuple[float, ...] = field(repr=False, compare=False)
    _firsts: tuple[int, ...] = field(repr=False, compare=False)

    @classmethod
    def of(cls, name: str, parts: Sequence[tuple[float, float]]) -> Schedule:
        if not parts:
            raise ValueError("a schedule needs at least one segment")
        segments: list[Segment] = []
        start, first = 0.0, 0
        for seconds, rate in parts:
            if not (seconds > 0 and math.isfinite(seconds)):
                raise ValueError(f"segment length {seconds!r} s: must be a positive number")
            if not (rate >= 0 and math.isfinite(rate)):
                raise ValueError(f"rate {rate!r} msgs/s: must be zero or more")
            # Rounded per segment so that a whole schedule's count is what the user asked for.
            count = round(first + seconds * rate) - first
            segments.append(Segment(start, seconds, rate, first, count))
            start += seconds
            first += count
        return cls(
            name,
            tuple(segments),
            tuple(s.start for s in segments),
            tuple(s.first for s in segments),
        )

    @property
    def total(self) -> int:
        last = self.segments[-1]
        return last.first + last.count

    @property
    def duration(self) -> float:
        last = self.segments[-1]
        return last.start + last.seconds

    def due_by(self, t: float) -> int:
        """How many messages are due at or before ``t`` seconds."""
        if t < 0:
            return 0
        seg = self.segments[max(0, bisect.bisect_right(self._starts, t) - 1)]
        inside = min(t - seg.start, seg.seconds)
        # +1: message ``first`` is due at the segment's start itself.
        return min(seg.first + seg.count, seg.first + math.floor(inside * seg.rate) + 1)

    def due_at(self, i: int) -> float:
        """The time message ``i`` is due (seconds from the start)."""
        if not 0 <= i < self.total:
            raise IndexError(f"message {i} is outside a schedule of {self.total}")
        # The last segment starting at or before ``i``; never an empty one, because an empty
        # segment shares its ``first`` with the segment after it.
        seg = self.segments[bisect.bisect_right(self._firsts, i) - 1]
        return seg.start + (i - seg.first) / seg.rate

    def rate_at(self, t: float) -> float:
        """The offered rate at time ``t`` (0 outside the schedule)."""
        if not 0 <= t < self.duration:
            return 0.0
        return self.segments[bisect.bisect_right(self._starts, t) - 1].rate


def constant(rate: float, seconds: float) -> Schedule:
    """``rate`` messages per second for ``seconds``."""
    return Schedule.of("constant", [(seconds, rate)])


def ramp(start: float, stop: float, step: float, step_seconds: float) -> Schedule:
    """A staircase from ``start`` to ``stop`` msgs/s in ``step`` increments, each held for
    ``step_seconds``: the step where the shard stops keeping up is its saturation point."""
    if step <= 0 or stop < start:
        raise ValueError(f"ramp {start}..{stop} by {step}: needs step > 0 and stop >= start")
    rates = []
    rate = start
    while rate <= stop + 1e-9:
        rates.append(rate)
        rate += step
    return Schedule.of("ramp", [(step_seconds, r) for r in rates])


def spike(base: float, peak: float, seconds: float, every: float, spike_seconds: float) -> Schedule:
    """``base`` msgs/s for ``seconds`` with a burst of ``peak`` msgs/s lasting
    ``spike_seconds`` at the end of every ``every`` seconds."""
    if not 0 < spike_seconds < every:
        raise ValueError(f"spikes of {spike_seconds} s every {every} s: needs 0 < length < period")
    parts: list[tuple[float, float]] = []
    t = 0.0
    while t < seconds - 1e-9:
        calm = min(every - spike_seconds, seconds - t)
        parts.append((calm, base))
        t += calm
        if t < seconds - 1e-9:
            burst = min(spike_seconds, seconds - t)
            parts.append((burst, peak))
            t += burst
    return Schedule.of("spike", parts)
