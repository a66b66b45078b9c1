"""hpcsynth: rephrase a web corpus into synthetic pretraining data, shard by shard.

The flow is one way: plan -> shards -> worker -> outputs -> reduce -> memmap. Every stage reads
only what the previous one committed to the run directory (see docs/run-directory.md).
"""

__version__ = "0.1.0"
