"""plan: a corpus -> zstd JSONL shards and the run's manifest (the first stage of the flow)."""

from hpcsynth.plan.planner import Plan, plan_corpus

__all__ = ["Plan", "plan_corpus"]
