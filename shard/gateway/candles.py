"""Candles (OHLCV) from trades, for ``GET /api/v1/pairs/{P}/candles``. Pure, integers only.

A trade is ``(timestamp_ms, price, quantity)``, given in trade order (the order of
``trades:{P}``). Its candle is the interval it falls in, keyed by its start,
``floor(timestamp_ms / interval_ms) * interval_ms``. Timestamps are the inputs' and may go back
a little from one trade to the next, so a trade can land in an earlier candle than the one
before it: a candle's ``open`` is its first trade *in trade order*, ``close`` its last,
``high`` and ``low`` the extremes of its prices, ``volume`` the sum of its quantities and
``trades`` their count. Only intervals that had a trade get a candle (no gap filling); the
answer is the last ``limit`` of them, oldest first.

Cost: O(trades) for one pass, plus O(c log c) to order the c candles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

INTERVALS: Final[Mapping[str, int]] = {
    "1m": 60_000,
    "5m": 5 * 60_000,
    "15m": 15 * 60_000,
    "1h": 60 * 60_000,
    "1d": 24 * 60 * 60_000,
}
"""The intervals served, by name, in milliseconds."""


def candles(
    trades: Iterable[tuple[int, int, int]], interval_ms: int, limit: int
) -> list[dict[str, int]]:
    """The last ``limit`` candles of ``interval_ms`` that had a trade, oldest first, each
    ``{"start", "open", "high", "low", "close", "volume", "trades"}``. Raises ValueError for an
    ``interval_ms`` < 1 or a ``limit`` < 0 (the caller's bug: the HTTP layer checks its
    query). O(trades + candles log candles)."""
    if interval_ms < 1:
        raise ValueError(f"interval_ms must be at least 1, got {interval_ms!r}")
    if limit < 0:
        raise ValueError(f"limit must be at least 0, got {limit!r}")
    if limit == 0:
        return []
    by_start: dict[int, list[int]] = {}  # start -> [open, high, low, close, volume, trades]
    for timestamp, price, quantity in trades:
        start = timestamp // interval_ms * interval_ms
        candle = by_start.get(start)
        if candle is None:
            by_start[start] = [price, price, price, price, quantity, 1]
            continue
        if price > candle[1]:
            candle[1] = price
        elif price < candle[2]:
            candle[2] = price
        candle[3] = price
        candle[4] += quantity
        candle[5] += 1
    starts = sorted(by_start)
    return [
        {
            "start": start,
            "open": candle[0],
            "high": candle[1],
            "low": candle[2],
            "close": candle[3],
            "volume": candle[4],
            "trades": candle[5],
        }
        for start in starts[-limit:]
        for candle in (by_start[start],)
    ]
