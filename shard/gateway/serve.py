"""``shard gateway``: the app under uvicorn, on uvloop with httptools and websockets."""

from __future__ import annotations

import logging

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
            ws="websockets",
            lifespan="on",
            access_log=False,
            log_level="info",
        )
    )
    log.info("gateway for %s on http://%s:%d/", ", ".join(config.pairs), config.host, config.port)
    server.run()
    return 0
