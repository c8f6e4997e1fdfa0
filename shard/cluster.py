"""Redis Cluster, without I/O: which slot a pair lives in, which master owns it, and where to
ask next (the h11 idea: the daemon sends and receives, this decides).

Every key of a pair carries the hash tag ``{P}``, so the whole pair lives in one of the 16384
slots: ``crc16(P) mod 16384`` (:func:`pair_slot`). A cluster maps slot ranges to a master and
its replicas (``CLUSTER SLOTS``, parsed by :func:`parse_slots`). The daemon resolves the master
owning its pair's slot and talks to it with the plain client and pipes it uses on one server;
after ``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``, ``MASTERDOWN``, ``UNBLOCKED`` or a lost
connection it resolves again. :class:`Topology` keeps every node it has learnt as a seed, so
losing the node named by the URL does not strand it, and says in which order to ask them:
the node a ``MOVED`` named first, then the last owner, then the others.

Cost: :func:`parse_slots` is O(ranges); :meth:`Topology.learned` O(ranges + nodes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from redis.crc import key_slot as _crc_slot
from redis.exceptions import MovedError

from shard.config import Keys

SLOTS: Final = 16384


class Node(NamedTuple):
    """A node's address as the cluster announces it."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class SlotRange(NamedTuple):
    """Slots ``start`` to ``end`` (inclusive), served by ``master``; ``replicas`` copy it."""

    start: int
    end: int
    master: Node
    replicas: tuple[Node, ...]


def key_slot(key: str) -> int:
    """The slot of ``key`` (its hash tag's, if it has one), as the server computes it."""
    return int(_crc_slot(key.encode()))


def pair_slot(pair: str, prefix: str = "") -> int:
    """The one slot every key of ``pair`` lives in."""
    return key_slot(Keys(pair, prefix).orders)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_slots(reply: Sequence[Any], asked: Node) -> list[SlotRange]:
    """A raw ``CLUSTER SLOTS`` reply (``[start, end, [host, port, id, ...], replicas...]``)
    as ranges, in slot order. An empty host (the node does not know its own address) is the
    host of ``asked``, the node that answered. O(ranges)."""
    ranges: list[SlotRange] = []
    for item in reply:
        start, end, *nodes = item
        parsed = tuple(Node(_text(n[0]) or asked.host, int(n[1])) for n in nodes)
        if parsed:
            ranges.append(SlotRange(int(start), int(end), parsed[0], parsed[1:]))
    ranges.sort()
    return ranges


def owner_of(ranges: Iterable[SlotRange], slot: int) -> SlotRange | None:
    """The range holding ``slot`` (its master owns it), or None if no node serves it."""
    for r in ranges:
        if r.start <= slot <= r.end:
            return r
    return None


def cluster_enabled(info: Mapping[str, Any]) -> bool:
    """Whether an ``INFO cluster`` reply (parsed) says the server runs in cluster mode."""
    return str(info.get("cluster_enabled", "0")) == "1"


def node_of_url(url: str) -> Node:
    """The host and port a ``redis://`` or ``rediss://`` URL dials."""
    parts = urlsplit(url)
    return Node(parts.hostname or "127.0.0.1", parts.port or 6379)


def node_url(url: str, node: Node) -> str:
    """``url`` with its host and port replaced by ``node``'s: same scheme, user, password and
    database (0 on a cluster)."""
    parts = urlsplit(url)
    auth, _, _ = parts.netloc.rpartition("@")
    netloc = f"{auth}@{node}" if auth else str(node)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def moved_to(exc: BaseException) -> Node | None:
    """The node a ``MOVED`` reply names as the slot's owner now (None for anything else; an
    ``ASK`` names a node for one command only, not the owner)."""
    if isinstance(exc, MovedError):
        return Node(str(exc.host), int(exc.port))
    return None


class Topology:
    """What the daemon knows of a cluster: its pair's ``slot``, the owner it last resolved,
    and every node learnt so far (the seeds), in the order they were learnt."""

    def __init__(self, slot: int, seeds: Iterable[Node]) -> None:
        self.slot = slot
        self.owner: Node | None = None
        self.seeds: list[Node] = []
        self._add(seeds)

    def _add(self, nodes: Iterable[Node]) -> None:
        for node in nodes:
            if node not in self.seeds:
                self.seeds.append(node)

    def candidates(self, hint: Node | None = None) -> list[Node]:
        """The nodes to ask for the owner, in order: ``hint`` (the node a ``MOVED`` named),
        the last owner, then every other seed. O(nodes)."""
        order = [n for n in (hint, self.owner) if n is not None]
        return list(dict.fromkeys([*order, *self.seeds]))

    def learned(self, ranges: Sequence[SlotRange]) -> Node | None:
        """Note a node's view of the slot map: every node in it becomes a seed; the master of
        the pair's slot (None if no node serves it) is returned, and remembered as the owner
        if there is one. O(ranges + nodes)."""
        self._add(n for r in ranges for n in (r.master, *r.replicas))
        found = owner_of(ranges, self.slot)
        if found is None:
            return None
        self.owner = found.master
        return found.master
