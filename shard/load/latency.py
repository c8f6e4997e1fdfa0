"""End-to-end latency: HDR histograms (HdrHistogram, 3 significant digits) overall and per
one-second window, so a report shows both the totals and when things went wrong.

Values are recorded in microseconds from 1 µs to one hour; recording costs about 1 µs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
LOWEST_US = 1
HIGHEST_US = 3_600_000_000
DIGITS = 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def summary(hist: HdrHistogram) -> dict[str, float | int]:
    """Count, percentiles (p50, p90, p99, p99.9), max and mean, in microseconds."""
    count = hist.get_total_count()
    out: dict[str, float | int] = {"count": count}
    for p in PERCENTILES:
        out[f"p{p:g}"] = hist.get_value_at_percentile(p) if count else 0
    out["max"] = hist.get_max_value() if count else 0
    out["mean"] = round(hist.get_mean_value(), 1) if count else 0.0
    return out


@dataclass
class Window:
    """One second of the run: what was offered, sent and completed, and its latencies."""

    second: int
    offered: int = 0  # messages the schedule had due in this second
    sent: int = 0
    completed: int = 0  # events seen
    hist: HdrHistogram = field(default_factory=new_histogram)
    samples: dict[str, float] = field(default_factory=dict)  # lag, rss, cpu, ...


class Recorder:
    """Latencies by the second they completed in. Each value is recorded once, in its window;
    finished windows are folded into the run's histogram (0.2 ms per window)."""

    def __init__(self) -> None:
        self._total = new_histogram()
        self._folded = 0
        self.windows: list[Window] = []

    def window(self, second: int) -> Window:
        while len(self.windows) <= second:
            self.windows.append(Window(len(self.windows)))
        return self.windows[second]

    def record(self, second: int, latency_us: int) -> None:
        """One completed input, ``latency_us`` after it was sent, completing in ``second``
        (seconds only move forward)."""
        w = self.window(second)
        w.completed += 1
        w.hist.record_value(min(max(latency_us, LOWEST_US), HIGHEST_US))

    def total(self, before: int | None = None) -> HdrHistogram:
        """The histogram of every window before ``before`` (all windows if None)."""
        end = len(self.windows) if before is None else min(before, len(self.windows))
        for w in self.windows[self._folded : end]:
            self._total.add(w.hist)
        self._folded = max(self._folded, end)
        return self._total
