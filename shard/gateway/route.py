"""Where each pair's commands go: the one server of the URL, or on a Redis Cluster the master
that owns the pair's slot (docs/gateway.md, "On a Redis Cluster").

The gateway asks once, at start, whether the URL names a cluster node (:func:`is_cluster`:
the ``cluster`` key, else ``INFO cluster``); on one server nothing here runs again. On a
cluster each pair gets a :class:`PairRoute`: its own plain and raw clients on its slot's
owner (for order entry, the book view, the outputs reader and the replica: the same commands
as on one server), found with the daemon's :class:`~shard.cluster_link.ClusterLink`
(``CLUSTER SLOTS`` of the nodes learnt, ``MOVED`` hint first). Any error of the pair's reads
or XADDs (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``, ``MASTERDOWN``, ``READONLY``,
``UNBLOCKED``, a lost connection) calls :meth:`PairRoute.repair`, which resolves the owner
again and moves the pair's clients there if it changed. Cost: one ``CLUSTER SLOTS`` a pair
at start, and O(nodes) round trips a repair.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from redis.asyncio import Redis

from shard.cluster import cluster_enabled, node_url
from shard.cluster_link import ClusterLink
from shard.config import Config
from shard.gateway.feed import PairFeed
from shard.outage import NotYet
from shard.recovery import RecoveryError
from shard.transport import RETRIED, connect, describe, plain_async_client

log = logging.getLogger("shard.gateway")


async def is_cluster(connection: Config, client: Redis) -> bool:
    """Whether the URL names a cluster node: the ``cluster`` key (``yes``/``no``), else one
    ``INFO cluster`` on ``client``; a unix socket is never a cluster. Raises what the server
    raises (the caller waits it out)."""
    if connection.cluster == "no" or connection.redis_url.startswith("unix://"):
        return False
    if connection.cluster == "yes":
        return True
    return cluster_enabled(await client.info("cluster"))


class PairRoute:
    """A pair's clients on the master owning its slot; moved when the owner changes.

    Until the first move the feed keeps the gateway's shared clients (the URL's node); after
    it, the route owns the feed's clients and closes them when it moves them again."""

    def __init__(self, feed: PairFeed, connection: Config) -> None:
        self.feed = feed
        self.config = msgspec.structs.replace(connection, pair=feed.pair, cluster="yes")
        self.link = ClusterLink(self.config)
        self._own: tuple[Redis, Redis] | None = None
        self._lock = asyncio.Lock()

    async def repair(self, exc: BaseException | None = None) -> bool:
        """Resolve the slot's owner again after ``exc`` (a ``MOVED`` names the node to ask
        first) and move the feed's clients there; True if they moved. No owner known yet
        (mid-failover) is False: the caller backs off and calls again; so is a repair already
        under way (a burst of failed requests makes one). O(nodes) round trips."""
        if exc is not None:
            self.link.failed(exc)
        if self._lock.locked():
            return False
        async with self._lock:
            try:
                node = await self.link.owner(self.feed.client)
            except (NotYet, RecoveryError, *RETRIED) as error:
                log.warning("%s: slot owner not known yet: %s", self.feed.pair, describe(error))
                return False
            if node is None:
                return False
            url = node_url(self.config.redis_url, node)
            client = plain_async_client(self.config, url, client_name="shard-gateway")
            old, self._own = self._own, (client, connect(self.config, url))
            self.feed.bind(*self._own)
            log.info("%s: slot owner changed: now %s", self.feed.pair, node)
        if old is not None:
            for stale in old:
                with contextlib.suppress(*RETRIED):
                    await stale.aclose()
        return True

    async def aclose(self) -> None:
        """Close the clients the route made (the shared ones are the gateway's)."""
        for client in self._own or ():
            with contextlib.suppress(*RETRIED):
                await client.aclose()
        self._own = None
