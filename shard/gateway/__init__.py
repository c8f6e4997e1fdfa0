"""The HTTP/WebSocket gateway in front of the shards (docs/gateway.md)."""
