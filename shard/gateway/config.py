"""The gateway's configuration: the ``[gateway]`` table of a TOML file, then the environment
(``SHARD_GATEWAY_<KEY>``), then flags; the Redis connection from the same file's ``[shard]``
table, as the daemon reads it (:func:`shard.config.load`). A wrong value stops the gateway at
start with one sentence naming the key and the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from shard.config import PAIR_RE, Config, ConfigError, load, read_table
from shard.defaults import GATEWAY_PORT


class KeyEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An API key as it is stored: its SHA-256 (hex) and the account it trades as."""

    sha256: str
    account: str


class GatewayConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything ``shard gateway`` needs besides the Redis connection (docs/gateway.md)."""

    pairs: list[str] = []
    host: str = "127.0.0.1"
    port: int = GATEWAY_PORT
    wait_ms: int = 2000
    """How long order entry waits for the input's event before answering 202."""
    max_body_bytes: int = 4096
    keys: list[KeyEntry] = []
    rate_per_key: float = 50.0
    burst_per_key: int = 100
    rate_per_address: float = 20.0
    burst_per_address: int = 40
    decimals: dict[str, int] = {}
    """Digits after the point the page shows, per pair (default 8)."""
    ws_queue: int = 1000
    """Trades a WebSocket client may have unsent before it is closed."""
    ws_interval_ms: int = 100
    """The least time between two flushes of a pair's WebSocket messages (0: none)."""
    send_buffer_bytes: int = 262_144
    """The kernel's send buffer of each connection (0: the kernel's own, which may grow to
    megabytes a client): what a client that stops reading can hold before its sends block."""
    trades_kept: int = 10_000
    """Trades per pair held in memory for ``/trades``, ``/candles`` and new WebSocket clients."""

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ConfigError("gateway: pairs is empty: give --pairs P1,P2 or pairs = [...]")
        for pair in self.pairs:
            if not PAIR_RE.fullmatch(pair):
                raise ConfigError(
                    f"gateway: pair {pair!r} is not 1-32 letters, digits, '.', '_' or '-'"
                )
        if len(set(self.pairs)) != len(self.pairs):
            raise ConfigError(f"gateway: pairs {self.pairs} names a pair twice")
        positive = {
            "port": self.port, "wait_ms": self.wait_ms, "max_body_bytes": self.max_body_bytes,
            "rate_per_key": self.rate_per_key, "burst_per_key": self.burst_per_key,
            "rate_per_address": self.rate_per_address,
            "burst_per_address": self.burst_per_address, "ws_queue": self.ws_queue,
            "trades_kept": self.trades_kept,
        }  # fmt: skip
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"gateway: {name} = {value} must be above 0")
        if self.ws_interval_ms < 0:
            raise ConfigError(f"gateway: ws_interval_ms = {self.ws_interval_ms} is below 0")
        if self.send_buffer_bytes < 0:
            raise ConfigError(f"gateway: send_buffer_bytes = {self.send_buffer_bytes} is below 0")
        if self.port > 65535:
            raise ConfigError(f"gateway: port = {self.port} is not a TCP port")
        for pair, places in self.decimals.items():
            if pair not in self.pairs or not 0 <= places <= 8:
                raise ConfigError(
                    f"gateway: decimals {pair} = {places}: a served pair and 0 to 8 digits"
                )


def load_gateway(
    path: str | Path | None = None, env: Mapping[str, str] | None = None, **flags: Any
) -> tuple[GatewayConfig, Config]:
    """The gateway's settings and the Redis connection's (a daemon :class:`Config` of the
    first pair: URL, timeouts, TLS files, key prefix). ``flags``: ``pairs`` (a comma-separated
    string), ``host``, ``port`` and ``redis_url``; None is ignored."""
    env = os.environ if env is None else env
    path = path or env.get("SHARD_CONFIG") or None
    values: dict[str, Any] = {}
    if path:
        values.update(read_table(path, "gateway"))
    for name in GatewayConfig.__struct_fields__:
        var = f"SHARD_GATEWAY_{name.upper()}"
        if var in env and name not in ("keys", "decimals"):
            values[name] = env[var]
    redis_url = flags.pop("redis_url", None)
    values.update({k: v for k, v in flags.items() if v is not None})
    if isinstance(values.get("pairs"), str):
        values["pairs"] = [p.strip() for p in values["pairs"].split(",") if p.strip()]
    try:
        gateway = msgspec.convert(values, GatewayConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"bad gateway configuration: {exc}") from None
    connection = load(path, env, pair=gateway.pairs[0], redis_url=redis_url)
    return gateway, connection
