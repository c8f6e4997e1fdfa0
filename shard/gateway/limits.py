"""The gateway's admission rules: token buckets per key, and API keys kept as hashes. Pure.

:class:`RateLimiter` is a token bucket per key (an API key's account, a client address): a
bucket holds at most ``burst`` tokens, starts full, refills at ``rate`` tokens a second, and a
request takes one token or is refused with the seconds until one is there (the HTTP layer
answers ``429`` with ``Retry-After`` = the ceiling of it). Time is an argument (seconds on a
monotonic clock), never read here, so a test replays any schedule exactly. Memory is bounded:
at most ``max_keys`` buckets, the least recently used evicted first, and an evicted key starts
over as a full bucket, so under a flood of distinct keys a key can get up to ``burst`` more
than its rate. Cost: O(1) a request; one dict entry and a pair of floats a tracked key.

:class:`KeyRing` maps API keys to accounts without holding a key: only the SHA-256 hex of each
(:func:`hash_key`, what ``shard gateway --hash-key`` prints) is configured and kept. A header is
checked by hashing the key it carries and comparing that with every configured hash using
:func:`hmac.compare_digest`, so the time taken does not depend on which hash, or how much of
one, matched. Cost: one SHA-256 of the key plus O(keys) constant-time comparisons. No error
message here ever shows a key, or a value that might be one.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Final

from shard.messages import MAX_ACCOUNT_BYTES, show

EARLY: Final = 1e-6
"""Seconds early a request may be and still find its token: float rounding (of a clock far past
zero, say) never refuses a request made exactly as long after as :meth:`RateLimiter.take` said
to wait. The shortfall stays in the bucket as a debt, so over time nothing is granted beyond
``burst + rate x (elapsed + EARLY)``."""


class RateLimiter:
    """Token buckets by key: ``rate`` tokens a second, at most ``burst``, at most ``max_keys``
    buckets (least recently used evicted: that key is then as if full again)."""

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        if not (rate > 0 and math.isfinite(rate)):  # also refuses NaN
            raise ValueError(f"rate must be a finite number of tokens a second > 0, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1 token, got {burst!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys!r}")
        self.rate: Final = float(rate)
        self.burst: Final = burst
        self.max_keys: Final = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """Key -> (tokens, when they were counted), least recently used first."""

    def take(self, key: str, now: float) -> float:
        """Take a token from ``key``'s bucket at ``now`` (seconds): 0.0 if one was there, else
        the seconds until one is (> :data:`EARLY`; nothing is taken). A ``now`` earlier than
        the key's last request refills nothing. O(1)."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            tokens = float(self.burst)
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
        else:
            tokens, then = bucket
            if now > then:
                tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            else:
                now = then  # a clock that went back: keep the later stamp, refill nothing
            buckets.move_to_end(key)
        if tokens + EARLY * self.rate >= 1.0:
            buckets[key] = (tokens - 1.0, now)  # a little below 0 if taken early: a debt
            return 0.0
        buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def __len__(self) -> int:
        """How many keys have a bucket (at most :attr:`max_keys`)."""
        return len(self._buckets)


_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")
_FIELDS: Final = frozenset({"sha256", "account"})


def hash_key(key: str) -> str:
    """The SHA-256 of ``key``'s UTF-8, as 64 lowercase hex digits: what the config holds."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """API keys (as SHA-256 hex) -> accounts. Empty (false) when no key is configured: order
    entry is then open."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        """From (lowercase SHA-256 hex, account) pairs already checked; see
        :meth:`from_entries` for the config's form."""
        self._entries: Final = tuple(entries)

    @classmethod
    def from_entries(cls, entries: Iterable[object]) -> KeyRing:
        """From the config's ``keys``: each ``{"sha256": "<64 hex digits>", "account":
        "<1-64 bytes of UTF-8>"}``. Raises ValueError, naming the entry and the field, for
        anything else (a missing or unknown field, a hash listed twice); a bad ``sha256`` is
        described, never shown, since it may be a key pasted in by mistake."""
        checked: list[tuple[str, str]] = []
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries):
            where = f"keys[{i}]"
            if not isinstance(entry, Mapping):
                raise ValueError(
                    f"{where} must be a table {{sha256 = ..., account = ...}}, "
                    f"got a {type(entry).__name__}"
                )
            unknown = sorted(str(name) for name in entry if name not in _FIELDS)
            if unknown:  # names only: the value of a field like "key" may be the key
                raise ValueError(
                    f"{where} has unknown field(s) {', '.join(map(show, unknown))} "
                    "(only sha256 and account)"
                )
            digest = _digest(where, entry.get("sha256"))
            account = _account(where, entry.get("account"))
            if digest in seen:
                raise ValueError(
                    f"{where}.sha256 {digest} is the same key as keys[{seen[digest]}].sha256"
                )
            seen[digest] = i
            checked.append((digest, account))
        return cls(checked)

    def account_of(self, authorization: str | None) -> str | None:
        """The account of the key in an ``Authorization: Bearer <key>`` header (the scheme in
        any case), None if the header is absent, of another form, or its key is not configured.
        One SHA-256 and O(keys) constant-time comparisons; no early exit on a match."""
        if authorization is None:
            return None
        parts = authorization.split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            return None
        try:
            digest = hash_key(parts[1])
        except UnicodeEncodeError:  # a lone surrogate: not a key anyone could have configured
            return None
        found: str | None = None
        for configured, account in self._entries:
            if hmac.compare_digest(configured, digest):
                found = account
        return found

    def __bool__(self) -> bool:
        """True when at least one key is configured."""
        return bool(self._entries)

    def __len__(self) -> int:
        """How many keys are configured."""
        return len(self._entries)


def _digest(where: str, value: object) -> str:
    if value is None:
        raise ValueError(f"{where}.sha256 is missing: the SHA-256 hex of the key (--hash-key)")
    if not isinstance(value, str):
        raise ValueError(f"{where}.sha256 must be a string, got a {type(value).__name__}")
    if _SHA256_HEX.fullmatch(value) is None:
        raise ValueError(
            f"{where}.sha256 is not 64 hex digits (got {len(value)} characters, not shown in "
            "case they are the key itself): paste the line `shard gateway --hash-key` prints"
        )
    return value.lower()


def _account(where: str, value: object) -> str:
    if value is None:
        raise ValueError(f"{where}.account is missing")
    if not isinstance(value, str):
        raise ValueError(f"{where}.account must be a string, got {show(value)}")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise ValueError(
            f"{where}.account is not valid UTF-8 (a lone surrogate): {show(value)}"
        ) from None
    if not 1 <= size <= MAX_ACCOUNT_BYTES:
        raise ValueError(
            f"{where}.account must be 1 to {MAX_ACCOUNT_BYTES} bytes of UTF-8, "
            f"got {size}: {show(value)}"
        )
    return value
