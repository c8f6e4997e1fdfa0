"""The README's two commands work on a fresh clone with a fresh virtual environment."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shard.server import free_port

REPO = Path(__file__).resolve().parents[2]


def test_readme_names_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^scripts/run$", readme, re.M)
    assert re.search(r"^scripts/test$", readme, re.M)
    assert "scripts/test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_scripts_run_from_a_fresh_clone(tmp_path: Path) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "SHARD_"))}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix)
    )
    env.update(SHARD_UP_PORT=str(free_port()), PYTHON=sys._base_executable)
    result = subprocess.run(
        [str(clone / "scripts" / "run")],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    trades = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert [(t["taker_order_id"], t["maker_order_id"], t["quantity"]) for t in trades] == [
        ("order2", "order1", 5)
    ]
    assert (clone / ".venv" / "bin" / "shard").exists()


def section(readme: str, title: str) -> str:
    start = readme.index(f"\n## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end >= 0 else None]


def shell_commands(text: str) -> list[str]:
    """The `shard` commands of a section's ```sh blocks, in order, without their comments."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(("shard ", ".venv/bin/shard ")):
                commands.append(line)
    return commands


def test_readme_commands_in_order(tmp_path: Path) -> None:
    """`shard up`, then the publishing and consuming commands, exactly as the README gives
    them. The test needs a free port, so it adds the same one to every command: `--port` to
    `shard up`, `--redis-url` to the others (test_up_defaults checks that the defaults agree)."""
    import redis

    from shard.config import Keys

    from ..seed import SEED_LINES, SEED_TRADE
    from .helpers import wait_events
    from .test_cli import wait_healthy

    readme = (REPO / "README.md").read_text()
    (up,) = shell_commands(section(readme, "Running shards"))[:1]
    assert up.startswith(".venv/bin/shard up ")
    later = shell_commands(section(readme, "Publishing and consuming"))
    assert [c.split()[1] for c in later][:3] == ["publish", "publish", "trades"]
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    (tmp_path / "orders.jsonl").write_bytes(b"\n".join(SEED_LINES[:2]) + b"\n")
    shard = [sys.executable, "-m", "shard"]
    cluster = subprocess.Popen(
        [*shard, *up.split()[1:], "--port", str(port)], cwd=tmp_path, stderr=subprocess.PIPE
    )
    try:
        for pair in up.split("--pairs ")[1].split()[0].split(","):
            wait_healthy(url, pair)
        outputs = []
        for command in later:
            if "--follow" in command:
                continue  # it never ends by itself
            result = subprocess.run(
                [*shard, *command.split()[1:], "--redis-url", url],
                cwd=tmp_path,
                capture_output=True,
                timeout=60,
            )
            assert result.returncode == 0, (command, result.stderr.decode())
            outputs.append(result.stdout)
            if command.split()[1] == "publish":
                client = redis.Redis.from_url(url)
                wait_events(client, Keys("BTC-USDT"), len(b"".join(outputs).split()))
                client.close()
        trades = [json.loads(x) for x in outputs[2].splitlines()]
        assert [{k: v for k, v in t.items() if k != "input_id"} for t in trades] == [SEED_TRADE]
    finally:
        cluster.send_signal(signal.SIGINT)
        _, err = cluster.communicate(timeout=60)
    assert cluster.returncode == 0, err.decode()
