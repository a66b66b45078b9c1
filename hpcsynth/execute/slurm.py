"""The one module that talks to Slurm: submitit for submission, sacct/scancel/scontrol for the rest.

Submission: array tasks are long-lived workers (hpcsynth.generate.pull) that start their engine once and pull
shards; arrays larger than the cluster's MaxArraySize are split into several sbatch calls. Preemption
and time limits reach the worker as USR2 through submitit's checkpointing, which requeues the same
task; the requeued task resumes from the run directory. Watching: at most one sacct call per status
refresh, over every job id the run recorded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hpcsynth.config import SlurmConfig
from hpcsynth.errors import HpcsynthError
from hpcsynth.files import atomic_write_json, read_json
from hpcsynth.rundir import RunDir

log = logging.getLogger("hpcsynth.execute.slurm")


class SlurmError(HpcsynthError):
    """Slurm refused or is not there."""


def require_tools(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            raise SlurmError(f"{tool} is not on PATH, so this is not a Slurm login node; "
                             f"use --executor local to run on this machine")


def max_array_size(config: SlurmConfig) -> int:
    """The largest array Slurm accepts (MaxArraySize; indices go up to MaxArraySize - 1)."""
    if config.max_array_size > 0:
        return config.max_array_size
    out = _run(["scontrol", "show", "config"])
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize":
            return int(value.strip())
    return 1001  # Slurm's default


def plan_tasks(config: SlurmConfig, pending: list[int]) -> list[list[int] | None]:
    """What each array task gets: a fixed group of shards, or None to pull from all unfinished ones."""
    if config.shards_per_task > 0:
        size = config.shards_per_task
        return [pending[i:i + size] for i in range(0, len(pending), size)]
    return [None] * min(config.array_tasks, len(pending))


def submit_arrays(run: RunDir, config: SlurmConfig, tasks: list[list[int] | None],
                  retry_failed: bool) -> list[dict[str, Any]]:
    """Submit the tasks as job arrays of at most MaxArraySize each; return [{job_id, tasks}]."""
    import submitit

    require_tools("sbatch", "sacct")
    limit = max_array_size(config)
    executor = submitit.SlurmExecutor(folder=run.root / "slurm" / "%A", python=config.python or None,
                                      max_num_timeout=1000)
    executor.update_parameters(**executor_parameters(config))
    arrays = []
    for start in range(0, len(tasks), limit):
        chunk = tasks[start:start + limit]
        with _captured_stderr() as captured:
            try:
                with executor.batch():
                    jobs = [executor.submit(SlurmWorker(), str(run.root), shards, retry_failed, config.gpu_mode)
                            for shards in chunk]
            except (subprocess.CalledProcessError, submitit.core.utils.FailedSubmissionError,
                    submitit.core.utils.FailedJobError) as exc:
                failure = exc
            else:
                failure = None
            said = captured.read_text(errors="replace")
        if failure is not None:
            raise SlurmError(f"sbatch refused the array: {_first_error(said + str(failure), failure)}")
        job_id = jobs[0].job_id.split("_")[0]
        arrays.append({"job_id": job_id, "tasks": len(chunk)})
        log.info("submitted array %s with %d tasks", job_id, len(chunk))
    return arrays


def executor_parameters(config: SlurmConfig) -> dict[str, Any]:
    params: dict[str, Any] = {
        "job_name": config.job_name, "time": config.time_min, "cpus_per_task": config.cpus_per_task,
        "mem": f"{config.mem_gb}GB", "signal_delay_s": config.signal_delay_s, "ntasks_per_node": 1,
        "setup": list(config.setup), "stderr_to_stdout": True,
        # submitit's default caps arrays at 256 running tasks; ours is explicit (0: no cap).
        "array_parallelism": config.array_parallelism or 100_000,
    }
    for key in ("partition", "qos", "account"):
        if getattr(config, key):
            params[key] = getattr(config, key)
    if config.gpus_per_task > 0:
        if config.gpu_request == "gres":
            params["gres"] = f"gpu:{config.gpus_per_task}"
        else:
            params["gpus_per_task"] = config.gpus_per_task
    extra = {}
    for option in config.sbatch:
        key, sep, value = option.partition("=")
        extra[key.strip().lstrip("-")] = value.strip() if sep else True
    if extra:
        params["additional_parameters"] = extra
    return params


class SlurmWorker:
    """What an array task runs; submitit calls checkpoint() on USR2 (preemption, time limit)."""

    def __call__(self, run_root: str, shards: list[int] | None, retry_failed: bool,
                 gpu_mode: str = "per_gpu") -> int:
        from hpcsynth.execute.local import run_task

        # A task that sees several GPUs runs a worker on each (or one tensor-parallel engine).
        failed = run_task(run_root, shards, retry_failed, gpu_mode)
        if failed:
            raise RuntimeError(f"{failed} shard(s) or worker(s) failed; see RUN/failed/ and `hpcsynth status`")
        return failed

    def checkpoint(self, run_root: str, shards: list[int] | None, retry_failed: bool, gpu_mode: str = "per_gpu"):
        import submitit

        # Nothing to save: every finished record is already in the progress logs. The requeued task
        # (same array index) takes its leases back at once and skips what is on disk.
        logging.getLogger("hpcsynth").info("checkpoint: requeueing (preemption or time limit)")
        return submitit.helpers.DelayedSubmission(SlurmWorker(), run_root, shards, retry_failed, gpu_mode)


def record_launch(run: RunDir, arrays: list[dict[str, Any]], config: SlurmConfig, shards: int) -> Path:
    path = run.launches_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.json"
    atomic_write_json(path, {"executor": "slurm", "time": time.time(), "arrays": arrays, "pending_shards": shards,
                             "gpus_per_task": config.gpus_per_task})
    return path


def recorded_jobs(run: RunDir) -> list[dict[str, Any]]:
    if not run.launches_dir.is_dir():
        return []
    return [read_json(p) for p in sorted(run.launches_dir.glob("*.json"))]


def job_ids(run: RunDir) -> list[str]:
    return [a["job_id"] for launch in recorded_jobs(run) for a in launch.get("arrays", [])]


def sacct_tasks(ids: list[str]) -> dict[str, dict[str, Any]]:
    """One sacct call: state and elapsed seconds of every array task of the given jobs."""
    if not ids or shutil.which("sacct") is None:
        return {}
    out = _run(["sacct", "-X", "-n", "-P", "-D", "-j", ",".join(ids), "-o", "JobID,State,ElapsedRaw"], check=False)
    tasks: dict[str, dict[str, Any]] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 3:
            continue
        job, state, elapsed = parts[:3]
        entry = tasks.setdefault(job, {"state": "", "elapsed_s": 0, "attempts": 0})
        # -D lists every attempt of a requeued task, oldest first: the last is the current state,
        # and elapsed time adds up over all of them.
        entry["state"] = state.split()[0] if state else ""
        entry["elapsed_s"] += int(elapsed or 0)
        entry["attempts"] += 1
    return tasks


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
    ids = job_ids(run)
    if ids:
        require_tools("scancel")
        _run(["scancel", *ids])
    return ids


def _run(command: list[str], check: bool = True) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
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

