"""generate: a worker claims shards, feeds one engine and commits outputs (the second stage).

Nothing here knows how it was started; execute/ decides where workers run.
"""
