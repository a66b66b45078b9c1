"""Repair: generate again the records validation refused, in sub-runs of the run (`hpcsynth repair RUN`).

A stage above reduce (it validates as the reduce does, plans sub-runs with plan/'s own writers and works them
with execute/'s launch_run). attempts.py runs attempts 1..N; refused.py finds what each attempt must generate
again; subrun.py plans RUN/repair/attempt-K/PROMPT/; report.py writes the yield and cost; cancel.py is what
`hpcsynth cancel RUN` stops of a repair (the `repair` process, its sub-runs' workers and Slurm jobs). The
reduce takes a refused record's first passing attempt (hpcsynth/reduce/repaired.py), reading the sub-runs by
their paths.
"""

from hpcsynth.repair.attempts import RepairResult, repair_run

__all__ = ["RepairResult", "repair_run"]
