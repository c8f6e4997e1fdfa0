"""shard: an order-book matching shard for one trading pair."""

__version__ = "0.1.0"
