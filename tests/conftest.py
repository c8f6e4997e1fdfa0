from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shard.server import find_server_binary

REPO = Path(__file__).resolve().parent.parent


def pytest_report_header() -> str:
    """Which server the integration tests run on (SHARD_SERVER_BINARY chooses)."""
    try:
        binary = find_server_binary()
    except FileNotFoundError as e:
        return f"server: none ({e})"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return f"server: {binary}: {version.stdout.strip()}"


@pytest.fixture(scope="session")
def realflow() -> Path:
    """The LOBSTER-derived real order flow: $REALFLOW, else the copy in tests/data/realflow
    (the converted files and their README from the project's shared/realflow). Skips when it
    is missing, except under CI, where it fails."""
    env = os.environ.get("REALFLOW")
    path = Path(env) if env else REPO / "tests" / "data" / "realflow"
    if not path.is_dir():
        message = f"real order flow not found at {path} (set REALFLOW)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI always has shared/ beside the clone: never skip there
        pytest.skip(message)
    return path
