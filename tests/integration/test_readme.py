"""The README's two commands work on a fresh clone with a fresh virtual environment."""

from __future__ import annotations

import json
import os
import re
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
