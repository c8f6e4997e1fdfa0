"""The load generator's packages are an extra (``shard[load]``), not the runtime's: the runtime
imports without them, and ``shard load`` without them says how to install them.

Nothing is uninstalled: a subprocess blocks the extra's modules with ``sys.modules[name] = None``,
which makes importing them fail as if they were absent.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from shard.load.main import NEEDS_EXTRA

REPO = Path(__file__).resolve().parents[2]
BLOCK_EXTRA = "import sys\nfor name in ('hdrh', 'matplotlib'):\n    sys.modules[name] = None\n"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_EXTRA + code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_shard_load_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = _python(
        "from shard.cli import main\n"
        f"sys.exit(main(['load', '--local', '--quiet', '--out', {str(out)!r}]))\n"
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == NEEDS_EXTRA + "\n"
    assert "pip install 'shard[load]'" in NEEDS_EXTRA
    assert proc.stdout == ""
    assert not out.exists()  # it stopped before doing anything


def test_the_runtime_imports_without_the_extra() -> None:
    """Every module outside shard.load, plus the two of it that the runtime's command line
    reaches (the ``shard load`` arguments and the floor relay that ``shard up --floor`` runs)."""
    proc = _python(
        "import importlib, pkgutil, shard\n"
        "names = [m.name for m in pkgutil.walk_packages(shard.__path__, 'shard.')\n"
        "         if not m.name.startswith('shard.load') and m.name != 'shard.__main__']\n"
        "for name in [*names, 'shard.load.main', 'shard.load.relay']:\n"
        "    importlib.import_module(name)\n"
        "from shard.cli import build_parser\n"
        "build_parser()\n"
        "print(len(names))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 10


def test_the_dev_extra_holds_the_load_extra() -> None:
    """The dev extra lists the load extra's packages by name (the lock test wants every dev name
    pinned); the two lists must not drift apart."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    dev = {str(Requirement(x)) for x in extras["dev"]}
    assert {str(Requirement(x)) for x in extras["load"]} <= dev
    runtime = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not {Requirement(x).name for x in runtime} & {"hdrhistogram", "matplotlib"}
