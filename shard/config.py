"""Typed, frozen configuration: ``config/*.toml``, then environment, then command-line flags.

Precedence, lowest first:

1. the defaults of :class:`Config`;
2. the ``[shard]`` table of a TOML file: ``--config FILE``, else ``$SHARD_CONFIG``, else none;
3. the environment: ``SHARD_PAIR``, ``REDIS_URL``, and ``SHARD_<FIELD>`` for every other field
   (``SHARD_BATCH_SIZE=500``, ``SHARD_KEY_PREFIX=staging:``);
4. command-line flags (``--pair``, ``--redis-url``).

A wrong value stops the daemon at start with one sentence naming the field and the value (a
URL's password replaced by ``***``). ``redis_url`` is parsed the way redis-py will parse it, so a
port, host, database or IPv6 bracket that redis-py would reject, or silently replace with its
default, is refused here. It may carry no query parameters: redis-py lets them override any
connection option the daemon sets (``?protocol=3`` breaks the raw replies, ``?socket_timeout=``
slips past the ``block_ms`` check), and every option a user may change has a key of its own.
The one exception is ``?db=N`` on a ``unix://`` URL, whose path is the socket's.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import SplitResult, parse_qsl, urlsplit

import msgspec

from shard.defaults import REDIS_URL
from shard.terms import Terms

PAIR_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,32}")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field and the value."""


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a shard daemon needs to know. Times in seconds unless the name says ms."""

    pair: str = ""
    redis_url: str = REDIS_URL
    tls_ca_file: str = ""
    """PEM file of the CA that signed the server's certificate, trusted besides the system's
    store (rediss:// only). Empty: the system's store alone (or ``SSL_CERT_FILE``)."""
    tls_cert_file: str = ""
    """PEM client certificate for a server with ``tls-auth-clients``; needs ``tls_key_file``."""
    tls_key_file: str = ""
    """The client certificate's unencrypted PEM private key (may be the same file)."""
    tls_check_hostname: bool = True
    """Whether the server's certificate must name the URL's host. False still verifies the
    certificate against the CA: for a certificate made for another name than the one dialled."""
    key_prefix: str = ""
    group: str = "shard"
    """Consumer group on ``orders:{P}``; the consumer is named after the pair."""
    ack: Literal["xack", "setid"] = "setid"
    """How the commit acknowledges its inputs. ``setid``: read with XREAD from the last input
    applied, move the group with ``XGROUP SETID ... ENTRIESREAD`` in the commit (no pending
    entries; less server CPU and fewer AOF bytes per input: docs/benchmarks.md). It needs Redis
    7.0+, like the commit script. ``xack``: read with XREADGROUP, XACK in the commit."""
    batch_size: int = 1000
    """Most input entries read, applied and committed together."""
    block_ms: int = 1000
    """How long one read waits for input; also bounds how long SIGTERM waits."""
    socket_timeout: float = 10.0
    connect_timeout: float = 5.0
    snapshot_every_inputs: int = 100_000
    snapshot_every_seconds: float = 300.0
    snapshot_chunk_bytes: int = 2**20
    snapshot_in_background: bool = True
    """Write snapshots a slice at a time between batches (see :mod:`shard.snapshotter`), not
    all at once (which stalls matching for the whole encoding and writing)."""
    snapshot_slice_orders: int = 250
    """Orders a snapshot slice encodes a millisecond: a slice runs at most once a millisecond
    and is the most a batch waits for the snapshot (docs/benchmarks.md gives its time); after
    a long batch it takes up to 16 times as many (:data:`shard.snapshotter.CATCH_UP`)."""
    trim_inputs: bool = True
    """After a snapshot, trim ``orders:{P}`` below it (XTRIM MINID), keeping ``keep_inputs_ms``."""
    keep_inputs_ms: int = 0
    output_maxlen: int = 0
    """Approximate cap on ``trades:{P}``/``events:{P}`` (XADD MAXLEN ~); 0 keeps everything."""
    depth_maxlen: int = 100_000
    """Approximate cap on ``depth:{P}`` (XTRIM MAXLEN ~ in the commit); 0 keeps everything. A
    client that falls behind the trim resyncs from ``book:{P}``, which is never trimmed."""
    stp_default: str = "cancel_taker"
    """Self-trade prevention mode of an order that gives none (``cancel_taker``,
    ``cancel_maker``, ``cancel_both``, ``decrement`` or ``none``)."""
    maker_fee_ppm: int = 0
    """Maker fee in parts per million of each trade's notional; negative: a rebate."""
    taker_fee_ppm: int = 0
    """Taker fee in parts per million of each trade's notional (maker + taker >= 0). The
    trading terms (these three) take effect at a start, from the first input after the
    checkpoint, never mid-batch (:mod:`shard.terms`)."""
    max_entry_bytes: int = 16_384
    """An input entry larger than this (names + values) is rejected as ``oversize``."""
    read_budget_bytes: int = 16 * 2**20
    """The most bytes of input one read may carry (see :mod:`shard.reads`): its count is this
    divided by ``max_entry_bytes``, or by the size of the largest oversize entry just read."""
    instance: str = ""
    """Who holds the pair's lease: default the host name. A daemon restarted under the same
    name takes its lease back at once; another name waits as a standby until it expires."""
    lease_ttl: float = 10.0
    """The lease expires this long after its holder last renewed it (once a second)."""
    health_ttl: float = 15.0
    """The heartbeat key expires after this long without a loop iteration."""
    metrics_port: int = 0
    """Prometheus metrics on this port (0: off)."""
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    reconnect_max_delay: float = 10.0
    cluster: Literal["auto", "yes", "no"] = "auto"
    """Redis Cluster: ``auto`` asks the URL's server once at start (``INFO cluster``); ``yes``
    treats the URL as a node of a cluster without asking; ``no`` never asks. On a cluster the
    daemon talks to the master that owns its pair's slot, whichever node the URL names, and
    finds it again after a failover or a slot migration (docs/cluster.md)."""

    def __post_init__(self) -> None:
        if not PAIR_RE.fullmatch(self.pair):
            raise ConfigError(
                f"pair must be 1-32 letters, digits, '-', '_' or '.', got {self.pair!r}"
            )
        for name in (
            "batch_size",
            "block_ms",
            "snapshot_every_inputs",
            "snapshot_chunk_bytes",
            "snapshot_slice_orders",
            "max_entry_bytes",
            "read_budget_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.block_ms / 1000 >= self.socket_timeout:
            raise ConfigError(
                f"block_ms ({self.block_ms}) must be shorter than socket_timeout "
                f"({self.socket_timeout} s), or a blocked read would time out"
            )
        for name in ("output_maxlen", "depth_maxlen"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if (problem := self.terms.problem()) is not None:
            raise ConfigError(problem)
        if self.lease_ttl <= 2:
            raise ConfigError(f"lease_ttl must be > 2 seconds, got {self.lease_ttl!r}")
        _check_url(self.redis_url)
        _check_tls(self)

    @property
    def terms(self) -> Terms:
        """The trading terms this configuration asks for."""
        return Terms(self.stp_default, self.maker_fee_ppm, self.taker_fee_ppm)

    def tls_options(self) -> dict[str, Any]:
        """The redis-py client arguments of the TLS keys: none unless ``redis_url`` is
        rediss://. The certificate is always verified (there is no key to turn that off)."""
        if not self.redis_url.startswith("rediss://"):
            return {}
        return {
            "ssl_ca_certs": self.tls_ca_file or None,
            "ssl_certfile": self.tls_cert_file or None,
            "ssl_keyfile": self.tls_key_file or None,
            "ssl_check_hostname": self.tls_check_hostname,
            "ssl_cert_reqs": "required",
        }


SCHEMES: Final = ("redis://", "rediss://", "unix://")
HOST_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,253}")
DB_PATH_RE: Final = re.compile(r"/?|/[0-9]{1,9}")

# What to use instead of the redis-py URL query parameters people reach for.
QUERY_INSTEAD: Final = {
    "socket_timeout": "the config key socket_timeout",
    "socket_connect_timeout": "the config key connect_timeout",
    "ssl_ca_certs": "the config key tls_ca_file",
    "ssl_certfile": "the config key tls_cert_file",
    "ssl_keyfile": "the config key tls_key_file",
    "ssl_check_hostname": "the config key tls_check_hostname",
    "db": "the URL's path (redis://host:port/N)",
    "password": "user:password@ before the host",
    "username": "user:password@ before the host",
}


def _check_url(url: str) -> None:
    """Refuse what redis-py would reject with a traceback or silently replace by a default."""
    shown = repr(_redact(url))
    if not url.startswith(SCHEMES):
        raise ConfigError(f"redis_url must be redis://, rediss:// or unix://, got {shown}")
    if "#" in url:
        raise ConfigError(
            f"redis_url must not contain '#' (write it as %23 in a password), got {shown}"
        )
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigError(
            f"redis_url has a bad host (an IPv6 address goes in [ ]: redis://[::1]:6379/0), "
            f"got {shown}"
        ) from None
    unix = parts.scheme == "unix"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if unix and name == "db":
            if not re.fullmatch(r"[0-9]{1,9}", value):
                raise ConfigError(f"redis_url's db must be a number >= 0, got {shown}")
            continue
        instead = QUERY_INSTEAD.get(name, "the config keys (the daemon sets its own options)")
        raise ConfigError(
            f"redis_url must not carry the query parameter {name!r}: use {instead} instead"
        )
    if unix:
        if parts.netloc.rpartition("@")[2]:
            raise ConfigError(
                f"redis_url must name no host in a unix:// URL (unix:///path), got {shown}"
            )
        if not parts.path:
            raise ConfigError(f"redis_url names no socket path (unix:///path), got {shown}")
        return
    _check_host(parts, shown)
    if not DB_PATH_RE.fullmatch(parts.path):
        raise ConfigError(f"redis_url's path must be a database number (/0, /1, ...), got {shown}")


def _check_host(parts: SplitResult, shown: str) -> None:
    host = parts.hostname or ""
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            host = ""
    elif not HOST_RE.fullmatch(host):
        host = ""
    if not host:
        raise ConfigError(
            f"redis_url's host must be a name, an IPv4 address or an [IPv6] address, got {shown}"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ConfigError(f"redis_url's port must be a number from 1 to 65535, got {shown}")


TLS_FILES: Final = ("tls_ca_file", "tls_cert_file", "tls_key_file")


def _check_tls(config: Config) -> None:
    """TLS keys only with rediss://, certificate and key together, and files that load: a file
    that does not would otherwise fail every connection, and be retried as a network error."""
    given = [name for name in TLS_FILES if getattr(config, name)]
    if not config.tls_check_hostname:
        given.append("tls_check_hostname")
    if given and not config.redis_url.startswith("rediss://"):
        raise ConfigError(
            f"{given[0]} applies to a rediss:// redis_url only, got {_redact(config.redis_url)!r}"
        )
    cert, key = config.tls_cert_file, config.tls_key_file
    if bool(cert) != bool(key):
        have, need = (
            ("tls_cert_file", "tls_key_file") if cert else ("tls_key_file", "tls_cert_file")
        )
        raise ConfigError(f"{have} needs {need} as well (a client certificate and its key)")
    for name in TLS_FILES:
        path = getattr(config, name)
        if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise ConfigError(f"{name} must be a readable file, got {path!r}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if config.tls_ca_file:
        try:
            context.load_verify_locations(cafile=config.tls_ca_file)
        except ssl.SSLError:
            raise ConfigError(
                f"tls_ca_file holds no PEM certificate, got {config.tls_ca_file!r}"
            ) from None
    if cert:
        _check_cert_and_key(context, cert, key)


def _check_cert_and_key(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Load the client certificate and key as the connection will, and say which one is wrong."""
    asked = []

    def password() -> bytes:
        asked.append(True)  # an encrypted key: OpenSSL would otherwise prompt on the terminal
        return b""

    try:
        context.load_cert_chain(cert, key, password=password)
    except ssl.SSLError:
        pass
    else:
        return
    if asked:
        raise ConfigError(f"tls_key_file must be an unencrypted key, got an encrypted {key!r}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError:
        raise ConfigError(f"tls_cert_file holds no PEM certificate, got {cert!r}") from None
    raise ConfigError(
        f"tls_key_file is not the PEM private key of tls_cert_file {cert!r}, got {key!r}"
    )


def _redact(url: str) -> str:
    """A URL with any password replaced, for messages and logs. Everything between the user
    name's ``:`` and the last ``@`` goes, so an unescaped ``@``, ``/`` or ``#`` in a password
    does not leak the rest of it; so does a ``password=`` query value."""
    url = re.sub(r"(://[^:@]*:).*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


ENV_NAMES: Final = {"pair": "SHARD_PAIR", "redis_url": "REDIS_URL"}


def read_table(path: str | Path, name: str) -> dict[str, Any]:
    """The ``[name]`` table of the TOML file at ``path`` (empty if it has none)."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f).get(name, {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    return table


def load(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    **flags: Any,
) -> Config:
    """Build the config from a TOML file, the environment and flags (None flags are ignored)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = path or env.get("SHARD_CONFIG") or None
    if path:
        values.update(read_table(path, "shard"))
    for name in Config.__struct_fields__:
        var = ENV_NAMES.get(name, f"SHARD_{name.upper()}")
        if var in env:
            values[name] = env[var]
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        # Environment values are strings: lax conversion turns "500" into 500, "true" into True.
        return msgspec.convert(values, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"bad configuration: {exc}") from None


class Keys:
    """Every Redis key name of one pair, built in one place. All carry the hash tag ``{P}``, so
    one pair lives in one Redis Cluster slot and one script may touch all of them."""

    __slots__ = (
        "book",
        "checkpoint",
        "depth",
        "events",
        "health",
        "lease",
        "orders",
        "pair",
        "prefix",
        "snapshot",
        "snapshot_writing",
        "ticker",
        "trades",
    )

    def __init__(self, pair: str, prefix: str = "") -> None:
        tag = f"{{{pair}}}"
        self.pair = pair
        self.prefix = prefix
        self.orders = f"{prefix}orders:{tag}"
        self.trades = f"{prefix}trades:{tag}"
        self.events = f"{prefix}events:{tag}"
        self.book = f"{prefix}book:{tag}"
        self.depth = f"{prefix}depth:{tag}"
        self.ticker = f"{prefix}ticker:{tag}"
        self.checkpoint = f"{prefix}shard:{tag}:checkpoint"
        self.snapshot = f"{prefix}shard:{tag}:snapshot"
        self.snapshot_writing = f"{prefix}shard:{tag}:snapshot-writing"
        self.health = f"{prefix}shard:{tag}:health"
        self.lease = f"{prefix}shard:{tag}:lease"

    def snapshot_chunk(self, generation: int, index: int) -> str:
        return f"{self.snapshot}:{generation}:{index}"
