"""Slurm's seam: the one module that imports submitit. Like submitit's own SlurmExecutor it knows the
cluster, never the job: the stage hands in the function each array task runs (launch its workers,
execute/launch.py; the plan its input groups, execute/plan_array.py; the reduce its parts and merge,
reduce/slurm.py), and no stage is imported here. Watching and cancelling the jobs is slurm_jobs.py.

- make_executor: the one place an executor is built: every directive, and the `python` path quoted.
- submit_array(fn, items, ...): fn(*item) as one array task per item; arrays larger than the cluster's
  MaxArraySize are split into several sbatch calls; returns submitit's jobs, in item order.
- map_array(fn, items, ...): fn(item) the same way, waits, results in order; the rest is cancelled when a
  task fails or the caller is stopped.
- Requeued(fn): preemption and time limits reach the task as USR2 through submitit's checkpointing,
  which requeues the same task with the same arguments; fn resumes from the files it committed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpcsynth.config import SlurmConfig
from hpcsynth.errors import HpcsynthError
from hpcsynth.pool import stops_on_term_and_hup
from hpcsynth.execute.slurm_jobs import (SLURM_TIMEOUT_S, SlurmError, _captured_stderr, _first_error, _run,
                                       cancel_jobs, require_tools)
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


def make_executor(config: SlurmConfig, folder: Path, prefix: str = "", after: str = "") -> Any:
    """The one place a submitit executor is built, for every job hpcsynth submits: its files go under
    FOLDER/PREFIX%A; `after`, an array or job id, holds it until that one succeeded. The sbatch script
    it writes is checked line by line (tests/execute/test_slurm_injection.py)."""
    import submitit

    check_slurm_path(folder, "Slurm job folder", "use a directory without them")
    params = executor_parameters(config)
    if after:
        extra = dict(params.get("additional_parameters", {}))
        extra["dependency"] = f"afterok:{after}"
        # A task of `after` that fails (killed, out of memory) makes afterok unsatisfiable: without this the
        # job would wait in the queue forever, next to the one a rerun submits.
        extra["kill-on-invalid-dep"] = "yes"
        params["additional_parameters"] = extra
    # submitit pastes `python` into the job's command line as is: quoted, a path with spaces or a `;`
    # stays one word.
    python = shlex.quote(config.python) if config.python else None
    executor = submitit.SlurmExecutor(folder=Path(folder) / f"{prefix}%A", python=python, max_num_timeout=1000)
    executor.update_parameters(**params)
    return executor


def submit_array(fn: Callable[..., Any], items: Sequence[tuple], config: SlurmConfig, folder: Path, *,
                 prefix: str = "", after: str = "", what: str = "array") -> list[Any]:
    """fn(*item) as one array task per item (one item: a plain job), at most MaxArraySize tasks an sbatch
    call; returns submitit's jobs in item order. `what` names the submission in sbatch's refusal."""
    import submitit

    if not items:
        return []
    require_tools("sbatch", "sacct")  # before submitit, which looks for srun and raises a bare RuntimeError
    executor = make_executor(config, folder, prefix, after)
    limit = max_array_size(config)
    jobs: list[Any] = []
    for start in range(0, len(items), limit):
        chunk = items[start:start + limit]
        with _captured_stderr() as captured:
            try:
                with executor.batch():
                    submitted = [executor.submit(fn, *item) for item in chunk]
            except (subprocess.CalledProcessError, submitit.core.utils.FailedSubmissionError,
                    submitit.core.utils.FailedJobError) as exc:
                failure: Exception | None = exc
            else:
                failure = None
            said = captured.read_text(errors="replace")
        if failure is not None:
            raise SlurmError(f"sbatch refused the {what}: {_first_error(said + str(failure), failure)}")
        jobs += submitted
        log.info("submitted %s %s with %d tasks", what, array_id(submitted[0]), len(chunk))
    return jobs


def array_id(job: Any) -> str:
    """The array (or plain job) a submitit job belongs to: 1234 for task 1234_5."""
    return str(job.job_id).split("_")[0]


def cpu_only(config: SlurmConfig, job_name: str, cpus: int, mem_gb: int, time_min: int = 0) -> SlurmConfig:
    """The cluster settings for CPU work (no GPUs asked): the plan's and the reduce's array tasks."""
    return dataclasses.replace(config, gpus_per_task=0, cpus_per_task=cpus, mem_gb=mem_gb, job_name=job_name,
                               time_min=time_min or config.time_min)


class Requeued:
    """An array task that preemption or its time limit requeues (submitit calls checkpoint() on USR2)
    with the same arguments: fn must resume from what it committed to disk, as the worker and the
    reduce's parts do. fn is a module-level function, so the pickle is a reference, never its code."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def checkpoint(self, *args: Any) -> Any:
        import submitit

        # Nothing to save: what fn finished is already on disk; the requeued task skips it.
        logging.getLogger("hpcsynth").info("checkpoint: requeueing (preemption or time limit)")
        return submitit.helpers.DelayedSubmission(Requeued(self.fn), *args)


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


def map_array(fn: Callable[[Any], Any], items: Sequence[Any], config: SlurmConfig, folder: Path, name: str,
              again: str = "submit it again") -> list[Any]:
    """fn(item) for every item as the tasks of arrays named after `name` (files under FOLDER/NAME-%A);
    wait; the results in order. A task that fails, or this process being stopped, cancels the others
    (they would run for nothing); `again` is what to do then, in the error."""
    submitted = submit_array(fn, [(item,) for item in items], config, folder, prefix=f"{name}-",
                             what=f"{name} array")
    log.info("%s: %d array tasks submitted", name, len(submitted))
    try:
        with stops_on_term_and_hup():
            return [_result(job, name, again) for job in submitted]
    except BaseException:  # a task failed, or this process is stopped: the others would run for nothing
        with contextlib.suppress(HpcsynthError):
            cancel_jobs(sorted({array_id(job) for job in submitted}))
        raise


MAP_POLL_S = 1.0  # how often a caller waiting on an array task looks for its result
MAP_QUEUE_S = 5.0  # how often it asks squeue (the controller is shared: not every second for hours)
MAP_GONE_S = 15.0  # a task out of squeue this long without a result is gone (result files may lag on NFS)


def _result(job: Any, name: str, again: str) -> Any:
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
        if time.monotonic() - asked >= MAP_QUEUE_S:
            asked = time.monotonic()
            queued = _queued(array_id(job))
            if queued is None or str(job.job_id) in queued:
                gone_since = None
            elif gone_since is None:
                gone_since = asked
            elif asked - gone_since > MAP_GONE_S:
                raise SlurmError(f"{name} array task {job.job_id} left Slurm's queue without a result (cancelled "
                                 f"before it started?); {again}; its log, if it ran: {job.paths.stdout}")
        time.sleep(MAP_POLL_S)


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
