"""Launch: run the workers of a planned run on an executor.

local: one worker in this process, or with `workers > 1` one worker process per GPU, each pinned through
CUDA_VISIBLE_DEVICES; the workers share the shards through their leases. slurm: job arrays of
run_array_task through hpcsynth/execute/slurm.py. Either way only shards without a done marker for the
run's fingerprint are worked on, so a relaunch picks up where the last one stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcsynth.config import (Config, SlurmConfig, config_from_dict, diff_configs, fingerprint, load_config,
                             read_yaml)
from hpcsynth.errors import ConfigError, HpcsynthError, InputError, RunError
from hpcsynth.files import read_json
from hpcsynth.prompts import load_prompts
from hpcsynth.execute.local import describe_failures, run_task, run_worker_processes, visible_gpus
from hpcsynth.generate.engines import check_model
from hpcsynth.generate.pull import pull_shards
from hpcsynth.locks import process_start
from hpcsynth.logs import log_to
from hpcsynth.rundir import RunDir

EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class LaunchReport:
    executor: str
    done: int = 0
    total: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    arrays: list[dict[str, Any]] = field(default_factory=list)
    submitted_shards: int = 0
    # Done markers found wrong (output missing, cut, or failing its checksum) and set aside to redo.
    repaired: list[tuple[int, str]] = field(default_factory=list)
    # Local worker processes that exited with an error: "worker I (pid P, exit N): first error; log PATH".
    worker_errors: list[str] = field(default_factory=list)


def launch_run(run: RunDir, executor: str = "local", retry_failed: bool = False, workers: int = 1,
               config_path: Path | None = None, force: bool = False, profile: Path | None = None,
               verify: str = "sha256", add_workers: bool = False) -> LaunchReport:
    run.require_planned()
    _check_planned_objects(run, force)
    try:
        config = run.config()  # a broken resolved config should fail here, not inside a worker
    except RunError:
        if config_path is None or not force:
            raise
        # RUN/config.yaml or RUN/fingerprint is damaged or missing: the config given with --force replaces
        # it, as the error says. Done shards whose markers carry the new fingerprint stay done.
        config = None
    if executor not in EXECUTORS:
        raise HpcsynthError(f"--executor {executor!r} is not available; choose one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise HpcsynthError(f"--workers must be 1 or more, got {workers}")
    if config_path is not None:
        config = adopt_config(run, config, load_config(config_path), force, str(config_path))
    assert config is not None  # None above only with --config and --force, and then adopted
    repaired = set_aside_bad_markers(run, verify)
    # One line now rather than a failure in every worker. Slurm workers run elsewhere: a model directory
    # this login node does not see may still be on the compute nodes.
    check_model(config, str(config_path or run.config_path), here=executor != "slurm")
    _check_engine_args(config)
    if executor == "slurm":
        slurm = load_profile(profile, config.slurm) if profile else config.slurm
        return dataclasses.replace(_launch_slurm(run, slurm, retry_failed, force or add_workers),
                                   repaired=repaired)
    errors = _launch_local(run, config, workers, retry_failed, add_workers)
    return dataclasses.replace(_report(run, executor), worker_errors=errors, repaired=repaired)


def _check_planned_objects(run: RunDir, force: bool) -> None:
    """Inputs planned from a bucket are still the objects the shards were cut from (ETag and size), checked
    once here, before any worker starts or any job waits in a queue: the workers read the shards, never the
    bucket, so a changed corpus would otherwise go unnoticed until someone compared the data by hand. With
    --force (a campaign whose corpus was updated upstream mid-way), a warning: the shards, which hold the
    planned version, are what the workers read anyway."""
    try:
        inputs = read_json(run.manifest_path).get("inputs") or []
    except (OSError, ValueError, AttributeError):  # a damaged manifest: what reads it next says so, as before
        return
    if isinstance(inputs, list) and all(isinstance(entry, dict) for entry in inputs) \
            and any("etag" in entry for entry in inputs):
        from hpcsynth.plan.manifest import check_objects_unchanged

        try:
            check_objects_unchanged(inputs)
        except InputError as exc:
            if not force:
                raise
            print(f"hpcsynth: warning: {str(exc).split('; its shards')[0]}; --force: going on from the shards, which "
                  f"hold the planned version", file=sys.stderr)


def _launch_local(run: RunDir, config: Config, workers: int, retry_failed: bool, add: bool) -> list[str]:
    """Workers on this machine, recorded in RUN/local/ (execute/local_runs.py) for `cancel` and for the next
    launch, on GPUs no other live launch of the run holds. SIGTERM and SIGHUP end them as Ctrl-C does.
    Returns a line per worker process that failed."""
    from hpcsynth.execute.local_runs import machine_gpus, registered
    from hpcsynth.pool import stops_on_term_and_hup

    pool, visible = machine_gpus(), visible_gpus()
    every = workers == 1 and len(visible) > 1 and not add  # several GPUs listed: all, as an array task would
    with stops_on_term_and_hup(), registered(run, len(visible) if every else workers, pool, add) as me:
        def started(procs: list[tuple[int, str]]) -> None:
            me.workers = [{"pid": pid, "start": process_start(pid), "gpu": gpu} for pid, gpu in procs]
            me.write()

        if every:
            run_task(str(run.root), None, retry_failed, config.slurm.gpu_mode, started=started, local=True)
        elif workers == 1 and not add:
            if pool is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = me.gpus[0]  # the GPU this launch holds, as a worker's
            _run_in_process(run, retry_failed)
        else:  # logs by GPU: the workers of a second launch (--add-workers) never write into the first's
            return describe_failures(run_worker_processes(run, me.gpus, retry_failed, log_names=me.gpus,
                                                          started=started))
    return []


def set_aside_bad_markers(run: RunDir, verify: str) -> list[tuple[int, str]]:
    """Done markers whose output is missing, cut or fails its checksum: moved to RUN/set-aside/ (kept, not
    deleted) so the shard is generated again; returns (shard, what was wrong).

    Markers of another fingerprint (a config adopted with --config --force, or one an old-config worker
    committed as launch adopted the new one) go aside too, and are not returned: their shards are simply
    not done under this config. So done/ holds only markers of the run's fingerprint, and workers skip a
    shard by its marker's name alone (docs/run-directory.md, "Done markers")."""
    digest = run.fingerprint()
    found = []
    for shard in sorted(run.done_ids()):  # only the markers there are: one listing, not one stat a shard
        problem = run.done_problem(shard, digest, verify)
        if problem is None:
            continue  # done under this config
        if problem == "":  # a marker of another fingerprint (or none left)
            marker = run.done_marker(shard)
            if marker is None or marker.get("fingerprint") == digest:
                continue  # gone, or committed again under this config since we read it
        aside = _set_aside(run, shard)
        if aside is not None and not problem:
            moved = _marker_at(aside)
            if moved is not None and moved.get("fingerprint") == digest:
                _put_back(run, shard, aside)  # a worker of this config committed it as we moved it
                continue
        if aside is not None and problem:
            found.append((shard, problem))
    return found


def _set_aside(run: RunDir, shard: int) -> Path | None:
    run.set_aside_dir.mkdir(parents=True, exist_ok=True)
    aside = run.set_aside_dir / f"{run.done_path(shard).stem}.{int(time.time())}.{os.getpid()}.done.json"
    try:
        os.replace(run.done_path(shard), aside)
    except FileNotFoundError:
        return None  # gone meanwhile (an old-config worker set its own aside)
    return aside


def _marker_at(path: Path) -> dict | None:
    try:
        marker = read_json(path)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _put_back(run: RunDir, shard: int, aside: Path) -> None:
    try:
        os.link(aside, run.done_path(shard))  # never over a marker written since
    except FileExistsError:
        pass
    aside.unlink(missing_ok=True)


def _check_engine_args(config: Config) -> None:
    """Pass-through vLLM names checked here, before any job waits in a queue, where vLLM is installed."""
    from hpcsynth.generate.engines.vllm_args import check_vllm_args, vllm_installed

    if config.model.engine == "vllm" and vllm_installed():
        check_vllm_args(config)


def adopt_config(run: RunDir, current: Config | None, new: Config, force: bool, source: str) -> Config:
    """Use a config given at launch: refuse one that changes outputs, unless forced. `current` is None
    when the run's own config could not be read (then --force is set, and its planned inputs are taken
    from fingerprint.json where that is intact)."""
    from hpcsynth.generate.shard import check_routing

    inputs = current.plan.inputs if current is not None else _planned_inputs(run, new.plan.inputs)
    new = dataclasses.replace(new, plan=dataclasses.replace(new.plan, inputs=inputs))
    digest = fingerprint(new, {p.name: p.template_hash for p in load_prompts(new)})
    # Routing is decided at plan time, into every shard: a config routing otherwise is refused before it is
    # written into the run (afterwards every worker refused it, and the run's own config was gone).
    check_routing(run, new)
    if current is None:
        run.write_config(new, digest)
        return new
    if digest != run.fingerprint():
        changed = [k for k in diff_configs(current, new) if k.split(".")[0] in ("prompts", "plan", "model", "sampling")]
        if not force:
            raise RunError(f"{source} changes what this run generates ({', '.join(changed) or 'prompt templates'} "
                           f"differ from {run.config_path}); pass --force to adopt it (finished shards are redone)")
    # The reduce-side sections are not fingerprinted: adopted without a word, a changed mix surprised the next
    # reduce. One line on stderr (launch's report comes later, and only says how the shards went).
    reduce_side = [k for k in diff_configs(current, new) if k.split(".")[0] in ("reduce", "validate", "card")]
    if reduce_side:
        import sys

        from hpcsynth.config import config_to_dict

        def value(data, key):
            for part in key.split("."):
                data = data.get(part) if isinstance(data, dict) else None
            shown = repr(data)
            return shown if len(shown) <= 60 else shown[:57] + "..."  # a mix's sources: one line still

        old_data, new_data = config_to_dict(current), config_to_dict(new)
        said = ", ".join(f"{k} {value(old_data, k)} -> {value(new_data, k)}" for k in reduce_side)
        print(f"reduce settings changed in {run.config_path}: {said}; they apply at the next `hpcsynth reduce` "
              f"(outputs made before keep theirs in DIR/reduce-config.yaml)", file=sys.stderr)
    run.write_config(new, digest)
    return new


def _planned_inputs(run: RunDir, given: tuple[str, ...]) -> tuple[str, ...]:
    """plan.inputs as planned (they are fingerprinted), from fingerprint.json; else those given."""
    try:
        inputs = read_json(run.fingerprint_payload_path)["plan"]["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return given
    return tuple(inputs) if isinstance(inputs, list) and all(isinstance(i, str) for i in inputs) else given


def load_profile(path: Path, base: SlurmConfig) -> SlurmConfig:
    """A site profile: a YAML file with a `slurm:` section (the keys of SlurmConfig)."""
    from hpcsynth.resources import find_config, shipped_configs

    found = find_config(path, profiles=True)
    if found is None:
        raise ConfigError(f"site profile not found: {path}; pass a YAML file with a slurm: section, or a shipped "
                          f"profile by name ({', '.join(shipped_configs(profiles=True))}); start yours with "
                          f"`hpcsynth config site-example > site.yaml`")
    path = found
    data, lines = read_yaml(path)
    data = data or {}
    if not isinstance(data, dict) or set(data) - {"slurm"}:
        raise ConfigError(f"{path}: a site profile holds only a 'slurm:' section")
    merged = {**dataclasses.asdict(base), **(data.get("slurm") or {})}
    return config_from_dict({"slurm": merged}, source=str(path), lines=lines).slurm


def _launch_slurm(run: RunDir, slurm: SlurmConfig, retry_failed: bool, force: bool) -> LaunchReport:
    from hpcsynth.execute.slurm_jobs import active_jobs, record_launch

    active = active_jobs(run)
    if active and not force:
        raise RunError(f"{run.root} already has Slurm jobs pending or running ({', '.join(active)}); their "
                       f"workers will finish the run. `hpcsynth cancel {run.root}` first, or pass --force to add "
                       f"more workers")
    # Markers were checked (set_aside_bad_markers) just now: names decide, as a worker's listing does.
    done, failed = run.done_ids(), set() if retry_failed else run.failed_ids()
    pending = [s for s in range(run.shard_count()) if s not in done and s not in failed]
    if not pending:
        return dataclasses.replace(_report(run, "slurm"), submitted_shards=0)
    if retry_failed:
        for shard in pending:
            run.failed_path(shard).unlink(missing_ok=True)
    arrays = submit_workers(run, slurm, plan_tasks(slurm, pending), retry_failed)
    record_launch(run, arrays, slurm, len(pending))
    return dataclasses.replace(_report(run, "slurm"), arrays=arrays, submitted_shards=len(pending))


def plan_tasks(config: SlurmConfig, pending: list[int]) -> list[list[int] | None]:
    """What each array task gets: a fixed group of shards, or None to pull from all unfinished ones."""
    if config.shards_per_task > 0:
        size = config.shards_per_task
        return [pending[i:i + size] for i in range(0, len(pending), size)]
    return [None] * min(config.array_tasks, len(pending))


def submit_workers(run: RunDir, config: SlurmConfig, tasks: list[list[int] | None],
                   retry_failed: bool) -> list[dict[str, Any]]:
    """The tasks as job arrays of long-lived workers (each starts its engine once and pulls shards), at
    most MaxArraySize tasks each; return [{job_id, tasks}]. A task requeued after preemption or its time
    limit takes its leases back and skips what is on disk."""
    from hpcsynth.execute.slurm import Requeued, array_id, check_run_path, submit_array

    check_run_path(run)
    jobs = submit_array(Requeued(run_array_task), [(str(run.root), shards, retry_failed, config.gpu_mode)
                                                   for shards in tasks], config, run.slurm_dir)
    counts: dict[str, int] = {}
    for job in jobs:
        counts[array_id(job)] = counts.get(array_id(job), 0) + 1
    return [{"job_id": job_id, "tasks": n} for job_id, n in counts.items()]


def run_array_task(run_root: str, shards: list[int] | None, retry_failed: bool, gpu_mode: str = "per_gpu") -> int:
    """What a launch's array task runs: a worker on each GPU it sees (or one tensor-parallel engine). A
    failure fails the task, so that sacct and `hpcsynth status` show it."""
    failed = run_task(run_root, shards, retry_failed, gpu_mode)
    if failed:
        raise RuntimeError(f"{failed} shard(s) or worker(s) failed; see RUN/failed/ and `hpcsynth status`")
    return failed


def _run_in_process(run: RunDir, retry_failed: bool) -> None:
    """One worker in this process. An engine that cannot start (corrupt weights, a broken tokenizer) is
    the user's to fix: one line with the log that holds its traceback, not a traceback on the terminal."""
    log_path = run.log_path("worker-local")
    log_to(log_path)
    try:
        pull_shards(str(run.root), retry_failed=retry_failed, position=(0, 1))  # the one worker: from the first shard
    except (HpcsynthError, KeyboardInterrupt):
        raise
    except Exception as exc:
        logging.getLogger("hpcsynth.execute.launch").exception("the worker failed")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RunError(f"the worker failed: {type(exc).__name__}: {first[:300]} (traceback in {log_path})") from None


def _report(run: RunDir, executor: str) -> LaunchReport:
    digest = run.fingerprint()
    total = run.shard_count()
    done = {s for s in run.done_ids() if s < total and run.is_done(s, digest)}
    failed = [(s, failed_reason(run.failed_path(s))) for s in sorted(run.failed_ids())
              if s < total and s not in done and run.failed_path(s).is_file()]
    return LaunchReport(executor, len(done), total, failed)


def failed_reason(path: Path) -> str:
    """A failed marker's reason; a damaged marker still counts as a failure, and says so."""
    try:
        marker = read_json(path)
        return str(marker.get("reason", "")) if isinstance(marker, dict) else f"failed marker {path} is damaged"
    except (OSError, ValueError):
        return f"failed marker {path} is damaged"
