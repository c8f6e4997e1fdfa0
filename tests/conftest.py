from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def realflow_dir() -> Path:
    """The LOBSTER-derived real order flow: $REALFLOW, else the copy in tests/data/realflow
    (the converted files and their README from the project's shared/realflow)."""
    env = os.environ.get("REALFLOW")
    return Path(env) if env else REPO / "tests" / "data" / "realflow"


@pytest.fixture(scope="session")
def realflow() -> Path:
    path = realflow_dir()
    if not path.is_dir():
        message = f"real order flow not found at {path} (set REALFLOW)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI always has shared/ beside the clone: never skip there
        pytest.skip(message)
    return path
