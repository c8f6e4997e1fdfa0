"""The daemon's way out: an error in the loop is the one that leaves :meth:`Shard.run`, even
when the cleanup after it fails too (it used to be hidden by the cleanup's own error)."""

from __future__ import annotations

import logging

import pytest

from shard.config import Config
from shard.daemon import Shard


class Boom(Exception):
    pass


async def test_a_cleanup_error_does_not_hide_the_error_that_stopped_the_daemon(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shard = Shard(Config(pair="BTC-USDT", redis_url="redis://127.0.0.1:1/0"))

    async def loop() -> None:
        shard.lease.held = True
        raise Boom("the first error")

    async def release() -> None:
        raise RuntimeError("the cleanup's own error")

    shard._loop = loop  # type: ignore[method-assign]
    shard.lease.release = release  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="shard"), pytest.raises(Boom):
        await shard.run(install_signals=False)
    assert "cleanup failed after an error" in caplog.text


async def test_a_cleanup_error_after_a_clean_stop_is_raised() -> None:
    shard = Shard(Config(pair="BTC-USDT", redis_url="redis://127.0.0.1:1/0"))

    async def loop() -> None:
        return None

    async def release() -> None:
        raise RuntimeError("the cleanup's own error")

    shard._loop = loop  # type: ignore[method-assign]
    shard.lease.release = release  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="cleanup's own"):
        await shard.run(install_signals=False)
