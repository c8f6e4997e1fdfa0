"""`shard up` as a newcomer meets it: a port in use, and a server with a password."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from shard.config import Keys
from shard.server import LocalServer, free_port

from ..seed import SEED_LINES, SEED_TRADE
from .helpers import PAIR, wait_events

SHARD = [sys.executable, "-m", "shard"]
PASSWORD = "pw-s3cr3t"


def test_up_refuses_a_port_in_use_at_once(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [*SHARD, "up", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert time.monotonic() - started < 15
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one sentence, no traceback
    (line,) = lines
    assert f"127.0.0.1:{port} is already in use" in line
    assert f"--redis-url redis://127.0.0.1:{port}/0" in line and "--port N" in line
    assert not (tmp_path / "data" / "redis" / "server.log").exists()  # no server was started


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        todo += kids
    return found


@pytest.mark.parametrize("given", ["flag", "env"])
def test_up_keeps_the_password_off_command_lines_and_out_of_its_banner(
    tmp_path: Path, given: str
) -> None:
    server = LocalServer(tmp_path / "redis").start()
    admin = redis.Redis(port=server.port)
    admin.config_set("requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("SHARD_")}
    env_with_url = {**env, "REDIS_URL": url}
    up_args = ["up", "--pairs", PAIR, "--data-dir", str(tmp_path / "data")]
    up_args += ["--gateway-port", str(free_port())]  # its child sees the URL too
    if given == "flag":
        up = subprocess.Popen(
            [*SHARD, *up_args, "--redis-url", url], env=env, stderr=subprocess.PIPE
        )
    else:
        up = subprocess.Popen([*SHARD, *up_args], env=env_with_url, stderr=subprocess.PIPE)
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 30
        health = [*SHARD, "health", "--pair", PAIR]
        while subprocess.run(health, env=env_with_url, capture_output=True).returncode:
            assert time.monotonic() < deadline, "the shard never became healthy"
            time.sleep(0.2)
        children = descendants(up.pid)
        assert children
        for child in children:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            assert PASSWORD.encode() not in cmdline, cmdline
        subprocess.run(
            [*SHARD, "publish", "--pair", PAIR],
            input=b"\n".join(SEED_LINES) + b"\n",
            env=env_with_url,
            check=True,
            capture_output=True,
        )
        wait_events(client, Keys(PAIR), len(SEED_LINES))
        out = subprocess.run(
            [*SHARD, "trades", "--pair", PAIR], env=env_with_url, check=True, capture_output=True
        ).stdout
        assert [json.loads(x) for x in out.splitlines()] == [
            {**SEED_TRADE, "input_id": json.loads(out)["input_id"]}
        ]
    finally:
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=60)
        client.close()
        admin.execute_command("AUTH", PASSWORD)
        admin.config_set("requirepass", "")
        admin.close()
        server.stop()
    assert up.returncode == 0, err.decode()
    assert PASSWORD.encode() not in err, err.decode()
    assert f"redis://:***@127.0.0.1:{server.port}/0".encode() in err
