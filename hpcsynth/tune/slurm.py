"""`hpcsynth tune --executor slurm`: the same search as one Slurm job on a GPU node of the site profile.

The login node prepares the tune directory (config, sample, requests: CPU work, minutes at most); the job
runs search() there, which starts each trial as its own process on the node's GPUs, and this side waits for
it. The directory must be on a filesystem both see, as a run directory must.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from hpcsynth.config import SlurmConfig

SLACK_MIN = 15  # the job's time limit beyond the budget: the last trial's deadline, start-up, the queue's clock


def tune_task(out: str) -> int:
    """The job's body: the search, its trials under this job's GPUs; returns how many trials ran."""
    from hpcsynth.tune.search import search

    return len(search(Path(out), say=lambda line: print(line, flush=True)).trials)


def search_on_slurm(out: Path, config: SlurmConfig, budget_s: float) -> Any:
    from hpcsynth.execute.slurm import Requeued, check_slurm_path, map_array

    check_slurm_path(out, "tune directory", "pass an --out without them")
    job = dataclasses.replace(config, array_tasks=1, job_name=f"{config.job_name}-tune",
                              time_min=math.ceil(budget_s / 60) + SLACK_MIN)
    # Preempted or out of time, the job is requeued and its search goes on from the trials in tune.json.
    (count,) = map_array(Requeued(tune_task), [str(out.resolve())], job, out / "slurm", "tune",
                         again="run the tune again")
    return count
