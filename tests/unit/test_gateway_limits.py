"""Token buckets and API keys (shard/gateway/limits.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shard.gateway.limits import EARLY, KeyRing, RateLimiter, hash_key

# -- RateLimiter ---------------------------------------------------------------------------


def test_starts_full_then_refuses_with_the_wait() -> None:
    limiter = RateLimiter(rate=4, burst=3)
    assert [limiter.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", 100.0) == pytest.approx(0.25)
    assert limiter.take("b", 100.0) == 0.0  # another key has its own full bucket


def test_a_token_is_there_exactly_at_the_boundary() -> None:
    limiter = RateLimiter(rate=4, burst=1)
    assert limiter.take("a", 10.0) == 0.0
    assert limiter.take("a", 10.24) == pytest.approx(0.01)
    assert limiter.take("a", 10.25) == 0.0  # exactly one token's worth later
    assert limiter.take("a", 10.25) == pytest.approx(0.25)


def test_a_refusal_takes_nothing() -> None:
    limiter = RateLimiter(rate=1, burst=1)
    limiter.take("a", 0.0)
    waits = [limiter.take("a", t) for t in (0.0, 0.25, 0.5, 0.75)]
    assert waits == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert limiter.take("a", 1.0) == 0.0


@pytest.mark.parametrize("now", [0.0, 1_000_000.5, 300_000_000.123])  # far past zero: coarse
@pytest.mark.parametrize("rate", [0.3, 0.1, 1 / 3, 7.7, 0.001, 999.9])
def test_fractional_rates_waiting_the_answer_is_enough(rate: float, now: float) -> None:
    limiter = RateLimiter(rate=rate, burst=1)
    assert limiter.take("a", now) == 0.0
    wait = limiter.take("a", now)
    assert wait == pytest.approx(1 / rate)
    assert limiter.take("a", now + wait * 0.999) > 0.0
    assert limiter.take("a", now + wait) == 0.0
    assert math.ceil(limiter.take("a", now + wait)) == math.ceil(1 / rate)  # Retry-After


def test_slow_rate_retry_after_in_whole_seconds() -> None:
    limiter = RateLimiter(rate=0.5, burst=2)
    assert limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) == 0.0
    assert limiter.take("a", 0.0) == 2.0
    assert math.ceil(limiter.take("a", 0.5)) == 2
    assert math.ceil(limiter.take("a", 1.5)) == 1


def test_refill_is_capped_at_burst() -> None:
    limiter = RateLimiter(rate=10, burst=5)
    for _ in range(5):
        limiter.take("a", 0.0)
    later = 3600.0  # an hour idle is still only a burst
    assert [limiter.take("a", later) for _ in range(5)] == [0.0] * 5
    assert limiter.take("a", later) == pytest.approx(0.1)


def test_partial_refill_adds_up() -> None:
    limiter = RateLimiter(rate=10, burst=2)
    limiter.take("a", 0.0)
    limiter.take("a", 0.0)
    assert limiter.take("a", 0.15) == 0.0  # 1.5 tokens came back, one taken
    assert limiter.take("a", 0.15) == pytest.approx(0.05)
    assert limiter.take("a", 0.2) == 0.0


def test_a_clock_going_back_refills_nothing() -> None:
    limiter = RateLimiter(rate=1, burst=1)
    assert limiter.take("a", 50.0) == 0.0
    assert limiter.take("a", 10.0) == pytest.approx(1.0)
    assert limiter.take("a", 50.5) == pytest.approx(0.5)  # counted from 50, not from 10
    assert limiter.take("a", 51.0) == 0.0


def test_lru_eviction_bounds_the_keys() -> None:
    limiter = RateLimiter(rate=0.001, burst=1, max_keys=3)
    for key in "abc":
        assert limiter.take(key, 0.0) == 0.0
    assert limiter.take("a", 1.0) > 0  # a is now the most recently used
    assert limiter.take("d", 2.0) == 0.0  # evicts b, the least recently used
    assert len(limiter) == 3
    assert limiter.take("a", 3.0) > 0  # a kept its empty bucket
    assert limiter.take("c", 3.0) > 0  # so did c (this evicts nothing: c is known)
    assert limiter.take("b", 3.0) == 0.0  # b was forgotten: full again (and evicts d)
    assert limiter.take("d", 4.0) == 0.0  # d was forgotten in turn
    assert len(limiter) == 3


def test_many_keys_stay_within_max_keys() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_keys=10)
    for i in range(1000):
        limiter.take(f"10.0.{i // 256}.{i % 256}", float(i))
        assert len(limiter) <= 10
    assert len(limiter) == 10


@pytest.mark.parametrize(
    ("rate", "burst", "max_keys", "named"),
    [
        (0, 1, 10, "0"),
        (-1.5, 1, 10, "-1.5"),
        (math.nan, 1, 10, "nan"),
        (math.inf, 1, 10, "inf"),
        (1, 0, 10, "burst"),
        (1, -3, 10, "-3"),
        (1, 1, 0, "max_keys"),
    ],
)
def test_bad_settings(rate: float, burst: int, max_keys: int, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RateLimiter(rate, burst, max_keys)


@given(
    rate=st.sampled_from([0.3, 1.0, 2.5, 10.0]),
    burst=st.integers(min_value=1, max_value=5),
    steps=st.lists(st.floats(min_value=0, max_value=2, allow_nan=False), max_size=80),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[float]
) -> None:
    """Over any schedule the bucket grants at most burst + rate x elapsed (give or take
    EARLY), and a refusal never asks to wait longer than one token takes to come back."""
    limiter = RateLimiter(rate, burst)
    now, granted = 0.0, 0
    for step in steps:
        now += step
        wait = limiter.take("k", now)
        assert wait >= 0.0
        if wait == 0.0:
            granted += 1
        else:
            assert EARLY < wait <= 1 / rate + 1e-9
    assert granted <= burst + rate * (now + EARLY) + 1e-9


# -- KeyRing -------------------------------------------------------------------------------

ALICE_KEY = "sk_live_alice_4f9a"
BOB_KEY = "sk_live_bob_77c1"


def ring() -> KeyRing:
    return KeyRing.from_entries(
        [
            {"sha256": hash_key(ALICE_KEY), "account": "alice"},
            {"sha256": hash_key(BOB_KEY).upper(), "account": "bob"},  # upper-case hex is fine
        ]
    )


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_bool_is_whether_keys_are_configured() -> None:
    assert not KeyRing()
    assert not KeyRing.from_entries([])
    assert ring()
    assert len(ring()) == 2


@pytest.mark.parametrize(
    ("header", "account"),
    [
        (f"Bearer {ALICE_KEY}", "alice"),
        (f"bearer {ALICE_KEY}", "alice"),
        (f"BEARER {BOB_KEY}", "bob"),
        (f"  Bearer   {BOB_KEY} ", "bob"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        (ALICE_KEY, None),  # no scheme
        (f"Basic {ALICE_KEY}", None),
        (f"Bearer {ALICE_KEY} extra", None),
        (f"Bearer {ALICE_KEY}x", None),
        (f"Bearer {ALICE_KEY.upper()}", None),  # keys are case-sensitive
        (f"Bearer {hash_key(ALICE_KEY)}", None),  # the hash is not the key
        ("Bearer \ud800", None),  # a lone surrogate hashes to nothing
    ],
)
def test_account_of_header(header: str | None, account: str | None) -> None:
    assert ring().account_of(header) == account


def test_empty_ring_knows_no_key() -> None:
    assert KeyRing().account_of(f"Bearer {ALICE_KEY}") is None


GOOD = hash_key("k")


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ("sha256=abc", "keys[0]"),
        ({"account": "alice"}, "keys[0].sha256"),
        ({"sha256": 12, "account": "alice"}, "keys[0].sha256"),
        ({"sha256": GOOD[:-1], "account": "alice"}, "keys[0].sha256"),
        ({"sha256": GOOD + "0", "account": "alice"}, "keys[0].sha256"),
        ({"sha256": "g" + GOOD[1:], "account": "alice"}, "keys[0].sha256"),
        ({"sha256": GOOD + "\n", "account": "alice"}, "keys[0].sha256"),
        ({"sha256": GOOD}, "keys[0].account"),
        ({"sha256": GOOD, "account": ""}, "keys[0].account"),
        ({"sha256": GOOD, "account": 7}, "keys[0].account"),
        ({"sha256": GOOD, "account": "a" * 65}, "keys[0].account"),
        ({"sha256": GOOD, "account": "é" * 33}, "keys[0].account"),  # 66 bytes
        ({"sha256": GOOD, "account": "a\ud800"}, "keys[0].account"),
        ({"sha256": GOOD, "account": "alice", "key": "sk_secret"}, "keys[0]"),
    ],
)
def test_bad_entry(entry: object, field: str) -> None:
    with pytest.raises(ValueError) as caught:
        KeyRing.from_entries([entry])
    message = str(caught.value)
    assert message.startswith(field)


def test_bad_entry_is_named_by_its_index() -> None:
    with pytest.raises(ValueError, match=r"keys\[1\]\.account"):
        KeyRing.from_entries([{"sha256": GOOD, "account": "a"}, {"sha256": hash_key("j")}])


@pytest.mark.parametrize(
    "entry",
    [
        {"sha256": "sk_live_pasted_by_mistake", "account": "alice"},
        {"sha256": GOOD[:40] + "sk_live_zz", "account": "alice"},
        {"sha256": GOOD, "account": "alice", "key": "sk_live_pasted_by_mistake"},
    ],
)
def test_a_key_pasted_in_is_never_shown(entry: dict[str, str]) -> None:
    with pytest.raises(ValueError) as caught:
        KeyRing.from_entries([entry])
    assert "sk_live" not in str(caught.value)


def test_accounts_of_up_to_64_bytes() -> None:
    keys = KeyRing.from_entries(
        [{"sha256": hash_key("x"), "account": "a" * 64}, {"sha256": GOOD, "account": "é" * 32}]
    )
    assert keys.account_of("Bearer x") == "a" * 64
    assert keys.account_of("Bearer k") == "é" * 32


def test_a_key_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match=r"keys\[1\].*keys\[0\]"):
        KeyRing.from_entries(
            [{"sha256": GOOD, "account": "a"}, {"sha256": GOOD.upper(), "account": "b"}]
        )
