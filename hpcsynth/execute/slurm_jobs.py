"""Watching and controlling a run's Slurm jobs: what it recorded, sacct, squeue, scancel, scontrol.

No submitit here (submission is hpcsynth/execute/slurm.py): status, estimate and cancel read the run's
recorded job ids and ask Slurm's own commands, each bounded by SLURM_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hpcsynth.config import SlurmConfig
from hpcsynth.errors import HpcsynthError, RunError
from hpcsynth.files import atomic_write_json, read_json, read_tail
from hpcsynth.locks import acquire_lock
from hpcsynth.rundir import RunDir

log = logging.getLogger("hpcsynth.execute.slurm")


class SlurmError(HpcsynthError):
    """Slurm refused or is not there."""


def require_tools(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            raise SlurmError(f"{tool} is not on PATH, so this is not a Slurm login node; "
                             f"use --executor local to run on this machine")


def record_launch(run: RunDir, arrays: list[dict[str, Any]], config: SlurmConfig, shards: int) -> Path:
    path = run.launches_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.json"
    atomic_write_json(path, {"executor": "slurm", "time": time.time(), "arrays": arrays, "pending_shards": shards,
                             "gpus_per_task": config.gpus_per_task})
    return path


def recorded_jobs(run: RunDir) -> list[dict[str, Any]]:
    """RUN/launches/*.json, each job id checked: they go to sacct, squeue and scancel."""
    if not run.launches_dir.is_dir():
        return []
    launches = []
    for path in sorted(run.launches_dir.glob("*.json")):
        try:
            launch = read_json(path)
            arrays = launch.get("arrays", [])
            ids = [array["job_id"] for array in arrays]
        except (ValueError, AttributeError, TypeError, KeyError):
            raise RunError(f"{path}: not a launch record of hpcsynth; move it out of {run.launches_dir}") from None
        for job_id in ids:
            check_job_id(job_id, path)
        launches.append(launch)
    return launches


# A job id (12345), an array task (12345_7) or a range of them (12345_[0-9%4]); nothing else reaches
# a Slurm command, so a recorded "--user=root" cannot become an option.
JOB_ID = re.compile(r"[0-9]{1,12}(_([0-9]{1,9}|\[[0-9,%-]{1,200}\]))?")


def check_job_id(job_id: Any, source: Path) -> str:
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise RunError(f"{source}: {job_id!r} is not a Slurm job id; this file was not written by hpcsynth "
                       f"launch, move it out of the run's launches/ directory")
    return job_id


def job_ids(run: RunDir) -> list[str]:
    return [a["job_id"] for launch in recorded_jobs(run) for a in launch.get("arrays", [])]


def sacct_tasks(ids: list[str]) -> dict[str, dict[str, Any]]:
    """One sacct call: state and elapsed seconds of every array task of the given jobs."""
    if not ids or shutil.which("sacct") is None:
        return {}
    out = _run(["sacct", "-X", "-n", "-P", "-D", "-j", ",".join(ids), "-o", "JobID,State,ElapsedRaw,Reason"],
               check=False)
    tasks: dict[str, dict[str, Any]] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 3:
            continue
        job, state, elapsed = parts[:3]
        entry = tasks.setdefault(job, {"state": "", "elapsed_s": 0, "attempts": 0})
        # Why a pending task waits (Priority, Resources, PartitionConfig...); "None" once it runs.
        entry["reason"] = parts[3] if len(parts) > 3 and parts[3] != "None" else ""
        entry["tasks"] = _array_size(job)
        # -D lists every attempt of a requeued task, oldest first: the last is the current state,
        # and elapsed time adds up over all of them.
        entry["state"] = state.split()[0] if state else ""
        entry["elapsed_s"] += _elapsed(elapsed)
        entry["attempts"] += 1
    return tasks


def _elapsed(text: str) -> int:
    """ElapsedRaw: whole seconds. Anything else (a site's wrapper, a plugin's warning on stdout, a garbled
    line) counts as 0, as an unknown elapsed time would, rather than ending status in a traceback;
    more than 10 digits (three centuries) is no task's."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else 0


def _array_size(job: str) -> int:
    """Array tasks one sacct line stands for: '12_[0-63%8]' (tasks not started yet) is 64, '12_3' is 1."""
    if "[" not in job:
        return 1
    spec = job[job.index("[") + 1:].rstrip("]").split("%")[0]
    count = 0
    for part in spec.split(","):
        low, _, high = part.partition("-")
        try:
            count += int(high) - int(low) + 1 if high else 1
        except ValueError:
            count += 1
    return max(count, 1)


RECORD_WAIT_S = 60  # a record's rewrite takes milliseconds: a holder this slow is stuck, not busy


def record_reduce(path: Path, dataset: str, jobs: dict[str, Any]) -> None:
    """Add a `reduce --executor slurm`'s array and merge job ids to `path` ({"jobs": [{"dataset", "array",
    "merge"}]}), for `hpcsynth cancel`; earlier submissions stay (a resubmitted reduce's old merge may still
    wait)."""
    # Two reduces of one run submitted at once (other --out directories) would each rewrite the record
    # from what it read, and one's jobs would be lost to cancel: one at a time, under the run directory's
    # one lock (O_EXCL, not flock: NFS; never opened through a symlink nor blocked on a planted FIFO).
    with acquire_lock(path.with_name(path.name + ".lock"), "`hpcsynth reduce --executor slurm`", writing=path,
                      wait_s=RECORD_WAIT_S):
        recorded = _recorded_reduces(path)
        recorded.append({"dataset": dataset, "array": jobs["array"], "merge": jobs["merge"]})
        atomic_write_json(path, {"jobs": recorded})


def recorded_reduce_ids(path: Path) -> list[str]:
    """The job ids record_reduce() wrote to `path`, each checked before it reaches scancel; a damaged record
    is an error (cancel must not say "nothing to cancel" while those jobs run)."""
    if not path.exists():
        return []
    try:
        jobs = read_json(path)["jobs"]
        if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
            raise TypeError("not a list of jobs")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{path}: cannot be read as hpcsynth's record of Slurm reduce jobs ({exc}); find those "
                       f"jobs with `squeue --me` and scancel them, then delete the file") from None
    ids = [j.get(k) or "" for j in jobs for k in ("array", "merge")]
    for job_id in ids:
        if job_id and not (isinstance(job_id, str) and JOB_ID.fullmatch(job_id)):
            raise RunError(f"{path}: {job_id!r} is not a Slurm job id; this file was not written by hpcsynth "
                           f"reduce: delete it (cancel then stops the generation arrays only)")
    return [i for i in dict.fromkeys(ids) if i]


def _recorded_reduces(path: Path) -> list[dict[str, Any]]:
    """What record_reduce() adds to: a damaged record starts again (recorded_reduce_ids reports it)."""
    try:
        data = read_json(path)
        return [j for j in data["jobs"] if isinstance(j, dict)]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # none yet, or damaged: the next submission starts the record again


def active_reduce_jobs(path: Path, dataset: str) -> list[str]:
    """The recorded Slurm reduce jobs into the output folder named `dataset` that Slurm still holds (queued
    or running): they write that folder without holding its lock. [] where Slurm is not installed."""
    ids = [str(job.get(key)) for job in _recorded_reduces(path) if job.get("dataset") == dataset
           for key in ("array", "merge") if isinstance(job.get(key), str) and JOB_ID.fullmatch(job[key])]
    if not ids or shutil.which("squeue") is None:
        return []
    queued = set(_run(["squeue", "-h", "-o", "%F"], check=False).split())
    return [i for i in dict.fromkeys(ids) if i.split("_")[0] in queued]


def active_jobs(run: RunDir) -> list[str]:
    """Recorded jobs that Slurm still holds (pending, running, requeued): one squeue call, which unlike
    sacct shows a job the moment it is submitted."""
    ids = set(job_ids(run))
    if not ids:
        return []
    require_tools("squeue")
    queued = _run(["squeue", "-h", "-o", "%F"], check=False).split()
    return sorted(ids & set(queued))


def cancel(run: RunDir) -> list[str]:
    return cancel_jobs(job_ids(run))


def cancel_jobs(ids: list[str]) -> list[str]:
    """scancel the given ids, each already checked by check_job_id (a finished job is no error)."""
    if ids:
        require_tools("scancel")
        _run(["scancel", "--", *ids])  # ids are checked; "--" still ends options, whatever comes
    return ids


SLURM_TIMEOUT_S = 120  # a Slurm command that takes longer has a controller or slurmdbd that is down


def _run(command: list[str], check: bool = True) -> str:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{command[0]} did not answer within {SLURM_TIMEOUT_S} s: is Slurm's controller (and, for "
                         f"sacct, slurmdbd) up? Try `{command[0]} --version`, then again") from None
    except OSError as exc:  # not installed, not executable
        raise SlurmError(f"cannot run {command[0]} ({exc.strerror or exc}); is Slurm installed here?") from None
    if check and proc.returncode != 0:
        raise SlurmError(f"{command[0]} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return proc.stdout


def _first_error(text: str, exc: BaseException) -> str:
    """Slurm's own reason, e.g. 'sbatch: error: invalid partition specified: gpu2'."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("sbatch: error:")]
    return (errors or lines or [str(exc).splitlines()[0]])[0]


@contextlib.contextmanager
def _captured_stderr():
    """submitit runs sbatch without capturing its stderr; catch it at the file descriptor."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.NamedTemporaryFile(prefix="hpcsynth-sbatch-", suffix=".err") as handle:
        os.dup2(handle.fileno(), 2)
        try:
            yield Path(handle.name)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)



# Pending reasons that no amount of waiting cures: the request exceeds what the partition or account
# allows. Each maps to what to change.
NEVER_STARTS = {
    "PartitionConfig": "the partition cannot give what each task asks (slurm.cpus_per_task, mem_gb, gpus_per_task)",
    "PartitionNodeLimit": "the partition allows fewer nodes than each task asks",
    "PartitionTimeLimit": "slurm.time_min is above the partition's time limit",
    "BadConstraints": "no node has what each task asks (slurm.sbatch constraints, gres)",
    "InvalidQOS": "slurm.qos is not valid for this account or partition",
    "InvalidAccount": "slurm.account is not valid here",
    "QOSMaxWallDurationPerJobLimit": "slurm.time_min is above the QOS's wall-time limit",
    "DependencyNeverSatisfied": "a dependency can never be met",
}


def slurm_problems(run: RunDir, sacct: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """From status's one sacct answer: why array tasks wait, whether they can ever start, and the
    last log lines of tasks that failed before their worker could say anything."""
    reasons: dict[str, int] = {}
    for task in sacct.values():
        if task["state"] == "PENDING" and task.get("reason"):
            reasons[task["reason"]] = reasons.get(task["reason"], 0) + task.get("tasks", 1)
    never = [f"{reason}: {NEVER_STARTS[reason]}" for reason in reasons if reason in NEVER_STARTS]
    failed = []
    for tid, task in sorted(sacct.items()):
        if task["state"] in ("FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"):
            lines = _task_log_tail(run, tid)
            setup = [line for line in lines if line.startswith("hpcsynth: setup line failed")]
            failed.append({"task": tid, "state": task["state"], "setup_error": (setup or [""])[-1],
                           "log_tail": lines[-5:]})
    return {"pending_reasons": reasons, "never_starts": "; ".join(never), "failed_tasks": failed}


def _task_log_tail(run: RunDir, task_id: str) -> list[str]:
    """The end of submitit's output file of one array task (RUN/slurm/JOB/JOB_TASK_0_log.out)."""
    # read_tail: anyone who can write RUN/slurm/ could plant a link to a secret there (status prints
    # this tail), a FIFO that hangs status, or a link to /dev/zero that fills its memory.
    try:
        data = read_tail(run.slurm_log_path(task_id), 8192)
    except (OSError, RunError):
        return []
    return [line for line in data.decode(errors="replace").splitlines() if line.strip()]


# --- reduce: a CPU array over the reduce parts, then one merge job that waits for it (afterok)

# A part and the merge are single-threaded and bounded by one part / one shuffle bucket (~0.5 GB), so
# each task asks one core and a little memory, whatever the GPU workers of the same profile ask.
