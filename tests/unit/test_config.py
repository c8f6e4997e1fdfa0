"""Configuration: file, environment and flags in that order; bad values named; key names."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shard.config import Config, ConfigError, Keys, load

REPO = Path(__file__).resolve().parents[2]


def test_example_file_loads_with_every_default() -> None:
    config = load(REPO / "config" / "shard.toml", env={}, pair="BTC-USDT")
    assert config == Config(pair="BTC-USDT")


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[shard]\npair = "A"\nbatch_size = 10\nblock_ms = 50\n')
    env = {
        "SHARD_PAIR": "B",
        "SHARD_BATCH_SIZE": "20",
        "REDIS_URL": "rediss://u:p@h:1/2",
        "SHARD_TRIM_INPUTS": "false",
    }
    config = load(path, env=env, pair="C")
    assert (config.pair, config.batch_size, config.block_ms) == ("C", 20, 50)
    assert config.redis_url == "rediss://u:p@h:1/2" and config.trim_inputs is False
    assert load(None, env={"SHARD_CONFIG": str(path)}).pair == "A"


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"pair": "BTC/USDT"}, ["pair", "BTC/USDT"]),
        ({"pair": "x" * 33}, ["pair"]),
        ({"pair": ""}, ["pair"]),
        ({"pair": "A", "batch_size": "0"}, ["batch_size", "0"]),
        ({"pair": "A", "ack": "nope"}, ["ack", "nope"]),
        ({"pair": "A", "block_ms": "20000"}, ["block_ms", "socket_timeout"]),
        ({"pair": "A", "redis_url": "http://x:secret@h"}, ["redis_url", "***"]),
        ({"pair": "A", "batch_size": "lots"}, ["batch_size"]),
        ({"pair": "A", "colour": "red"}, ["colour"]),
    ],
)
def test_bad_values_are_named(values: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, env={}, **values)
    for word in words:
        assert word in str(info.value)
    assert "secret" not in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[shard\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(bad, env={}, pair="A")


def test_every_key_carries_the_hash_tag() -> None:
    keys = Keys("ETH-USDT", "staging:")
    names = [
        keys.orders,
        keys.trades,
        keys.events,
        keys.book,
        keys.checkpoint,
        keys.snapshot,
        keys.health,
        keys.snapshot_chunk(3, 0),
    ]
    assert all(n.startswith("staging:") and "{ETH-USDT}" in n for n in names)
    assert keys.orders == "staging:orders:{ETH-USDT}"


# --- redis_url: one sentence naming the key, never the password, for every bad URL -----------

SENTENCE = re.compile(r"[^\n]+")  # one line, no traceback


def config_error(**values: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(None, env={}, pair="A", **values)
    message = str(info.value)
    assert SENTENCE.fullmatch(message), message
    assert "secret" not in message, message
    return message


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://:secret@[::1/0", ["redis_url", "IPv6", "***"]),
        ("redis://:secret@[zz]:6379/0", ["redis_url", "host"]),
        ("redis://:secret@h:abc/0", ["redis_url", "port"]),
        ("redis://:secret@h:99999/0", ["redis_url", "port"]),
        ("redis://:secret@h:0/0", ["redis_url", "port"]),
        ("redis://:secret@/0", ["redis_url", "host"]),
        ("redis://:secret@h:6379/x", ["redis_url", "database"]),
        ("redis://:secret@h:6379/0/1", ["redis_url", "database"]),
        ("redis://:secret@h:6379/-1", ["redis_url", "database"]),
        ("redis://:sec#ret@h:6379/0", ["redis_url", "#", "%23"]),
        ("redis://u:p/secret@h:6379/0", ["redis_url"]),
        ("redis://u:p@secret@h:bad/0", ["redis_url", "port"]),
        ("unix://", ["redis_url", "socket"]),
        ("unix://:secret@host/tmp/redis.sock", ["redis_url", "host"]),
        ("unix://:secret@/tmp/redis.sock?db=x", ["redis_url", "db"]),
    ],
)
def test_bad_urls_are_one_sentence_without_the_password(url: str, words: list[str]) -> None:
    message = config_error(redis_url=url)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("query", "instead"),
    [
        ("protocol=3", "protocol"),
        ("socket_timeout=0.5", "socket_timeout"),
        ("socket_timeout=abc", "socket_timeout"),
        ("socket_connect_timeout=1", "connect_timeout"),
        ("ssl_ca_certs=/ca.crt", "tls_ca_file"),
        ("ssl_certfile=/c.crt", "tls_cert_file"),
        ("ssl_keyfile=/c.key", "tls_key_file"),
        ("ssl_check_hostname=false", "tls_check_hostname"),
        ("ssl_cert_reqs=none", "ssl_cert_reqs"),
        ("db=3", "path"),
        ("password=secret", "user:password@"),
        ("retry_on_timeout=yes&protocol=3", "retry_on_timeout"),
        ("client_name=", "client_name"),
    ],
)
def test_url_query_parameters_are_refused(query: str, instead: str) -> None:
    """redis-py lets a query parameter override any connection option the daemon sets."""
    message = config_error(redis_url=f"rediss://u:secret@h:6380/0?{query}")
    name = query.partition("=")[0]
    assert "redis_url" in message and repr(name) in message and instead in message, message


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://h",
        "redis://h/",
        "redis://h:/15",
        "redis://[::1]:6379/0",
        "rediss://user:p%40ss@redis.internal:6380/2",
        "redis://redis_1:6379/0",
        "unix:///run/redis/redis.sock",
        "unix://:pw@/run/redis/redis.sock?db=2",
    ],
)
def test_good_urls(url: str) -> None:
    assert load(None, env={}, pair="A", redis_url=url).redis_url == url


# --- TLS keys -------------------------------------------------------------------------------


@dataclass
class Pem:
    cert: str
    key: str
    other_key: str
    encrypted_key: str
    junk: str


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Pem:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("pem")
    ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    openssl("genpkey", *ec, "-out", str(d / "k.pem"))
    openssl("genpkey", *ec, "-out", str(d / "k2.pem"))
    openssl("genpkey", *ec, "-aes256", "-pass", "pass:secret", "-out", str(d / "enc.pem"))
    openssl(
        "req", "-x509", "-new", "-key", str(d / "k.pem"), "-subj", "/CN=test", "-days", "2",
        "-out", str(d / "c.pem"),
    )  # fmt: skip
    (d / "junk.pem").write_text("not a certificate\n")
    return Pem(*(str(d / n) for n in ("c.pem", "k.pem", "k2.pem", "enc.pem", "junk.pem")))


TLS_URL = "rediss://u:secret@h:6380/0"


def test_tls_keys_load_from_file_and_environment(tmp_path: Path, pem: Pem) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[shard]\nredis_url = "{TLS_URL}"\ntls_ca_file = "{pem.cert}"\n')
    env = {
        "SHARD_TLS_CERT_FILE": pem.cert,
        "SHARD_TLS_KEY_FILE": pem.key,
        "SHARD_TLS_CHECK_HOSTNAME": "false",
    }
    config = load(path, env=env, pair="A")
    assert (config.tls_ca_file, config.tls_cert_file, config.tls_key_file) == (
        pem.cert,
        pem.cert,
        pem.key,
    )
    assert config.tls_options() == {
        "ssl_ca_certs": pem.cert,
        "ssl_certfile": pem.cert,
        "ssl_keyfile": pem.key,
        "ssl_check_hostname": False,
        "ssl_cert_reqs": "required",
    }


def test_tls_options_are_empty_without_rediss() -> None:
    assert Config(pair="A").tls_options() == {}
    assert Config(pair="A", redis_url="rediss://h/0").tls_options()["ssl_ca_certs"] is None


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"tls_ca_file": "{cert}"}, ["tls_ca_file", "rediss://", "***"]),
        ({"tls_cert_file": "{cert}", "tls_key_file": "{key}"}, ["tls_cert_file", "rediss://"]),
        ({"tls_check_hostname": "false"}, ["tls_check_hostname", "rediss://"]),
    ],
)
def test_tls_keys_need_a_rediss_url(pem: Pem, values: dict[str, str], words: list[str]) -> None:
    values = {k: v.format(cert=pem.cert, key=pem.key) for k, v in values.items()}
    message = config_error(redis_url="redis://:secret@h:6379/0", **values)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"tls_cert_file": "{cert}"}, ["tls_cert_file", "tls_key_file"]),
        ({"tls_key_file": "{key}"}, ["tls_key_file", "tls_cert_file"]),
        ({"tls_ca_file": "/nonexistent/ca.pem"}, ["tls_ca_file", "/nonexistent/ca.pem"]),
        (
            {"tls_cert_file": "{cert}", "tls_key_file": "/nonexistent/k.pem"},
            ["tls_key_file", "/nonexistent/k.pem"],
        ),
        ({"tls_ca_file": "{dir}"}, ["tls_ca_file"]),
        ({"tls_ca_file": "{junk}"}, ["tls_ca_file", "{junk}"]),
        ({"tls_cert_file": "{junk}", "tls_key_file": "{key}"}, ["tls_cert_file", "{junk}"]),
        ({"tls_cert_file": "{cert}", "tls_key_file": "{other}"}, ["tls_key_file", "{other}"]),
        ({"tls_cert_file": "{cert}", "tls_key_file": "{enc}"}, ["tls_key_file", "encrypted"]),
    ],
)
def test_bad_tls_files_are_named(pem: Pem, values: dict[str, str], words: list[str]) -> None:
    names = {
        "cert": pem.cert,
        "key": pem.key,
        "other": pem.other_key,
        "enc": pem.encrypted_key,
        "junk": pem.junk,
        "dir": str(Path(pem.cert).parent),
    }
    values = {k: v.format(**names) for k, v in values.items()}
    message = config_error(redis_url=TLS_URL, **values)
    for word in words:
        assert word.format(**names) in message, message
