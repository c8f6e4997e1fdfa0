"""`shard up` listens where every other command looks by default."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from shard.cli import _config, build_parser
from shard.config import load
from shard.defaults import REDIS_PORT, REDIS_URL
from shard.up import Cluster


@pytest.fixture
def plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "SHARD_CONFIG", "SHARD_PAIR", "SHARD_KEY_PREFIX"):
        monkeypatch.delenv(name, raising=False)


def test_up_listens_on_the_default_url_of_the_other_commands(
    plain_env: None, tmp_path: Path
) -> None:
    parser = build_parser()
    up = parser.parse_args(["up"])
    cluster = Cluster(up.pairs.split(","), None, tmp_path, up.port)
    default = load(pair="BTC-USDT").redis_url
    assert cluster.url == default
    for command in ("publish", "trades", "health"):
        args = parser.parse_args([command, "--pair", "BTC-USDT"])
        assert _config(args).redis_url == default, command  # as _client_setup and _health read it
    # shard load takes its URL from the same configuration (shard.load.main).
    assert parser.parse_args(["load"]).redis_url is None


def test_the_default_port_is_the_default_urls() -> None:
    assert urlsplit(REDIS_URL).port == REDIS_PORT
    assert build_parser().parse_args(["up"]).port == REDIS_PORT
