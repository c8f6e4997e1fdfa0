"""Which servers can take ``ack = "setid"``."""

from __future__ import annotations

import pytest

from shard.store import supported_server


@pytest.mark.parametrize(
    ("version", "supported"),
    [("7.0.0", True), ("7.2.4", True), ("8.2.1", True), ("10.0.0", True), ("6.2.14", False),
     ("5.0.7", False), ("None", False), ("", False)],
)  # fmt: skip
def test_setid_needs_redis_7(version: str, supported: bool) -> None:
    assert supported_server(version) is supported
