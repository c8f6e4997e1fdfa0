"""Candles from trades (shard/gateway/candles.py), against an obviously correct reference."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shard.gateway.candles import INTERVALS, candles

KEYS = ["start", "open", "high", "low", "close", "volume", "trades"]


def reference(trades: list[tuple[int, int, int]], interval_ms: int, limit: int) -> list[dict]:
    """Each start that had a trade, oldest first; its trades picked out in trade order."""
    starts = sorted({ts // interval_ms * interval_ms for ts, _, _ in trades})
    out = []
    for start in starts:
        mine = [(p, q) for ts, p, q in trades if start <= ts < start + interval_ms]
        prices = [p for p, _ in mine]
        out.append(
            {
                "start": start,
                "open": prices[0],
                "high": max(prices),
                "low": min(prices),
                "close": prices[-1],
                "volume": sum(q for _, q in mine),
                "trades": len(mine),
            }
        )
    return out[-limit:] if limit else []


def test_intervals_in_milliseconds() -> None:
    assert dict(INTERVALS) == {
        "1m": 60_000,
        "5m": 300_000,
        "15m": 900_000,
        "1h": 3_600_000,
        "1d": 86_400_000,
    }


def test_one_candle_open_high_low_close_volume() -> None:
    trades = [(1_000, 50, 2), (2_000, 70, 1), (3_000, 40, 5), (59_999, 60, 3)]
    assert candles(trades, 60_000, 10) == [
        {"start": 0, "open": 50, "high": 70, "low": 40, "close": 60, "volume": 11, "trades": 4}
    ]


def test_bucket_edges_and_gaps() -> None:
    """60_000 starts the second minute; the empty minute in between gets no candle."""
    trades = [(59_999, 1, 1), (60_000, 2, 1), (180_000, 3, 1)]
    got = candles(trades, 60_000, 10)
    assert [c["start"] for c in got] == [0, 60_000, 180_000]
    assert [c["open"] for c in got] == [1, 2, 3]


def test_timestamps_going_back_keep_trade_order() -> None:
    """A late trade stamped in the previous minute joins it as its close, not its open."""
    trades = [(59_000, 10, 1), (60_500, 20, 1), (59_900, 30, 2), (60_100, 25, 1)]
    got = candles(trades, 60_000, 10)
    assert got == [
        {"start": 0, "open": 10, "high": 30, "low": 10, "close": 30, "volume": 3, "trades": 2},
        {
            "start": 60_000,
            "open": 20,
            "high": 25,
            "low": 20,
            "close": 25,
            "volume": 2,
            "trades": 2,
        },
    ]


def test_first_trade_stamped_later_than_the_rest() -> None:
    """The newest bucket in the input comes first in the stream: still ordered by start."""
    trades = [(120_000, 5, 1), (0, 1, 1), (60_000, 3, 1)]
    assert [c["start"] for c in candles(trades, 60_000, 10)] == [0, 60_000, 120_000]


def test_limit_keeps_the_latest() -> None:
    trades = [(i * 60_000, i, 1) for i in range(5)]
    assert [c["open"] for c in candles(trades, 60_000, 2)] == [3, 4]
    assert candles(trades, 60_000, 0) == []
    assert len(candles(trades, 60_000, 100)) == 5


def test_no_trades() -> None:
    assert candles([], 60_000, 100) == []


def test_a_generator_is_read_once() -> None:
    got = candles(((t, 7, 2) for t in (1, 2, 3)), 60_000, 1)
    assert got == [
        {"start": 0, "open": 7, "high": 7, "low": 7, "close": 7, "volume": 6, "trades": 3}
    ]


def test_keys_and_integers_only() -> None:
    (candle,) = candles([(1_700_000_123_456, 10**18, 3)], INTERVALS["1d"], 1)
    assert list(candle) == KEYS
    assert all(type(v) is int for v in candle.values())
    assert candle["start"] == 1_700_000_123_456 // 86_400_000 * 86_400_000


@pytest.mark.parametrize(("interval_ms", "limit"), [(0, 1), (-60_000, 1), (60_000, -1)])
def test_bad_arguments(interval_ms: int, limit: int) -> None:
    with pytest.raises(ValueError, match=str(interval_ms if interval_ms < 1 else limit)):
        candles([(0, 1, 1)], interval_ms, limit)


trade_lists = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=10_000),  # timestamps near each other, any order
        st.integers(min_value=1, max_value=2**63 - 1),
        st.integers(min_value=1, max_value=2**63 - 1),
    ),
    max_size=60,
)


@given(
    trades=trade_lists,
    interval_ms=st.sampled_from([1, 7, 1_000, 3_333, 60_000]),
    limit=st.integers(min_value=0, max_value=20),
)
def test_matches_reference(
    trades: list[tuple[int, int, int]], interval_ms: int, limit: int
) -> None:
    got = candles(trades, interval_ms, limit)
    assert got == reference(trades, interval_ms, limit)
    assert all(list(c) == KEYS for c in got)
    assert len(got) <= limit


@given(trades=trade_lists, interval_ms=st.sampled_from([1, 1_000, 60_000]))
def test_volume_and_count_add_up(trades: list[tuple[int, int, int]], interval_ms: int) -> None:
    """With no limit in the way, every trade is in exactly one candle."""
    got = candles(trades, interval_ms, len(trades))
    assert sum(c["trades"] for c in got) == len(trades)
    assert sum(c["volume"] for c in got) == sum(q for _, _, q in trades)
    assert all(
        c["low"] <= c["open"] <= c["high"] and c["low"] <= c["close"] <= c["high"] for c in got
    )
