"""`hpcsynth cancel RUN`'s share of a repair: the `hpcsynth repair` process, and its sub-runs' workers and jobs.

The repair process is found by the lock it holds while it works (RUN/repair/.lock names its host, pid and
start time) and stopped first, so that it launches or submits nothing more; SIGTERM unwinds it as Ctrl-C
does (its in-process worker or worker processes end, their records go). Then every sub-run
RUN/repair/attempt-K/PROMPT/ is cancelled as a run is: its local launches (RUN/.../local/, a `launch` of the
sub-run by hand included) and the ids of its Slurm launches (RUN/.../launches/*.json), which the caller
scancels with the run's own.

Only real directories are walked (lstat, never through a symlink): a link planted at RUN/repair,
attempt-K, PROMPT, local or launches could point at another run of the same user, whose workers and jobs
cancel would then stop. A sub-run whose launch records are damaged is named, not fatal: the rest is still
cancelled.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from hpcsynth.errors import HpcsynthError
from hpcsynth.rundir import RunDir


@dataclass
class RepairCancel:
    stopped: list[str] = field(default_factory=list)  # what was stopped, a line each
    job_ids: list[str] = field(default_factory=list)  # the sub-runs' recorded Slurm jobs, checked, to scancel
    problems: list[str] = field(default_factory=list)  # what cancel could not stop from here, a line each


def cancel_repair(run: RunDir) -> RepairCancel:
    """Stop the run's `hpcsynth repair` and its sub-runs' local launches (this host); collect their job ids."""
    from hpcsynth.execute.local_runs import cancel_holder, cancel_local
    from hpcsynth.execute.slurm_jobs import job_ids

    result = RepairCancel()
    if not _real_dir(run.repair_dir):
        return result
    result.stopped, result.problems = cancel_holder(run.repair_dir / ".lock", "`hpcsynth repair`")
    for sub in sub_runs(run):
        name = f"{sub.root.parent.name}/{sub.root.name}"
        try:
            if _real_dir(sub.root / "local"):
                stopped, elsewhere = cancel_local(sub)
                result.stopped += [f"{name}: {line}" for line in stopped]
                result.problems += [f"{name}: {line}" for line in elsewhere]
            if _real_dir(sub.launches_dir):
                result.job_ids += job_ids(sub)
        except (HpcsynthError, OSError) as exc:  # a damaged record: the other sub-runs are still cancelled
            result.problems.append(f"{name}: {exc}")
    return result


def sub_runs(run: RunDir) -> list[RunDir]:
    """RUN/repair/attempt-K/PROMPT/ that are real directories, planned or not (a sub-run being planned has no
    manifest yet, and one planned again may have launched before)."""
    found = []
    for attempt in _real_dirs(run.repair_dir):
        number = attempt.name[len("attempt-"):]
        if attempt.name.startswith("attempt-") and number.isdigit():
            found += [RunDir(sub) for sub in _real_dirs(attempt) if not sub.name.startswith(".")]
    return found


def _real_dirs(folder: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [folder / name for name in names if _real_dir(folder / name)]


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


__all__ = ["RepairCancel", "cancel_repair", "sub_runs"]
