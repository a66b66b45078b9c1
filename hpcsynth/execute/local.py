"""Workers on the GPUs one machine (or one Slurm task) sees: one process per GPU, or one engine across all.

Many clusters hand out whole nodes; a task that sees eight GPUs and starts one worker wastes seven. Here
`launch --workers N` and a Slurm array task that sees several GPUs start the same way:
- per_gpu: one worker process per GPU (`python -m hpcsynth.generate.pull`), each with its own
  CUDA_VISIBLE_DEVICES, engine and log; the shard leases keep them apart, and HPCSYNTH_GPU_SLOT tells
  siblings of one array task from an earlier run of it (lease takeover after a requeue);
- tensor_parallel: one worker in this process whose vLLM engine spans every visible GPU.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hpcsynth.config import Config
from hpcsynth.files import open_append_nofollow
from hpcsynth.generate.engines import Engine, make_engine
from hpcsynth.generate.pull import pull_shards, task_name
from hpcsynth.logs import log_to
from hpcsynth.rundir import RunDir

log = logging.getLogger("hpcsynth.execute.local")


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES lists them (Slurm sets it for a gres job)."""
    return [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]


def run_task(run_root: str, shards: list[int] | None, retry_failed: bool, gpu_mode: str = "per_gpu",
             started: Started | None = None, local: bool = False) -> int:
    """What one Slurm array task runs: the workers for the GPUs it sees. Returns how many shards failed."""
    run = RunDir(Path(run_root))
    gpus = visible_gpus()
    # The task's own log: its workers' start, and the checkpoint before a requeue.
    log_to(run.log_path(f"worker-{task_name()}"))
    if len(gpus) > 1 and gpu_mode == "per_gpu":
        exits = run_worker_processes(run, gpus, retry_failed, shards, log_prefix=f"worker-{task_name()}-gpu",
                                     started=started, die_with_launcher=local)
        for line in describe_failures(exits):
            log.error("%s", line)
        return sum(1 for worker in exits if worker.code != 0)
    factory = _tensor_parallel_factory(len(gpus)) if len(gpus) > 1 else make_engine
    results = pull_shards(run_root, shards, retry_failed=retry_failed, engine_factory=factory)
    return sum(1 for r in results if r.state == "failed")


@dataclasses.dataclass(frozen=True)
class WorkerExit:
    slot: int
    pid: int
    code: int
    log: Path
    start: int  # where this launch's part of the log begins


# Told the workers' (pid, GPU) once all have started: a local launch records them for `hpcsynth cancel`.
Started = Callable[[list[tuple[int, str]]], None]


def run_worker_processes(run: RunDir, gpus: list[str], retry_failed: bool, shards: list[int] | None = None,
                         log_prefix: str = "worker-local-", log_names: list[str] | None = None,
                         started: Started | None = None, die_with_launcher: bool = True) -> list[WorkerExit]:
    """One worker process per GPU, each pinned to it; wait for all and say how each ended.

    die_with_launcher: each worker is killed with this process (generate/pull.py: HPCSYNTH_PARENT_PID), so a
    local launcher ended by kill -9 leaves no worker running on. Not in a Slurm task: there the task's
    process ends when it has requeued itself (preemption, time limit) while its workers go on generating,
    records the requeued task resumes from, until Slurm ends the step (which ends every process of it).
    log_names: each worker's log name after log_prefix (default: its slot)."""
    procs = []
    try:
        for slot, gpu in enumerate(gpus):
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", log_names[slot]) if log_names else str(slot)  # MIG ids hold "/"
            log_path = run.log_path(f"{log_prefix}{name}")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "HPCSYNTH_GPU_SLOT": str(slot),
                   "HPCSYNTH_GPU_SLOTS": str(len(gpus)),  # where in the shard list each starts (generate/pull.py)
                   "HPCSYNTH_PARENT_PID": str(os.getpid())}
            if not die_with_launcher:
                del env["HPCSYNTH_PARENT_PID"]
            command = [sys.executable, "-m", "hpcsynth.generate.pull", str(run.root), "--log", str(log_path)]
            command += ["--shards", ",".join(map(str, shards))] if shards is not None else []
            command += ["--retry-failed"] if retry_failed else []
            # stdout and stderr too: a worker that dies before its logging starts still leaves a reason.
            with open_append_nofollow(log_path) as handle:
                start = handle.tell()
                procs.append((subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                               preexec_fn=_ignore_usr2), log_path, start))
        log.info("started %d workers on GPUs %s", len(procs), ",".join(gpus))
        if started is not None:
            started([(proc.pid, gpu) for (proc, _, _), gpu in zip(procs, gpus)])
        return [WorkerExit(slot, proc.pid, proc.wait(), path, start) for slot, (proc, path, start) in enumerate(procs)]
    except BaseException:  # interrupted (Ctrl-C, a Slurm signal): leave no worker running for nobody
        for proc, _, _ in procs:
            proc.terminate()
        for proc, _, _ in procs:
            proc.wait()
        raise


def describe_failures(exits: list[WorkerExit]) -> list[str]:
    """One line per worker that failed: how it ended and the first error its log gives."""
    return [f"worker {w.slot} (pid {w.pid}, exit {w.code}): {first_error(w.log, w.start)}; log {w.log}"
            for w in exits if w.code != 0]


def first_error(log_path: Path, start: int = 0) -> str:
    """The line of a worker's log (this launch's part) that says what went wrong: the project's own
    one-line error, else the exception line a traceback ends with, else the last ERROR line."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(start)
            lines = [line.strip() for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    ours = [line for line in lines if line.startswith("hpcsynth: error:")]
    raised = [line for line in lines if _is_exception_line(line)]
    logged = [line for line in lines if " ERROR " in line]
    return (ours or raised or logged or lines or ["the worker wrote nothing to its log"])[-1][:500]


def _is_exception_line(line: str) -> bool:
    """'ValueError: ...' or 'hpcsynth.errors.EngineError: ...', as Python prints a traceback's last line."""
    name, sep, _ = line.partition(":")
    return bool(sep) and name.replace(".", "").replace("_", "").isalnum() and name.endswith(("Error", "Exception"))


def _ignore_usr2() -> None:
    # Slurm's warning before a preemption or time limit (USR2) reaches every process of the step, and its
    # default action kills. This process answers it (submitit checkpoints and requeues the task); the
    # workers keep generating until the requeue stops them, and the requeued task resumes from disk.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _tensor_parallel_factory(gpus: int):
    def factory(config: Config) -> Engine:
        if config.model.engine != "vllm":
            log.warning("slurm.gpu_mode=tensor_parallel needs model.engine=vllm; %s uses one of %d GPUs",
                        config.model.engine, gpus)
            return make_engine(config)
        vllm = dataclasses.replace(config.vllm, tensor_parallel_size=gpus)
        return make_engine(dataclasses.replace(config, vllm=vllm))

    return factory
