"""Which server binary the tests, ``shard up`` and the benchmarks start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shard.server import SERVER_BINARY_ENV, find_server_binary


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_the_environment_names_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = _executable(tmp_path / "my-server")
    monkeypatch.setenv(SERVER_BINARY_ENV, str(chosen))
    assert find_server_binary() == str(chosen)


def test_a_name_in_the_environment_is_looked_up_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _executable(tmp_path / "other-server")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv(SERVER_BINARY_ENV, "other-server")
    assert find_server_binary() == str(tmp_path / "other-server")


@pytest.mark.parametrize("name", ["/nonexistent/valkey-server", "no-such-server-anywhere"])
def test_a_missing_binary_in_the_environment_fails_instead_of_falling_back(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SERVER_BINARY_ENV, name)
    with pytest.raises(FileNotFoundError, match=SERVER_BINARY_ENV):
        find_server_binary()


def test_a_file_that_is_not_executable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "server"
    plain.write_text("")
    monkeypatch.setenv(SERVER_BINARY_ENV, str(plain))
    with pytest.raises(FileNotFoundError, match="not an executable"):
        find_server_binary()
