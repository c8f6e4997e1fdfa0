"""Configuration: file, environment and flags in that order; bad values named; key names."""

from __future__ import annotations

from pathlib import Path

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
