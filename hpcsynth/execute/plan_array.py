"""`plan --executor slurm`: the map that plan_corpus is handed to run its input groups as Slurm CPU arrays.

The plan does not know where its groups run (it sits below execute/); execute/slurm.py does not know what
they do. This module, above both, says what a planning task asks of the cluster. The CLI and the grid's
plan build the map with slurm_map_groups and hand it to plan_corpus(map_groups=...).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcsynth.config import SlurmConfig
from hpcsynth.execute.slurm import check_slurm_path, cpu_only, map_array
from hpcsynth.plan.parallel import MapGroups

PLAN_CPUS = 1  # one planning process per array task: the array is the parallelism
PLAN_MEM_GB = 4  # a group holds ~32 bytes a document plus zstd buffers; 4 GB is far above that
PLAN_TIME_MIN = 120


def slurm_map_groups(run_root: Path, config: SlurmConfig) -> MapGroups:
    """map_groups(fn, items, name) -> [fn(item), ...] as CPU-only arrays (no GPUs asked), their files under
    RUN/slurm/NAME-%A. RUN is checked now, before the plan writes anything there."""
    check_slurm_path(run_root, "run directory", "plan the run in a directory without them")
    return functools.partial(_map_on_slurm, Path(run_root), config)


def _map_on_slurm(run_root: Path, config: SlurmConfig, fn: Callable[[Any], Any], items: list[Any],
                  name: str) -> list[Any]:
    cpu = cpu_only(config, f"{config.job_name}-{name}", PLAN_CPUS, PLAN_MEM_GB, PLAN_TIME_MIN)
    return map_array(fn, items, cpu, run_root / "slurm", name, again="plan again")
