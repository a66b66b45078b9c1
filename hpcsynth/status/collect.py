"""Status: what a run has done, from the run directory first and at most one sacct call.

Done shards come from the done table (status/done.py): the workers' index lines, a marker read only when
no line vouches for it, kept between calls (RUN/index/status-cache, or --watch's memory), so a refresh
costs what changed, not one open per done shard. failed/, work/ and tasks/ (unfinished work, a few files
per worker) are read whole each time. Slurm is asked once per refresh, for every job the run launched, to
tell requeued shards from dead ones and to count GPU time; without Slurm jobs nothing is asked.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from hpcsynth.files import read_regular
from hpcsynth.generate.lease import holder_gone, process_start
from hpcsynth.redact import redact, register_env_secret
from hpcsynth.rundir import RunDir
from hpcsynth.status.repair import repair_progress
from hpcsynth.status.runstatus import (FailedShard, RedoShard, RunningShard, RunStatus, ShardCounts, SlurmSummary,
                                       WorkerHours)
from hpcsynth.status.done import DAMAGED, OUTPUT_BAD, OUTPUT_LISTED, OUTPUT_OK, DoneTable, signature
from hpcsynth.status.donecache import load_table, save_table
from hpcsynth.generate.engines.telemetry import telemetry_of
from hpcsynth.status.timeline import commit_timeline, run_telemetry

STATES = ("pending", "running", "requeued", "stale", "failed", "done")
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "RESIZING", "SUSPENDED")
LOG_TAIL_LINES = 5
# Markers, heartbeats and task clocks are a few KB (a failed marker's traceback the most); bigger is forged.
MAX_MARKER_BYTES = 16 << 20


def collect_status(run: RunDir, slurm: bool = True) -> RunStatus:
    return collect_run(run, slurm).status


@dataclass
class Watch:
    """What `status --watch` keeps between refreshes: the done table, and the plan's header while
    manifest.json is the same file (a re-plan writes a new one)."""

    table: DoneTable | None = None
    manifest: tuple[int, int, int] | None = None
    header: dict[str, Any] = field(default_factory=dict)
    shards: int = 0


@dataclass(frozen=True)
class Collected:
    """A run's status and what it was drawn from, for the account and estimate to read, not done/ again."""

    status: RunStatus
    table: DoneTable
    beats: dict[int, dict]  # heartbeats of shards in progress, by shard
    failed: frozenset[int]  # shards with a failed marker and no done marker of this fingerprint


def collect_run(run: RunDir, slurm: bool = True, watch: Watch | None = None) -> Collected:
    """One read of the run: done shards from the done table (status/done.py; cached in RUN/index/ between
    one-shot calls, kept in `watch` between refreshes), the rest from the few files of unfinished work."""
    header, total, table = _plan(run, watch)
    jobs, sacct = _slurm_view(run) if slurm else ([], {})
    config = run.config()
    register_env_secret(config.endpoint.api_key_env)  # so redact() knows the key if this shell holds it
    digest = run.fingerprint()
    prompts = len(header["prompts"])
    now = time.time()
    listed_at = table.listed_at
    table.refresh(run, digest, watch=watch is not None)
    if watch is None or table.listed_at != listed_at:
        save_table(run, table)
    cols = table.cols
    ours = table.ours(digest)
    done_mask = ours & ((cols["output"] == OUTPUT_OK) | (cols["output"] == OUTPUT_LISTED))  # not missing or cut
    redo = [RedoShard(sid, table.output_problem(run, sid) or "")
            for sid in np.flatnonzero(ours & (cols["output"] == OUTPUT_BAD)).tolist()]
    redo += [RedoShard(sid, f"done marker {run.done_path(sid)} is damaged")
             for sid in np.flatnonzero(cols["state"] == DAMAGED).tolist()]
    redo.sort(key=lambda r: r.shard)
    unreadable: list[str] = []
    failed = _by_shard(_read_json_files(run.failed_dir, bad=unreadable))
    for name in unreadable:  # workers skip a shard with any failed marker: it counts as failed, and says why
        if name.removesuffix(".json").isdigit():
            path = run.failed_dir / name
            failed.setdefault(int(name.removesuffix(".json")), {"reason": f"failed marker {path} is damaged"})
    beats = _by_shard(_read_json_files(run.work_root, "heartbeat.json"), BEAT_NUMBERS, ("tokens_per_s",))

    counts = dict.fromkeys(STATES, 0)
    counts["done"] = int(done_mask.sum())
    docs_done = int(cols["documents"][done_mask].sum())
    records_done = int((cols["records"][done_mask] + cols["rejected"][done_mask]).sum())
    tokens_done = int(cols["completion_tokens"][done_mask].sum())
    rate = 0.0
    failures: list[FailedShard] = []
    stale: list[int] = []
    running: list[RunningShard] = []
    # Only shards with a failed marker or a heartbeat need a look of their own; the others are done or pending.
    unfinished = sorted(sid for sid in set(failed) | set(beats) if 0 <= sid < total and not done_mask[sid])
    counts["pending"] = total - counts["done"] - len(unfinished)
    for sid in unfinished:
        beat = beats.get(sid)
        if beat is not None:
            records_done += beat["records_done"]
            docs_done += beat["records_done"] // prompts
            tokens_done += beat["completion_tokens"]
        if sid in failed:
            counts["failed"] += 1
            log_path = _run_log(run, failed[sid].get("log"))
            failures.append(FailedShard(sid, redact(str(failed[sid].get("reason", ""))), str(log_path or ""),
                                        _tail(log_path)))
        elif beat is None:
            counts["pending"] += 1
        elif now - beat["updated"] > config.worker.lease_timeout_s or _holder_gone(beat, sacct):
            if sacct.get(beat.get("task", ""), {}).get("state") in WAITING:
                counts["requeued"] += 1  # its array task waits to run again and will resume it
            else:
                counts["stale"] += 1
                stale.append(sid)
        else:
            counts["running"] += 1
            rate += beat.get("tokens_per_s", 0.0)
            running.append(RunningShard(sid, beat.get("task") or beat.get("owner", "").rsplit(":", 1)[0]))

    tasks = list(_read_json_files(run.tasks_dir).values())  # odd values count as 0 (_number)
    live = [t for t in tasks if _task_live(t, sacct, config.worker.lease_timeout_s, now)]
    live_ids = {id(t) for t in live}
    if any("tokens_per_s" in t for t in live):
        # Each live worker's rate over its recent completions: steady across shard boundaries, where a
        # new shard's heartbeat starts from zero.
        rate = sum(_number(t.get("tokens_per_s")) for t in live)
    total_docs = header["documents"]
    remaining_docs = total_docs - docs_done
    records_expected = planned_records(run, header)
    eta = None
    if header.get("routing") is not None:  # routed: documents differ in how many records they have: count those
        if rate > 0 and records_done > 0:
            eta = max(0, records_expected - records_done) * (tokens_done / records_done) / rate
    elif rate > 0 and docs_done > 0:
        eta = remaining_docs * (tokens_done / docs_done) / rate
    time_split = {key: round(sum(_number(t.get(key)) for t in tasks) / 3600, 4)
                  for key in ("startup_s", "generation_s", "idle_s")}
    gpu_hours, cpu_hours = _worker_hours(jobs, sacct, tasks)
    task_states: dict[str, int] = {}
    for task in sacct.values():
        task_states[task["state"]] = task_states.get(task["state"], 0) + task.get("tasks", 1)
    status = RunStatus(
        run=str(run.root),
        fingerprint=digest,
        shards=ShardCounts(**counts, total=total),
        documents=total_docs,
        prompts=prompts,
        docs_done=docs_done,
        records_done=records_done,
        records_expected=records_expected,
        tokens_done=tokens_done,
        tokens_per_s=round(rate, 2),
        eta_s=None if eta is None else round(eta, 1),
        stale_shards=stale,
        running_shards=running,
        failed_shards=failures,
        redo_shards=redo,
        gpu_hours=round(gpu_hours, 4),
        cpu_worker_hours=round(cpu_hours, 4),
        live_workers=len(live),
        worker_hours=WorkerHours(**time_split),
        workers=len(tasks),
        tasks=sorted(({**{k: t.get(k) for k in TASK_KEYS}, "live": id(t) in live_ids,
                       "error": redact(str(t["error"])) if t.get("error") else t.get("error"),
                       "telemetry": telemetry_of(t.get("telemetry"))} for t in tasks),  # engines/telemetry.py
                     key=lambda t: str(t["name"])),
        timeline={**commit_timeline(cols["committed"][done_mask], cols["completion_tokens"][done_mask],
                                    [_number(t.get("started")) for t in tasks], now, now if live else 0.0),
                  "telemetry": run_telemetry([(t, id(t) in live_ids) for t in tasks], now)},
        slurm=SlurmSummary(jobs=[a["job_id"] for launch in jobs for a in launch.get("arrays", [])],
                           array_tasks=task_states, sacct_calls=1 if jobs else 0, **_slurm_problems(run, sacct)),
        repair=repair_progress(run),
    )
    return Collected(status, table, beats, frozenset(s for s in failed if not (0 <= s < total and ours[s])))


def _plan(run: RunDir, watch: Watch | None) -> tuple[dict[str, Any], int, DoneTable]:
    """The plan's header and shard count (read again only when manifest.json changed) and the done table:
    --watch's own, else the cached one."""
    if watch is None:
        header, total = run.manifest(), run.shard_count()
        names = tuple(str(p.get("name")) for p in header["prompts"])
        return header, total, load_table(run, total, names)
    stamp = signature(run.manifest_path)
    if watch.table is None or stamp is None or stamp != watch.manifest:
        watch.header, watch.shards = run.manifest(), run.shard_count()
        names = tuple(str(p.get("name")) for p in watch.header["prompts"])
        if watch.table is None or (watch.table.shards, watch.table.prompts) != (watch.shards, names):
            watch.table = load_table(run, watch.shards, names)
        watch.manifest = stamp
    return watch.header, watch.shards, watch.table


def planned_records(run: RunDir, header: dict[str, Any]) -> int:
    """The records the plan expects: documents x prompts, or, when its prompts are routed
    (`prompts: [{name, when}]`), the (document, prompt) pairs it routed, from the header alone."""
    if header.get("routing") is None:
        return int(header["documents"]) * len(header["prompts"])
    from hpcsynth.plan.manifest import planned_routing  # here: a run without routing never imports the planner

    routing = planned_routing(run, header)
    return int(routing["pairs"]) if routing else 0


TASK_KEYS = ("name", "task", "state", "device", "gpus", "startup_s", "generation_s", "idle_s", "wall_s",
             "shards_done", "tokens_per_s", "error", "tokens", "records", "started", "updated")


def _task_live(task: dict, sacct: dict[str, dict], lease_timeout_s: float, now: float) -> bool:
    """A worker that is generating now: Slurm says its array task runs, or its process on this host
    exists, or (elsewhere, without Slurm) it wrote within a lease timeout."""
    if task.get("state") not in ("starting", "generating"):
        return False
    slurm = sacct.get(str(task.get("task") or ""))
    if slurm is not None:
        return slurm["state"] == "RUNNING"
    if now - _number(task.get("updated")) > lease_timeout_s:
        return False  # silent that long: dead, or its pid now belongs to another process
    if task.get("host") == socket.gethostname() and isinstance(task.get("pid"), int):
        try:
            os.kill(task["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, under another user
            pass
        if os.path.exists("/proc/self/stat") and not process_start(task["pid"]):
            return False  # a zombie: killed, not yet reaped (common where PID 1 reaps nothing)
    return True


def _number(value: Any) -> float:
    """A number from a task file, 0 for anything else (a hand-edited or foreign file)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


# Past 2**53 a float no longer counts by ones: no real count or number of seconds gets near it.
MAX_COUNT = 2 ** 53


def count_number(value: object) -> float:
    """A count or a number of seconds from a run's file; 0 for a negative one or one past MAX_COUNT (a forged
    1e308 would otherwise turn every figure built on it into inf or nan)."""
    number = _number(value)
    return number if 0 <= number <= MAX_COUNT else 0.0


def _worker_hours(jobs: list[dict], sacct: dict[str, dict], tasks: list[dict]) -> tuple[float, float]:
    """(GPU-hours, CPU worker-hours): Slurm's elapsed time times the GPUs each task asked for, else each
    local worker's wall time split by what its engine ran on."""
    if sacct:
        gpus = {a["job_id"]: launch.get("gpus_per_task", 1) for launch in jobs for a in launch.get("arrays", [])}
        used = [(t["elapsed_s"], gpus.get(tid.split("_")[0], 1)) for tid, t in sacct.items()]
    else:
        used = [(_number(t.get("wall_s")), _number(t.get("gpus"))) for t in tasks]
    return (sum(s * g for s, g in used) / 3600, sum(s for s, g in used if not g) / 3600)


def _slurm_view(run: RunDir) -> tuple[list[dict], dict[str, dict]]:
    from hpcsynth.execute.slurm_jobs import recorded_jobs, sacct_tasks

    jobs = recorded_jobs(run)
    ids = [a["job_id"] for launch in jobs for a in launch.get("arrays", [])]
    return jobs, sacct_tasks(ids) if ids else {}


def _slurm_problems(run: RunDir, sacct: dict[str, dict]) -> dict[str, Any]:
    if not sacct:
        return {"pending_reasons": {}, "never_starts": "", "failed_tasks": []}
    from hpcsynth.execute.slurm_jobs import slurm_problems

    return slurm_problems(run, sacct)


def _holder_gone(beat: dict, sacct: dict[str, dict]) -> bool:
    """The worker holding this shard is gone: Slurm says its array task is not running (preempted,
    requeued, ended), or it was a process on this host that no longer exists."""
    task = sacct.get(beat.get("task", ""))
    if task is not None:
        return task["state"] != "RUNNING"
    try:
        return holder_gone({"owner": beat.get("owner", ""), "task": ""})
    except (OverflowError, ValueError):  # a pid no process can have: a corrupt or forged heartbeat
        return True


def _run_log(run: RunDir, named: object) -> Path | None:
    """The log a failed marker names, only if it is a file in RUN/logs/.

    Markers are data anyone with write access to the run can forge; status must not print the tail of
    ~/.ssh/id_rsa because a marker says so. A run directory copied elsewhere keeps its logs: a path
    outside is looked up by its file name in this run's logs/.
    """
    if not isinstance(named, str) or not named:
        return None
    logs = run.logs_dir.resolve()
    for candidate in (Path(named), logs / Path(named).name):
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError):
            continue
        if resolved.parent == logs and resolved.is_file():
            return resolved
    return None


def _tail(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        # O_NONBLOCK: a FIFO swapped in after the check must not hang status; only regular files are read.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return []
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return [redact(line) for line in lines[-LOG_TAIL_LINES:]]


def _read_json_files(directory: Path, inside: str = "", bad: list[str] | None = None) -> dict[str, dict]:
    """{name: parsed JSON} for each DIR/NAME (or DIR/NAME/inside), listing the directory once. Files
    half-written by a crashed writer, and hidden temporaries, count as absent (their names go to `bad`)."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return {}
    out: dict[str, dict] = {}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            data = orjson.loads(read_regular(os.path.join(entry.path, inside) if inside else entry.path,
                                             MAX_MARKER_BYTES))
        except (ValueError, OSError):
            data = None
        if isinstance(data, dict):  # anything else was not written by hpcsynth
            out[entry.name] = data
        elif bad is not None:
            bad.append(entry.name)
    return out


def _by_shard(files: dict[str, dict], numbers: tuple[str, ...] = (),
              optional: tuple[str, ...] = ()) -> dict[int, dict]:
    """Key by shard id: '000042.json' (markers) or '000042' (work directories) -> 42; a file without the
    numbers status adds up counts as absent."""
    out: dict[int, dict] = {}
    for name, data in files.items():
        stem = name.removesuffix(".json")
        if stem.isascii() and stem.isdigit() and _shaped(data, numbers, optional):
            out[int(stem)] = data
    return out


# What status adds up or compares, per kind of file. A marker or heartbeat that is corrupt, or forged,
# is treated as absent rather than ending status in a traceback.
DONE_NUMBERS = ("documents", "records", "rejected", "completion_tokens")
BEAT_NUMBERS = ("records_done", "completion_tokens", "updated")


def _shaped(data: object, numbers: tuple[str, ...], optional: tuple[str, ...] = ()) -> bool:
    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    return (isinstance(data, dict) and all(number(data.get(k)) for k in numbers)
            and all(number(data[k]) for k in optional if k in data)
            and isinstance(data.get("task", ""), str) and isinstance(data.get("owner", ""), str))
