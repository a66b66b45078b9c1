"""Status: what a run has done, from the run directory first and at most one sacct call.

Each directory (done/, failed/, work/, tasks/) is listed once, so status stays fast over thousands of
shards. Slurm is asked once per refresh, for every job the run launched, to tell requeued shards from
dead ones and to count GPU time; without Slurm jobs nothing is asked.
"""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import orjson

from hpcsynth.generate.lease import holder_gone
from hpcsynth.redact import redact, register_env_secret
from hpcsynth.rundir import RunDir, shard_name

STATES = ("pending", "running", "requeued", "stale", "failed", "done")
WAITING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "RESIZING", "SUSPENDED")
LOG_TAIL_LINES = 5


def collect_status(run: RunDir, slurm: bool = True) -> dict[str, Any]:
    manifest = run.manifest()
    jobs, sacct = _slurm_view(run) if slurm else ([], {})
    config = run.config()
    register_env_secret(config.endpoint.api_key_env)  # so redact() knows the key if this shell holds it
    digest = run.fingerprint()
    prompts = len(manifest["prompts"])
    now = time.time()
    done = _by_shard(_read_json_files(run.root / "done"), DONE_NUMBERS)
    failed = _by_shard(_read_json_files(run.root / "failed"))
    beats = _by_shard(_read_json_files(run.root / "work", "heartbeat.json"), BEAT_NUMBERS, ("tokens_per_s",))

    counts = dict.fromkeys(STATES, 0)
    docs_done = records_done = tokens_done = 0
    rate = 0.0
    failures, stale = [], []
    for shard in manifest["shards"]:
        sid = shard["id"]
        marker = done.get(sid)
        if marker is not None and marker.get("fingerprint") == digest:
            counts["done"] += 1
            docs_done += marker["documents"]
            records_done += marker["records"] + marker["rejected"]
            tokens_done += marker["completion_tokens"]
            continue
        beat = beats.get(sid)
        if beat is not None:
            records_done += beat["records_done"]
            docs_done += beat["records_done"] // prompts
            tokens_done += beat["completion_tokens"]
        if sid in failed:
            counts["failed"] += 1
            log_path = _run_log(run, failed[sid].get("log"))
            failures.append({"shard": sid, "reason": redact(str(failed[sid].get("reason", ""))),
                             "log": str(log_path or ""), "log_tail": _tail(log_path)})
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

    total_docs = manifest["documents"]
    remaining_docs = total_docs - docs_done
    eta = None
    if rate > 0 and docs_done > 0:
        eta = remaining_docs * (tokens_done / docs_done) / rate
    tasks = [t for t in _read_json_files(run.root / "tasks").values() if _shaped(t, (), TASK_NUMBERS)]
    time_split = {key: round(sum(t.get(key, 0.0) for t in tasks) / 3600, 4)
                  for key in ("startup_s", "generation_s", "idle_s")}
    if sacct:
        gpus = {a["job_id"]: launch.get("gpus_per_task", 1) for launch in jobs for a in launch.get("arrays", [])}
        gpu_hours = sum(t["elapsed_s"] * gpus.get(tid.split("_")[0], 1) for tid, t in sacct.items()) / 3600
    else:
        gpu_hours = sum(t.get("wall_s", 0.0) * t.get("gpus", 0) for t in tasks) / 3600
    task_states: dict[str, int] = {}
    for task in sacct.values():
        task_states[task["state"]] = task_states.get(task["state"], 0) + 1
    return {
        "run": str(run.root),
        "fingerprint": digest,
        "shards": {**counts, "total": len(manifest["shards"])},
        "documents": total_docs,
        "prompts": prompts,
        "docs_done": docs_done,
        "records_done": records_done,
        "records_expected": total_docs * prompts,
        "tokens_done": tokens_done,
        "tokens_per_s": round(rate, 2),
        "eta_s": None if eta is None else round(eta, 1),
        "stale_shards": stale,
        "failed_shards": failures,
        "gpu_hours": round(gpu_hours, 4),
        # Hours of worker time by phase (engine start-up, generating, idle), from RUN/tasks/.
        "worker_hours": time_split,
        "workers": len(tasks),
        "tasks": sorted(({**{k: t.get(k) for k in ("name", "task", "state", "gpus", "startup_s", "generation_s",
                                                    "idle_s", "wall_s", "shards_done")},
                          "error": redact(str(t["error"])) if t.get("error") else t.get("error")} for t in tasks),
                        key=lambda t: str(t["name"])),
        "slurm": {"jobs": [a["job_id"] for launch in jobs for a in launch.get("arrays", [])],
                  "array_tasks": task_states, "sacct_calls": 1 if jobs else 0},
    }


def _slurm_view(run: RunDir) -> tuple[list[dict], dict[str, dict]]:
    from hpcsynth.execute.slurm import recorded_jobs, sacct_tasks

    jobs = recorded_jobs(run)
    ids = [a["job_id"] for launch in jobs for a in launch.get("arrays", [])]
    return jobs, sacct_tasks(ids) if ids else {}


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
    logs = (run.root / "logs").resolve()
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


def _read_json_files(directory: Path, inside: str = "") -> dict[str, dict]:
    """{name: parsed JSON} for each DIR/NAME (or DIR/NAME/inside), listing the directory once. Files
    half-written by a crashed writer, and hidden temporaries, count as absent."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return {}
    out: dict[str, dict] = {}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            out[entry.name] = orjson.loads(Path(entry.path, inside).read_bytes())
        except (ValueError, OSError):
            continue
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
TASK_NUMBERS = ("startup_s", "generation_s", "idle_s", "wall_s", "gpus")


def _shaped(data: object, numbers: tuple[str, ...], optional: tuple[str, ...] = ()) -> bool:
    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    return (isinstance(data, dict) and all(number(data.get(k)) for k in numbers)
            and all(number(data[k]) for k in optional if k in data)
            and isinstance(data.get("task", ""), str) and isinstance(data.get("owner", ""), str))


def render_status(status: dict[str, Any], console=None) -> None:
    from rich.console import Console

    console = console or Console()
    for part in status_renderables(status):
        console.print(part)


def watch_status(run: RunDir, interval: float) -> None:
    from rich.console import Group
    from rich.live import Live

    with Live(Group(*status_renderables(collect_status(run))), refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(Group(*status_renderables(collect_status(run))))
        except KeyboardInterrupt:
            pass


def status_renderables(status: dict[str, Any]) -> list:
    from rich.table import Table

    parts: list = []
    shards = status["shards"]
    table = Table(title=f"hpcsynth run {_shown(status['run'])}", show_header=True)
    for state in (*STATES, "total"):
        table.add_column(state, justify="right")
    table.add_row(*(str(shards[s]) for s in (*STATES, "total")))
    parts.append(table)
    eta = status["eta_s"]
    split = status["worker_hours"]
    parts.append(
        f"documents {status['docs_done']:,}/{status['documents']:,}  "
        f"records {status['records_done']:,}/{status['records_expected']:,}  "
        f"tokens {status['tokens_done']:,}  {status['tokens_per_s']:,.0f} tok/s  "
        f"ETA {'-' if eta is None else _duration(eta)}\n"
        f"GPU-hours {status['gpu_hours']:.2f}  worker hours: start-up {split['startup_s']:.2f}, "
        f"generation {split['generation_s']:.2f}, idle {split['idle_s']:.2f} ({status['workers']} workers)"
    )
    slurm = status["slurm"]
    if slurm["jobs"]:
        states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(slurm["array_tasks"].items())) or "not in sacct yet"
        parts.append(f"Slurm jobs {', '.join(slurm['jobs'])}: array tasks {states}")
    broken = [t for t in status["tasks"] if t.get("state") == "failed"]
    if broken:
        parts.append(f"[red]{len(broken)} worker(s) failed to start[/red], e.g. {_shown(broken[0]['name'])}: "
                     f"{_shown(broken[0].get('error', ''))}")
    if status["stale_shards"]:
        shown = ", ".join(shard_name(s) for s in status["stale_shards"][:10])
        parts.append(f"[yellow]stale heartbeats[/yellow]: {shown}")
    for failure in status["failed_shards"][:10]:
        parts.append(f"[red]failed[/red] {shard_name(failure['shard'])}: {_shown(failure['reason'])}")
        for line in failure["log_tail"]:
            parts.append(f"    [dim]{_shown(line)}[/dim]")
    return parts


# C0 and C1 control characters but tab: an escape sequence in a log line or a forged marker would
# reach the terminal (retitle it, rewrite the screen) through rich, which passes ESC through.
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _shown(text: object) -> str:
    """Text from the run directory, made inert for the terminal: no control characters, and rich
    markup escaped (a log line holding "[/tmp/x]" would otherwise end a tag that is not open, and raise)."""
    from rich.markup import escape

    return escape(CONTROL.sub("?", str(text or "")))


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"
