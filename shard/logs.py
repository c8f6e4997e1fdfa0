"""Structured logs: one JSON object per line on stderr, with the pair on every line.

Use ``log.info("committed", extra={"fields": {"inputs": 10}})`` for extra key/value pairs.
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec

_encode = msgspec.json.Encoder().encode


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
