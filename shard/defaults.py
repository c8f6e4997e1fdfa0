"""Where the commands look when told nothing: one place, importable without the Redis client.

``shard up`` listens on :data:`REDIS_URL`'s port and every other command connects there by
default; the command-line parser reads these without importing what ``shard up`` runs, so a
``shard replay`` starts with the engine alone.
"""

from __future__ import annotations

from typing import Final

REDIS_URL: Final = "redis://127.0.0.1:6379/0"
"""The server of a shard, its tools and ``shard up`` when no URL is given."""
REDIS_PORT: Final = 6379
""":data:`REDIS_URL`'s port: the one ``shard up`` starts its embedded server on."""
GATEWAY_PORT: Final = 8080
"""The gateway's port and its trading page's."""
