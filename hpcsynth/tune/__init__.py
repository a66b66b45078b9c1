"""`hpcsynth tune`: short trials of the engine settings that decide throughput, on the user's own sample.

search.py walks the settings (space.py) one trial process at a time (trial.py) within a budget; report.py
shows the trials and prices the winner; slurm.py runs the same search as one job on a GPU node.
"""

from hpcsynth.tune.search import TuneOptions, TuneResult, prepare, read_tune, search

__all__ = ["TuneOptions", "TuneResult", "prepare", "read_tune", "search"]
