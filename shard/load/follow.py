"""Following a pair's owner through a failover during a run, on a Redis Cluster.

Each pair's sender and event reader (:mod:`shard.load.pair`) hold raw connections on the
master that owns the pair's slot. When one of them meets an *outage* (:func:`outage`: a lost,
reset or refused connection, or a ``MOVED``, ``ASK``, ``READONLY``, ``TRYAGAIN``,
``CLUSTERDOWN``, ``MASTERDOWN``, ``LOADING`` or ``UNBLOCKED`` reply), it drops its connection
and asks its :class:`Follower` for a new one: the follower resolves the owner again with
``CLUSTER SLOTS`` (:class:`shard.cluster.Topology`: the node a ``MOVED`` named first, then the
last owner, then every node learnt), connects there and hands the connection back, backing
off from 50 ms to 0.5 s while no node names a reachable owner, for ``patience`` seconds at
most (then the run ends with the last error). On one server nothing is followed: the first
error ends the run, as before.

Cost: nothing on the hot path; an outage costs one ``CLUSTER SLOTS`` per node asked and one
connection per try.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from shard.cluster import Node, Topology, moved_to, node_url, pair_slot
from shard.cluster_link import find_owner
from shard.transport import REDIS_ERRORS, RETRIED, error_code

Factory = Callable[[str], Redis]

FOLLOWED: Final = frozenset(
    {"MOVED", "ASK", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING", "UNBLOCKED"}
)
"""Error replies that say the slot is served elsewhere, or not yet: follow the owner."""

FIRST_DELAY: Final = 0.05
MAX_DELAY: Final = 0.5


def outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the pair's owner is gone or moving (not a bug of the run)."""
    return isinstance(exc, (*REDIS_ERRORS, OSError)) or error_code(exc) in FOLLOWED


async def connection(client: Redis) -> Connection:
    """A connected connection of ``client``'s pool, for raw sends and reads."""
    conn: Connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    return conn


class Follower:
    """Where one pair's raw connections go: ``node`` (its owner), found again after an outage
    when ``cluster`` (else never). ``reconnects`` counts the connections given again after an
    outage, ``owner_changes`` the times the owner resolved was another node."""

    def __init__(
        self,
        url: str,
        pair: str,
        prefix: str,
        node: Node,
        seeds: Iterable[Node],
        factory: Factory,
        *,
        cluster: bool,
        patience: float = 60.0,
    ) -> None:
        self.url, self.factory, self.cluster, self.patience = url, factory, cluster, patience
        self.node = node
        self.topology = Topology(pair_slot(pair, prefix), [node, *seeds])
        self.topology.owner = node
        self.reconnects = 0
        self.owner_changes = 0
        self._clients: dict[Node, Redis] = {}
        self._hint: Node | None = None

    def _client(self, node: Node) -> Redis:
        client = self._clients.get(node)
        if client is None:
            url = node_url(self.url, node) if self.cluster else self.url
            client = self._clients[node] = self.factory(url)
        return client

    async def connect(self) -> Connection:
        """A connection on the current owner (the first one, before any outage)."""
        return await connection(self._client(self.node))

    def follows(self, exc: BaseException) -> bool:
        """Whether the run carries on after ``exc`` (an outage on a cluster); notes the node
        a ``MOVED`` names, to ask it first."""
        if not self.cluster or not outage(exc):
            return False
        self._hint = moved_to(exc) or self._hint
        return True

    async def reconnect(self, exc: BaseException) -> Connection:
        """A connection on the owner resolved again after ``exc``, with backoff; raises the
        last error once ``patience`` is spent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.patience
        delay = FIRST_DELAY
        last: BaseException = exc
        while loop.time() < deadline:
            try:
                owner = await self._resolve()
                if owner is not None:
                    conn = await connection(self._client(owner))
                    if owner != self.node:
                        self.owner_changes += 1
                        self.node = owner
                    self.reconnects += 1
                    return conn
            except RETRIED as error:
                if not outage(error):
                    raise
                last = error
                self._hint = moved_to(error) or self._hint
            await asyncio.sleep(delay)
            delay = min(MAX_DELAY, delay * 2)
        raise last

    async def _resolve(self) -> Node | None:
        """The owner as the first node that answers sees it (None: no node names one yet).
        O(nodes) round trips at most."""
        hint, self._hint = self._hint, None
        owner, _ = await find_owner(self.topology, hint, self._slots)
        return owner

    async def _slots(self, node: Node) -> Any:
        return await self._client(node).execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(*RETRIED, OSError):
                await client.aclose()
        self._clients.clear()


async def first_failure(*coros: Coroutine[Any, Any, None]) -> None:
    """Run ``coros`` together until all end, or until one raises: then cancel the others and
    raise its error."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await _settle(tasks)


async def _settle(tasks: Iterable[Awaitable[Any]]) -> None:
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task
