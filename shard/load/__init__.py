"""``shard load``: an open-loop load generator and performance report for running shards.

- :mod:`shard.load.schedule`: when each message is due (constant, ramp and spike profiles).
- :mod:`shard.load.latency`: HDR histograms of end-to-end latency, overall and per second.
- :mod:`shard.load.runner`: publishes on schedule and times each input to its event.
- :mod:`shard.load.report`: the summary, the JSON file and the PNG plot.
- :mod:`shard.load.relay`: the harness floor, run in place of the shards by ``--floor``.
"""
