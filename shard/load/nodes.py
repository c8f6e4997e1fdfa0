"""Which server each pair's load goes to: the one server of the URL, or on a Redis Cluster the
master that owns each pair's slot.

``shard load`` sends on raw connections (packed commands, replies read by hand), which only
work on the node that serves the keys. On a cluster (``INFO cluster`` of the URL's node says
so, asked once), :func:`open_route` asks that node ``CLUSTER SLOTS``, finds each pair's owner
(:func:`shard.cluster.owner_of` of :func:`shard.cluster.pair_slot`) and gives every pair a
plain client on its owner, one per node whatever the number of pairs on it; every node the
reply names is kept as a seed. A failover during the run is followed: each pair's raw
connections find the owner again by themselves (:mod:`shard.load.follow`), and
:meth:`Route.move` points the pair's probe client at the new owner. The server figures (CPU,
RSS, forks) are summed over the owner nodes, the ones that carry the load (replicas and nodes
without a pair are left out); after a failover, over the new owners.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from shard.cluster import (
    Node,
    cluster_enabled,
    node_of_url,
    node_url,
    owner_of,
    pair_slot,
    parse_slots,
)

Factory = Callable[[str], Redis]


@dataclass
class Route:
    """A client per pair (``by_pair``) and each distinct node's client (``nodes``, by
    address); ``cluster`` says whether the URL named a cluster node, ``owner`` each pair's
    node and ``seeds`` every node the slot map named."""

    by_pair: dict[str, Redis]
    nodes: dict[str, Redis]
    cluster: bool
    owner: dict[str, Node] = field(default_factory=dict)
    seeds: list[Node] = field(default_factory=list)

    def of(self, pair: str) -> Redis:
        return self.by_pair[pair]

    async def move(self, pair: str, node: Node, client: Callable[[], Redis]) -> None:
        """Point ``pair`` at ``node`` (``client()`` makes its client if the route has none);
        a node no pair is on any more is closed and left out of the figures."""
        old = self.owner.get(pair)
        if old == node:
            return
        if str(node) not in self.nodes:
            self.nodes[str(node)] = client()
        self.by_pair[pair] = self.nodes[str(node)]
        self.owner[pair] = node
        if old is not None and old not in self.owner.values():
            gone = self.nodes.pop(str(old), None)
            if gone is not None:
                await gone.aclose()

    async def aclose(self) -> None:
        for client in self.nodes.values():
            await client.aclose()


def owners(reply: Sequence[Any], asked: Node, pairs: Sequence[str], prefix: str) -> dict[str, Node]:
    """Each pair's owner in a ``CLUSTER SLOTS`` reply from ``asked``; ValueError when a pair's
    slot has no master (the cluster is not ready). O(pairs x ranges)."""
    ranges = parse_slots(reply, asked)
    found: dict[str, Node] = {}
    for pair in pairs:
        slot = pair_slot(pair, prefix)
        owner = owner_of(ranges, slot)
        if owner is None:
            raise ValueError(f"no node of the cluster serves slot {slot} (pair {pair})")
        found[pair] = owner.master
    return found


async def open_route(url: str, pairs: Sequence[str], prefix: str, factory: Factory) -> Route:
    """The route of ``pairs`` from ``url``: ``factory(url)`` makes each client (the caller's
    options: TLS, timeouts)."""
    first = factory(url)
    try:
        enabled = cluster_enabled(await first.info("cluster"))
        if not enabled:
            here = node_of_url(url)
            return Route(
                {p: first for p in pairs}, {str(here): first}, False, dict.fromkeys(pairs, here)
            )
        reply = await first.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
    except BaseException:
        await first.aclose()
        raise
    await first.aclose()
    asked = node_of_url(url)
    found = owners(reply, asked, pairs, prefix)
    ranges = parse_slots(reply, asked)
    seeds = list(dict.fromkeys(n for r in ranges for n in (r.master, *r.replicas)))
    nodes: dict[str, Redis] = {}
    by_pair: dict[str, Redis] = {}
    for pair, owner in found.items():
        if str(owner) not in nodes:
            nodes[str(owner)] = factory(node_url(url, owner))
        by_pair[pair] = nodes[str(owner)]
    return Route(by_pair, nodes, True, found, [asked, *seeds])
