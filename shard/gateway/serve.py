"""``shard gateway``: the app under uvicorn, on uvloop with httptools and websockets."""

from __future__ import annotations

import logging
import socket

import uvicorn

from shard.config import Config
from shard.gateway.app import create_app
from shard.gateway.config import GatewayConfig

log = logging.getLogger("shard.gateway")


def serve(config: GatewayConfig, connection: Config) -> int:
    """Serve until SIGTERM or SIGINT (uvicorn drains open requests first); the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = create_app(config, connection)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop="uvloop",
            http="httptools",
            ws="websockets-sansio",
            # Compressing costs CPU per client per message, which is what fan-out is made of.
            ws_per_message_deflate=False,
            lifespan="on",
            access_log=False,
            log_level="info",
        )
    )
    log.info("gateway for %s on http://%s:%d/", ", ".join(config.pairs), config.host, config.port)
    server.run(sockets=[listen(config)])
    return 0


def listen(config: GatewayConfig) -> socket.socket:
    """The listening socket, its send buffer capped at ``send_buffer_bytes`` for every
    connection it accepts (a client that stops reading holds at most that much in the kernel,
    and then its sends block: :mod:`shard.gateway.feed` closes it once it falls behind)."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if config.send_buffer_bytes:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.send_buffer_bytes)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"shard gateway: cannot listen on {config.host}:{config.port}: {exc.strerror}"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
