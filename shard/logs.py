"""Structured logs: one JSON object per line on stderr, with the pair on every line.

``log = Log("shard.daemon")``, then ``log.info("committed", inputs=10)``: the keywords become the
line's fields.
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec

_encode = msgspec.json.Encoder().encode


class Log:
    """A :mod:`logging` logger whose calls take a line's fields as keywords. A disabled level
    costs one check; the fields travel in the record's ``fields`` attribute."""

    __slots__ = ("logger",)

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def debug(self, msg: str, **fields: object) -> None:
        self._log(logging.DEBUG, msg, fields)

    def info(self, msg: str, **fields: object) -> None:
        self._log(logging.INFO, msg, fields)

    def warning(self, msg: str, **fields: object) -> None:
        self._log(logging.WARNING, msg, fields)

    def error(self, msg: str, **fields: object) -> None:
        self._log(logging.ERROR, msg, fields)

    def _log(self, level: int, msg: str, fields: dict[str, object]) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, msg, extra={"fields": fields}, stacklevel=3)


class JsonFormatter(logging.Formatter):
    def __init__(self, pair: str) -> None:
        super().__init__()
        self.pair = pair

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "pair": self.pair,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return _encode(doc).decode()


def setup(pair: str, level: str = "INFO") -> None:
    """Send every ``shard`` log record to stderr as JSON lines tagged with ``pair``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(pair))
    logger = logging.getLogger("shard")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
