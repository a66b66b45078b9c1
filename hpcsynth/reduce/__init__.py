"""reduce: committed outputs -> validated, mixed, tokenized training files (the last stage)."""

from hpcsynth.reduce.reducer import ReduceReport, reduce_run

__all__ = ["ReduceReport", "reduce_run"]
