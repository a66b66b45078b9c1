"""Submission to Slurm through submitit (the one module that imports it); watching and cancelling the
jobs is slurm_jobs.py.

Submission: array tasks are long-lived workers (hpcsynth.generate.pull) that start their engine once and pull
shards; arrays larger than the cluster's MaxArraySize are split into several sbatch calls. Preemption
and time limits reach the worker as USR2 through submitit's checkpointing, which requeues the same
task; the requeued task resumes from the run directory. Watching: at most one sacct call per status
refresh, over every job id the run recorded.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

from hpcsynth.config import SlurmConfig
from hpcsynth.errors import HpcsynthError
from hpcsynth.execute.slurm_jobs import (SLURM_TIMEOUT_S, SlurmError, _captured_stderr, _first_error,  # noqa: F401
                                       _run, active_jobs, cancel_jobs, record_launch,
                                       require_tools)  # launch's backend.*
from hpcsynth.rundir import RunDir

log = logging.getLogger("hpcsynth.execute.slurm")


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

    require_tools("sbatch", "sacct")  # before submitit, which looks for srun and raises a bare RuntimeError
    executor = make_executor(run, config)
    limit = max_array_size(config)
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


def make_executor(run: RunDir, config: SlurmConfig) -> Any:
    """submitit's executor for this run: the sbatch script it writes is checked line by line."""
    import submitit

    check_run_path(run)
    # submitit pastes `python` into the job's command line as is: quoted, a path with spaces or a
    # `;` stays one word.
    python = shlex.quote(config.python) if config.python else None
    executor = submitit.SlurmExecutor(folder=run.root / "slurm" / "%A", python=python, max_num_timeout=1000)
    executor.update_parameters(**executor_parameters(config))
    return executor


def check_run_path(run: RunDir) -> None:
    """Refuse run paths that Slurm would read as more than a path.

    Slurm expands %j, %A, %a... in --output (and submitit in its own file names), so a '%' in the path
    sends the job's log elsewhere and the job fails without one; a newline would end an #SBATCH line.
    """
    check_slurm_path(run.root, "run directory", "plan the run in a directory without them")


def check_slurm_path(folder: Path, what: str, fix: str) -> None:
    """The same refusal for every folder that holds Slurm job files (a plan's or a reduce's too): with a
    '%' there, Slurm and submitit would write the scripts, pickles and logs to another directory."""
    path = str(Path(folder).absolute())
    if "%" in path or not path.isprintable():
        raise SlurmError(f"{what} {path!r} has a '%' or a control character, which Slurm reads as a "
                         f"file-name pattern or a line break; {fix}")


def executor_parameters(config: SlurmConfig) -> dict[str, Any]:
    params: dict[str, Any] = {
        "job_name": config.job_name, "time": config.time_min, "cpus_per_task": config.cpus_per_task,
        "mem": f"{config.mem_gb}GB", "signal_delay_s": config.signal_delay_s, "ntasks_per_node": 1,
        "setup": [guarded_setup_line(line) for line in config.setup], "stderr_to_stdout": True,
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
    _check_directives(params)
    return params


def _check_directives(params: dict[str, Any]) -> None:
    """Last guard before sbatch (the config check names the key): each directive stays one line."""
    flat = {**params, **params.get("additional_parameters", {})}
    flat.pop("additional_parameters", None)
    flat.pop("setup", None)  # shell lines by design; submitit writes them after every directive
    for key, value in flat.items():
        if not str(key).isprintable() or not str(value).isprintable():
            raise SlurmError(f"sbatch option {key!r}={value!r} spans lines; fix it in the profile's slurm: section")


SETUP_FAILED_EXIT = 97  # an array task whose setup line failed; distinct from the worker's own codes


def guarded_setup_line(line: str) -> str:
    """A setup line that ends its task when it fails, saying which line and how: without this a failed
    `source venv/bin/activate` is ignored and the worker runs in the wrong environment."""
    return (f"{{ {line}\n}} || {{ echo \"hpcsynth: setup line failed (exit $?): \"{shlex.quote(line)} >&2; "
            f"exit {SETUP_FAILED_EXIT}; }}")


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


REDUCE_CPUS = 1
REDUCE_MEM_GB = 4


def submit_reduce(spec: Any, config: SlurmConfig) -> dict[str, Any]:
    """Submit the parts not yet done as one array (at most slurm.array_tasks tasks, each a fixed group of
    parts) and the merge as a job depending on it; return {array, merge, parts}."""
    import dataclasses

    import submitit

    check_slurm_path(Path(spec.out), "reduce output directory", "pass --out a directory without them")
    require_tools("sbatch", "sacct")
    pending = [i for i in spec.part_indices() if spec.part_done(i) is None]
    cpu = dataclasses.replace(config, gpus_per_task=0, cpus_per_task=REDUCE_CPUS,
                              mem_gb=min(config.mem_gb, REDUCE_MEM_GB), job_name=f"{config.job_name}-reduce")
    params = executor_parameters(cpu)
    folder = Path(spec.out) / "slurm" / "%A"
    array_id = ""
    if pending:
        count = min(config.array_tasks, len(pending), max_array_size(config))
        groups = [pending[i::count] for i in range(count)]
        executor = submitit.SlurmExecutor(folder=folder, python=config.python or None, max_num_timeout=1000)
        executor.update_parameters(**params)
        jobs = _submit_captured(executor, [(ReduceParts(), spec.out, group) for group in groups])
        array_id = jobs[0].job_id.split("_")[0]
    merge = submitit.SlurmExecutor(folder=folder, python=config.python or None, max_num_timeout=1000)
    extra = dict(params.get("additional_parameters", {}))
    if array_id:
        extra["dependency"] = f"afterok:{array_id}"
        # A part task that fails (killed, out of memory) makes afterok unsatisfiable: without this the
        # merge would wait in the queue forever, next to the one a rerun of reduce submits.
        extra["kill-on-invalid-dep"] = "yes"
    merge.update_parameters(**{**params, "additional_parameters": extra})
    merge_job = _submit_captured(merge, [(ReduceMerge(), spec.out)], batch=False)[0]
    log.info("reduce: array %s over %d parts, merge job %s", array_id or "-", len(pending), merge_job.job_id)
    return {"array": array_id, "merge": merge_job.job_id, "parts": len(pending)}


def _submit_captured(executor: Any, calls: list[tuple], batch: bool = True) -> list[Any]:
    import submitit

    with _captured_stderr() as captured:
        try:
            if batch:
                with executor.batch():
                    jobs = [executor.submit(*call) for call in calls]
            else:
                jobs = [executor.submit(*call) for call in calls]
        except (subprocess.CalledProcessError, submitit.core.utils.FailedSubmissionError,
                submitit.core.utils.FailedJobError) as exc:
            said = captured.read_text(errors="replace")
            raise SlurmError(f"sbatch refused the reduce: {_first_error(said + str(exc), exc)}") from None
    return jobs


class ReduceParts:
    """An array task: reduce its group of parts (a requeued task skips the parts already done)."""

    def __call__(self, out_dir: str, indices: list[int]) -> int:
        from hpcsynth.reduce.parts import reduce_part

        for index in indices:
            reduce_part(out_dir, index)
        return len(indices)

    def checkpoint(self, out_dir: str, indices: list[int]):
        import submitit

        return submitit.helpers.DelayedSubmission(ReduceParts(), out_dir, indices)


class ReduceMerge:
    """The merge task: runs once every part task succeeded."""

    def __call__(self, out_dir: str) -> dict[str, Any]:
        from hpcsynth.reduce.merge import merge_parts

        report = merge_parts(out_dir)
        return {"sequences": report["sequences"], "tokens": report["tokens"]}


# --- planning as CPU arrays (`hpcsynth plan --executor slurm`); the planner hands in picklable calls
PLAN_CPUS = 1  # one planning process per array task: the array is the parallelism
PLAN_MEM_GB = 4  # a group holds ~32 bytes a document plus zstd buffers; 4 GB is far above that
PLAN_TIME_MIN = 120


def map_plan_array(run_root: Path, config: SlurmConfig, fn: Any, jobs: list[Any], name: str) -> list[Any]:
    """fn(job) for every job as the tasks of CPU-only arrays (no GPUs asked); wait; results in order."""
    import dataclasses

    import submitit

    if not jobs:
        return []
    check_slurm_path(run_root, "run directory", "plan the run in a directory without them")
    require_tools("sbatch", "sacct")
    cpu = dataclasses.replace(config, gpus_per_task=0, cpus_per_task=PLAN_CPUS, mem_gb=PLAN_MEM_GB,
                              time_min=PLAN_TIME_MIN, job_name=f"{config.job_name}-{name}")
    executor = submitit.SlurmExecutor(folder=run_root / "slurm" / f"{name}-%A", python=config.python or None)
    executor.update_parameters(**executor_parameters(cpu))
    limit = max_array_size(config)
    submitted = []
    for start in range(0, len(jobs), limit):
        with _captured_stderr() as captured:
            try:
                submitted += executor.map_array(fn, jobs[start:start + limit])
                failure = None
            except (subprocess.CalledProcessError, submitit.core.utils.FailedSubmissionError) as exc:
                failure = exc
            said = captured.read_text(errors="replace")
        if failure is not None:
            raise SlurmError(f"sbatch refused the {name} array: {_first_error(said + str(failure), failure)}")
    log.info("%s: %d array tasks submitted", name, len(submitted))
    try:
        return [_result(job, name) for job in submitted]
    except BaseException:  # a task failed, or this process is stopped: the others would run for nothing
        with contextlib.suppress(HpcsynthError):
            cancel_jobs(sorted({str(job.job_id).split("_")[0] for job in submitted}))
        raise


PLAN_POLL_S = 1.0  # how often a planner waiting on an array task looks for its result
PLAN_QUEUE_S = 5.0  # how often it asks squeue (the controller is shared: not every second for hours)
PLAN_GONE_S = 15.0  # a task out of squeue this long without a result is gone (result files may lag on NFS)


def _result(job: Any, name: str) -> Any:
    """One array task's result. submitit alone would wait for ever on a task cancelled before it started:
    such a task has no accounting record, so sacct never says it ended; squeue, which lists every pending
    and running task, shows it gone."""
    import submitit

    gone_since, asked = None, 0.0
    while True:
        try:
            if job.done():
                return job.result()
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as exc:
            raise SlurmError(f"{name} array task {job.job_id} failed: {str(exc).strip().splitlines()[-1][:300]}; "
                             f"its log: {job.paths.stdout}") from None
        if time.monotonic() - asked >= PLAN_QUEUE_S:
            asked = time.monotonic()
            queued = _queued(str(job.job_id).split("_")[0])
            if queued is None or str(job.job_id) in queued:
                gone_since = None
            elif gone_since is None:
                gone_since = asked
            elif asked - gone_since > PLAN_GONE_S:
                raise SlurmError(f"{name} array task {job.job_id} left Slurm's queue without a result (cancelled "
                                 f"before it started?); plan again; its log, if it ran: {job.paths.stdout}")
        time.sleep(PLAN_POLL_S)


def _queued(array: str) -> set[str] | None:
    """The tasks of `array` that Slurm still holds, one id each (squeue -r); None when squeue cannot say.
    An array the controller has forgotten (MinJobAge after its last task ended) holds none."""
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%i"], capture_output=True, text=True,
                              timeout=SLURM_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode == 0:
        return set(proc.stdout.split())
    return set() if "invalid job id" in proc.stderr.lower() else None
