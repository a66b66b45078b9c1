"""The plan's manifest, the check before re-planning, and putting a finished plan in place.

A plan is built in RUN/.plan-tmp-PID and moved into RUN only when whole: the old manifest goes first
(so a crash in between leaves a run that reads as not planned, never a mix), then shards/, plan/,
config.yaml and fingerprint, and the new manifest last. The manifest holds nothing that changes between
two plans of the same config and inputs (no clock, no --jobs), so those plans are byte-identical.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from hpcsynth.config import Config, diff_configs
from hpcsynth.errors import InputError, RunError
from hpcsynth.files import read_json
from hpcsynth.locks import Lock, acquire_lock
from hpcsynth.corpus.readers import display_path
from hpcsynth.plan.shards import fsync_dir
from hpcsynth.rundir import PLAN_LOCK, RunDir

PLAN_PARTS = ("shards", "plan")


def input_stats(paths: list[Path]) -> list[dict[str, Any]]:
    """What identifies an input file cheaply: its path, size and modification time."""
    stats = []
    for path in paths:
        info = path.stat()
        stats.append({"path": display_path(str(path)), "bytes": info.st_size, "mtime_ns": info.st_mtime_ns})
    return stats


def check_inputs_unchanged(paths: list[Path], stats: list[dict[str, Any]]) -> None:
    """Refuse a plan whose input files changed while they were read (appended to, rewritten, removed): its
    shards would match neither version and the manifest would name the old one."""
    for path, before in zip(paths, stats):
        try:
            info = path.stat()
            now: tuple | None = (info.st_size, info.st_mtime_ns)
        except OSError:
            now = None
        if now != (before["bytes"], before["mtime_ns"]):
            what = "was removed" if now is None else "changed (size or modification time)"
            raise InputError(f"input {before['path']} {what} while it was being planned; nothing was planned: "
                             f"plan again once the inputs are stable")


def changes_since(run: RunDir, config: Config, inputs: list[dict[str, Any]]) -> list[str]:
    """How this plan differs from the one already in RUN (empty: the same config and inputs)."""
    try:
        old_config, manifest = run.config(), read_json(run.manifest_path)
    except (OSError, ValueError, RunError) as exc:
        return [f"the existing plan cannot be read ({exc})"]
    changes = []
    # The grid's generators and mix-ins live in sub-runs and the reduce (hpcsynth/study/grid_plan.py).
    keys = [k for k in diff_configs(old_config, config) if k != "plan.inputs" and not k.startswith("grid.")]
    if keys:
        changes.append(f"config keys changed: {', '.join(keys[:8])}" + (" ..." if len(keys) > 8 else ""))
    old = {i["path"]: (i.get("bytes"), i.get("mtime_ns")) for i in manifest.get("inputs", [])}
    new = {i["path"]: (i["bytes"], i["mtime_ns"]) for i in inputs}
    for label, names in (("inputs added", [p for p in new if p not in old]),
                         ("inputs removed", [p for p in old if p not in new]),
                         ("inputs changed (size or time)", [p for p in new if p in old and old[p] != new[p]])):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            changes.append(f"{label}: {', '.join(names[:3])}{more}")
    if not changes and list(old) != list(new):
        changes.append("inputs are in a different order")
    return changes


def take_lock(root: Path) -> Lock:
    """One planner per run directory: a second one would interleave their moves. Release it when done."""
    return acquire_lock(root / PLAN_LOCK, "`hpcsynth plan`", writing=root)


def commit_plan(tmp: Path, run: RunDir) -> None:
    """Move the finished plan from tmp into RUN; the manifest, last, makes it count."""
    root = run.root
    if run.manifest_path.exists():
        _retire_outputs(run, read_json(run.manifest_path)["shards"], read_json(tmp / "manifest.json")["shards"])
        run.manifest_path.unlink()
        fsync_dir(root)
    for name in PLAN_PARTS:
        if (root / name).exists():
            os.rename(root / name, tmp / f"replaced-{name}")
        os.rename(tmp / name, root / name)
    for name in ("fingerprint.json", "config.yaml", "fingerprint"):
        os.replace(tmp / name, root / name)
    fsync_dir(root)
    os.replace(tmp / "manifest.json", run.manifest_path)
    fsync_dir(root)
    shutil.rmtree(tmp, ignore_errors=True)


def _retire_outputs(run: RunDir, old_rows: list[dict], new_rows: list[dict]) -> None:
    """A forced re-plan: outputs of shards whose content changed move to RUN/replaced/ (kept, not lost).

    Their done markers may still carry the run's fingerprint (say, the same config over edited input
    files), and a worker or reduce would then take an old output for the new shard.
    """
    new = {row["id"]: row["sha256"] for row in new_rows}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for row in old_rows:
        if new.get(row["id"]) == row.get("sha256"):
            continue
        for path in (run.done_path(row["id"]), run.output_path(row["id"]), run.failed_path(row["id"])):
            if path.exists():
                target = run.replaced_dir / stamp / path.parent.name / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(path, target)
