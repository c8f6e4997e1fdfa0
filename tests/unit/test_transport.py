"""Which Redis errors the daemon waits out, and how it logs them (shard.transport)."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from shard.outage import Outage
from shard.transport import describe, error_code, waited_out


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "OOM"),
        (NoPermissionError("this user has no permissions to run the 'xtrim' command"), "NOPERM"),
        (ReadOnlyError("You can't write against a read only replica."), "READONLY"),
        (ResponseError("BUSY Redis is busy running a script."), "BUSY"),
        (
            ResponseError("NOGROUP No such consumer group 'shard' for key name 'orders:{P}'"),
            "NOGROUP",
        ),
        (ResponseError("MASTERDOWN Link with MASTER is down"), "MASTERDOWN"),
        (
            ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
            "WRONGTYPE",
        ),
        (ResponseError("UNBLOCKED force unblock from blocking operation"), "UNBLOCKED"),
        (ResponseError("wrong number of arguments for 'xadd' command"), "ERR"),
        (RedisConnectionError("Connection refused"), None),
    ],
)
def test_error_codes(exc: Exception, code: str | None) -> None:
    assert error_code(exc) == code


@pytest.mark.parametrize(
    "exc",
    [
        OutOfMemoryError("over"),
        NoPermissionError("no"),
        ResponseError("BUSY Redis is busy"),
        ResponseError("NOGROUP No such consumer group"),
        ResponseError("TRYAGAIN Multiple keys request during rehashing of slot"),
        ResponseError("CLUSTERDOWN The cluster is down"),
        RedisConnectionError("Connection refused"),
        BusyLoadingError("Redis is loading the dataset in memory"),
    ],
)
def test_not_now_errors_are_waited_out(exc: Exception) -> None:
    assert waited_out(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ResponseError("ERR syntax error"),
        ResponseError("wrong number of arguments"),
        ValueError(),
        # redis-py wraps socket errors in its ConnectionError: a bare OSError is the daemon's own
        OSError("network is unreachable"),
        FileNotFoundError("no such file"),
    ],
)
def test_other_errors_are_bugs(exc: Exception) -> None:
    assert not waited_out(exc)


def test_describe_keeps_the_message() -> None:
    assert describe(
        RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
    ) == ("ConnectionError: Error 111 connecting to 127.0.0.1:1. Connection refused.")
    assert describe(TimeoutError()) == "TimeoutError"


def test_an_outage_is_noted_once_per_kind() -> None:
    outage = Outage()
    assert outage.end(5.0) is None
    assert outage.begin("OOM", 1.0)
    assert not outage.begin("OOM", 2.0)
    assert outage.begin("connection", 3.0)  # another kind: logged too
    assert outage.end(4.5) == 3.5  # from the first begin
    assert outage.begin("OOM", 6.0)
