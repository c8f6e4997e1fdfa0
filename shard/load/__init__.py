"""``shard load``: an open-loop load generator and performance report for running shards.

A tool, not the runtime: it needs the load extra (``pip install 'shard[load]'``), and nothing
outside this package imports it (``shard.load.main`` only checks for the extra and parses).

- :mod:`shard.load.main`: the arguments, the optional local cluster, the report files.
- :mod:`shard.load.schedule`: when each message is due (constant, ramp and spike profiles).
- :mod:`shard.load.pair`: one pair's sender and readers, timing each input to its event.
- :mod:`shard.load.runner`: the run: preload, the timed phase, the once-a-second tick.
- :mod:`shard.load.probes`: the shards' and the server's CPU and memory, the server's name.
- :mod:`shard.load.latency`: HDR histograms of end-to-end latency, overall and per second.
- :mod:`shard.load.report`: the summary, the JSON file and the PNG plot.
- :mod:`shard.load.relay`: the harness floor, run in place of the shards by ``--floor``.
"""
