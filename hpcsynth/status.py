"""Status: what a run has done, read from the run directory alone.

Each directory (done/, failed/, work/) is listed once, so status stays fast over thousands of shards;
nothing here talks to a scheduler.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from hpcsynth.rundir import RunDir, shard_name

STATES = ("pending", "running", "stale", "failed", "done")


def collect_status(run: RunDir) -> dict[str, Any]:
    manifest = run.manifest()
    config = run.config()
    digest = run.fingerprint()
    prompts = len(manifest["prompts"])
    now = time.time()
    done = _json_by_shard(run.root / "done", ".json")
    failed = _json_by_shard(run.root / "failed", ".json")
    beats = _heartbeats(run.root / "work")

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
            failures.append({"shard": sid, "reason": failed[sid].get("reason", "")})
        elif beat is None:
            counts["pending"] += 1
        elif now - beat["updated"] > config.worker.lease_timeout_s:
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
    }


def _json_by_shard(directory: Path, suffix: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return out
    for entry in entries:
        name = entry.name
        if not name.endswith(suffix) or name.startswith("."):
            continue
        try:
            out[int(name[: -len(suffix)])] = orjson.loads(Path(entry.path).read_bytes())
        except (ValueError, OSError):
            continue  # half-written by a crashed writer: treat as absent
    return out


def _heartbeats(work: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    try:
        entries = list(os.scandir(work))
    except FileNotFoundError:
        return out
    for entry in entries:
        try:
            out[int(entry.name)] = orjson.loads(Path(entry.path, "heartbeat.json").read_bytes())
        except (ValueError, OSError):
            continue
    return out


def render_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    shards = status["shards"]
    table = Table(title=f"hpcsynth run {status['run']}", show_header=True)
    for state in (*STATES, "total"):
        table.add_column(state, justify="right")
    table.add_row(*(str(shards[s]) for s in (*STATES, "total")))
    console.print(table)
    eta = status["eta_s"]
    console.print(
        f"documents {status['docs_done']:,}/{status['documents']:,}  "
        f"records {status['records_done']:,}/{status['records_expected']:,}  "
        f"tokens {status['tokens_done']:,}  {status['tokens_per_s']:,.0f} tok/s  "
        f"ETA {'-' if eta is None else _duration(eta)}"
    )
    if status["stale_shards"]:
        shown = ", ".join(shard_name(s) for s in status["stale_shards"][:10])
        console.print(f"[yellow]stale heartbeats[/yellow]: {shown}")
    for failure in status["failed_shards"][:10]:
        console.print(f"[red]failed[/red] {shard_name(failure['shard'])}: {failure['reason']}")


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"
