"""The daemon's way to its pair's slot on a Redis Cluster: the I/O that :mod:`shard.cluster`'s
decisions need.

:meth:`ClusterLink.owner` is called at the start of every repair. The first time, it asks the
URL's server whether it runs in cluster mode (``INFO cluster``; the ``cluster`` key may say so
instead, or forbid the question); on one server it then returns None at once, forever, so the
single-server daemon pays one command per run. On a cluster it asks ``CLUSTER SLOTS``, of the
node a ``MOVED`` named first, then of the last owner, then of every other node learnt
(:class:`~shard.cluster.Topology`), and returns the master that owns the slot when it is not
the node the daemon talks to: the daemon then moves its client there (:meth:`Shard._bind`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from shard.cluster import (
    Node,
    Topology,
    cluster_enabled,
    moved_to,
    node_of_url,
    node_url,
    pair_slot,
    parse_slots,
)
from shard.config import Config
from shard.logs import Log
from shard.outage import NotYet
from shard.recovery import RecoveryError
from shard.transport import RETRIED, describe, plain_async_client

log = Log("shard.daemon")


class ClusterLink:
    """Where the pair's slot is served: None until known to be a cluster (:attr:`topology`)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.topology: Topology | None = None
        """On a cluster: the pair's slot, its owner and the nodes learnt (None: one server)."""
        self.node: Node | None = None
        """On a cluster: the node the daemon's client talks to."""
        self._asked = config.cluster == "no"
        self._hint: Node | None = None

    def failed(self, exc: BaseException) -> None:
        """Note an error of the loop: a ``MOVED`` names the node to ask first next time."""
        if self.topology is not None:
            self._hint = moved_to(exc)

    async def owner(self, redis: Redis) -> Node | None:
        """The master that owns the pair's slot if the daemon must move its client there;
        None to stay (one server, or already on the owner). ``redis`` is the daemon's client,
        on which cluster mode is asked once. :class:`NotYet` if no node names an owner."""
        if self.topology is None:
            if self._asked:
                return None
            self._asked = True
            if self.config.cluster == "auto" and not cluster_enabled(await redis.info("cluster")):
                return None
            self.topology = self._start()
        owner = await self._resolve(self.topology)
        if owner == self.node:
            return None
        self.node = owner
        return owner

    def _start(self) -> Topology:
        url = self.config.redis_url
        if url.startswith("unix://"):
            raise RecoveryError(
                "redis_url is unix:// but names a node of a Redis Cluster, whose nodes are "
                "reached over TCP: give one node's redis:// URL"
            )
        slot = pair_slot(self.config.pair, self.config.key_prefix)
        self.node = node_of_url(url)
        log.info("redis cluster: finding the owner of the pair's slot", slot=slot)
        return Topology(slot, [self.node])

    async def _resolve(self, topology: Topology) -> Node:
        """The owner as the first node that answers sees it. O(nodes) round trips at most."""
        hint, self._hint = self._hint, None
        owner, errors = await find_owner(topology, hint, self._slots)
        if owner is None:
            raise NotYet(f"no node names the owner of slot {topology.slot}: {'; '.join(errors)}")
        return owner

    async def _slots(self, node: Node) -> Any:
        client = plain_async_client(self.config, node_url(self.config.redis_url, node))
        try:
            return await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        finally:
            with contextlib.suppress(*RETRIED):
                await client.aclose()


async def find_owner(
    topology: Topology, hint: Node | None, slots: Callable[[Node], Awaitable[Any]]
) -> tuple[Node | None, list[str]]:
    """The owner of ``topology``'s slot as the first node that answers sees it (None: no node
    names one), asking ``hint`` first, then the last owner, then every node learnt; and why
    each node asked before it did not tell. ``slots(node)`` is that node's ``CLUSTER SLOTS``
    reply. O(nodes) round trips at most."""
    errors = []
    for node in topology.candidates(hint):
        try:
            reply = await slots(node)
        except RETRIED as exc:
            errors.append(f"{node}: {describe(exc)}")
            continue
        owner = topology.learned(parse_slots(reply, node))
        if owner is not None:
            return owner, errors
        errors.append(f"{node}: no node serves slot {topology.slot}")
    return None, errors
