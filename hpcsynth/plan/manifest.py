"""The plan's manifest, the check before re-planning, and putting a finished plan in place.

The manifest is two files (docs/run-directory.md): RUN/manifest.json, a small header (counts, prompts,
inputs, totals, and where the rows are), and RUN/manifest.rows.jsonl, one fixed-width line per shard
(hpcsynth/rowfile.py), so a worker reads its shard's row with one pread and status reads the header alone.
A plan is built in RUN/.plan-tmp-PID and moved into RUN only when whole: the old header goes first
(so a crash in between leaves a run that reads as not planned, never a mix), then shards/, plan/,
config.yaml, fingerprint and the row file, and the new header last. Neither file holds anything that
changes between two plans of the same config and inputs (no clock, no --jobs): those plans are byte-identical.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hpcsynth import typed
from hpcsynth.config import Config, diff_configs
from hpcsynth.errors import HpcsynthError, InputError, RunError
from hpcsynth.files import atomic_write_chunks, atomic_write_json, read_json
from hpcsynth.locks import Lock, acquire_lock
from hpcsynth.corpus.readers import display_path
from hpcsynth.plan.shards import fsync_dir
from hpcsynth.rowfile import encode_row, padded_rows, row_width
from hpcsynth.storage import Location, stat_of
from hpcsynth.rundir import LAYOUT_VERSION, MANIFEST_ROWS, PLAN_LOCK, RunDir

PLAN_PARTS = ("shards", "plan")


def input_stats(paths: Sequence[Location]) -> list[dict[str, Any]]:
    """What identifies an input cheaply: its path, size and modification time; an object's ETag too."""
    return [{"path": display_path(str(path)), **stat_of(path)} for path in paths]


def identity(entry: dict[str, Any]) -> tuple:
    """What must stay the same of an input between two looks: size and time; an object's ETag (a rewrite
    within the same second keeps S3's time but not its ETag)."""
    return entry.get("bytes"), entry.get("mtime_ns"), entry.get("etag")


def check_inputs_unchanged(paths: Sequence[Location], stats: list[dict[str, Any]]) -> None:
    """Refuse a plan whose input files changed while they were read (appended to, rewritten, removed): its
    shards would match neither version and the manifest would name the old one."""
    for path, before in zip(paths, stats):
        try:
            now: tuple | None = identity(stat_of(path))
        except (OSError, HpcsynthError):  # a file or an object that is gone
            now = None
        if now != identity(before):
            what = "was removed" if now is None else f"changed ({_what_changed(before)})"
            raise InputError(f"input {before['path']} {what} while it was being planned; nothing was planned: "
                             f"plan again once the inputs are stable")


def check_objects_unchanged(inputs: list[dict[str, Any]]) -> None:
    """Refuse to go on from a plan whose inputs in a bucket changed since (their ETag or size): one HEAD per
    object, HEADS_AT_ONCE at a time (a FineWeb-Edu dump is thousands of objects, and launch runs this each
    time). Local files are left to the shards' own checksums, as before."""
    from concurrent.futures import ThreadPoolExecutor

    from hpcsynth.storage import is_remote

    remote = [entry for entry in inputs if is_remote(entry.get("path")) and "etag" in entry]
    if not remote:
        return
    with ThreadPoolExecutor(min(HEADS_AT_ONCE, len(remote))) as pool:
        for entry, now in zip(remote, pool.map(_stat_or_none, [entry["path"] for entry in remote])):
            if now is None or (now["etag"], now["bytes"]) != (entry["etag"], entry["bytes"]):
                what = "was removed" if now is None else (f"changed (ETag {entry['etag']}, {entry['bytes']:,} bytes "
                                                          f"when planned; now {now['etag']}, {now['bytes']:,} bytes)")
                raise InputError(f"input {entry['path']} {what} since the run was planned; its shards hold the "
                                 f"planned version: plan again (--force, or into a new --run), put the object back "
                                 f"as it was, or `hpcsynth launch RUN --force` to go on from the shards as planned")


HEADS_AT_ONCE = 16  # s3fs sends them from its own event loop: threads only wait


def _stat_or_none(path: str) -> dict[str, Any] | None:
    try:
        return stat_of(path)
    except (OSError, HpcsynthError):
        return None


def _what_changed(entry: dict[str, Any]) -> str:
    return "size or ETag" if "etag" in entry else "size or modification time"


def write_manifest(directory: Path, header: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """DIRECTORY/manifest.rows.jsonl, then DIRECTORY/manifest.json (the header, naming the rows); returns the
    header. Rows must be shards 0..N-1 in order: a reader finds row i at byte i x width."""
    for index, row in enumerate(rows):
        if row.get("id") != index:  # the planner numbers shards so (plan/parallel.py); a break is a bug here
            raise RuntimeError(f"manifest row {index} has id {row.get('id')!r}: shard ids must run 0..N-1")
    width = row_width(len(encode_row(row)) for row in rows)
    atomic_write_chunks(directory / MANIFEST_ROWS, padded_rows(rows, width))
    header = {**header, "layout_version": LAYOUT_VERSION,
              "rows": {"file": MANIFEST_ROWS, "count": len(rows), "width": width}}
    header.pop("shards", None)
    atomic_write_json(directory / "manifest.json", header)
    return header


def changes_since(run: RunDir, config: Config, inputs: list[dict[str, Any]]) -> list[str]:
    """How this plan differs from the one already in RUN (empty: the same config and inputs)."""
    try:
        manifest = read_json(run.manifest_path)
        if isinstance(manifest, dict) and manifest.get("layout_version") == 1:
            return [f"the existing plan is of layout 1 (its shard rows inside manifest.json); this hpcsynth "
                    f"writes layout {LAYOUT_VERSION}"]
        old_config = run.config()
        for _ in run.manifest_rows():  # every row whole: "nothing changed" must not keep a damaged one
            pass
    except (OSError, ValueError, RunError) as exc:
        return [f"the existing plan cannot be read ({exc})"]
    changes = []
    # The grid's generators and mix-ins live in sub-runs and the reduce (hpcsynth/study/grid_plan.py).
    keys = [k for k in diff_configs(old_config, config) if k != "plan.inputs" and not k.startswith("grid.")]
    if keys:
        changes.append(f"config keys changed: {', '.join(keys[:8])}" + (" ..." if len(keys) > 8 else ""))
    old = {i["path"]: identity(i) for i in manifest.get("inputs", [])}
    new = {i["path"]: identity(i) for i in inputs}
    changed = [p for p in new if p in old and old[p] != new[p]]
    what = "size, time or ETag" if any(new[p][2] is not None for p in changed) else "size or time"
    for label, names in (("inputs added", [p for p in new if p not in old]),
                         ("inputs removed", [p for p in old if p not in new]),
                         (f"inputs changed ({what})", changed)):
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
        _retire_outputs(run, RunDir(tmp).manifest_rows())
        run.manifest_path.unlink()
        fsync_dir(root)
    for name in PLAN_PARTS:
        if (root / name).exists():
            os.rename(root / name, tmp / f"replaced-{name}")
        os.rename(tmp / name, root / name)
    for name in ("fingerprint.json", "config.yaml", "fingerprint", MANIFEST_ROWS):
        os.replace(tmp / name, root / name)
    fsync_dir(root)
    os.replace(tmp / "manifest.json", run.manifest_path)
    fsync_dir(root)
    shutil.rmtree(tmp, ignore_errors=True)


def _retire_outputs(run: RunDir, new_rows: Iterable[dict]) -> None:
    """A forced re-plan: outputs of shards whose content changed move to RUN/replaced/ (kept, not lost).

    Their done markers may still carry the run's fingerprint (say, the same config over edited input
    files), and a worker or reduce would then take an old output for the new shard. Old and new rows are
    both in id order from 0, so they are compared in step, a row of each at a time. Past a damaged old row
    what the old shards held is unknown: every shard from there on retires.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    new = iter(new_rows)
    known = 0
    try:
        for old in _old_rows(run):
            row = next(new, None)
            if row is None or row["sha256"] != old.get("sha256"):
                _retire(run, known, stamp)
            known += 1
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RunError):
        for shard in sorted(i for i in run.done_ids() | run.failed_ids() | _output_ids(run) if i >= known):
            _retire(run, shard, stamp)


def _old_rows(run: RunDir) -> Iterable[dict]:
    """The rows of the plan in RUN, of this layout or of layout 1 (rows inside manifest.json): `plan --force`
    is how a run of layout 1 moves to this one, keeping its finished shards."""
    header = read_json(run.manifest_path)
    if header.get("layout_version") == 1:
        rows = header["shards"]
        if [row["id"] for row in rows] != list(range(len(rows))):
            raise ValueError("layout-1 shard ids are not 0..N-1")
        return rows
    return run.manifest_rows()


def _output_ids(run: RunDir) -> set[int]:
    suffix = ".jsonl.zst"
    try:
        names = os.listdir(run.outputs_dir)
    except FileNotFoundError:
        return set()
    return {int(n[:-len(suffix)]) for n in names if n.endswith(suffix) and n[:-len(suffix)].isdigit()}


def _retire(run: RunDir, shard: int, stamp: str) -> None:
    for path in (run.done_path(shard), run.output_path(shard), run.failed_path(shard)):
        if path.exists():
            target = run.replaced_dir / stamp / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, target)


# The header's "routing" (prompts: [{name, when}]), as status and estimate read it; absent without routing.
ROUTING_SHAPE: dict[str, Any] = {"pairs": typed.count, "unrouted": typed.count,
                                 "prompts": typed.list_of({"name": typed.text})}
ROUTED_PROMPT_SHAPE: dict[str, Any] = {"documents": typed.count, "est_tokens": typed.count}


def planned_routing(run: RunDir, header: dict[str, Any]) -> dict[str, Any] | None:
    """The plan's routing (None: every prompt runs on every document): "pairs", the (document, prompt) pairs
    the run is to generate; "unrouted", documents routed to no prompt; "by_prompt", {prompt: {"documents",
    "est_tokens"}}. Checked as it is read: a forged count is one line, not a traceback in status."""
    routing = header.get("routing")
    if routing is None:
        return None
    wrong = typed.problem(routing, ROUTING_SHAPE, where="routing")
    by_prompt = routing.get("by_prompt") if isinstance(routing, dict) else None
    if not wrong and not isinstance(by_prompt, dict):
        wrong = "routing.by_prompt is not an object"
    for name, counts in (by_prompt.items() if not wrong and isinstance(by_prompt, dict) else ()):
        wrong = wrong or typed.problem(counts, ROUTED_PROMPT_SHAPE, where=f"routing.by_prompt.{name}")
    if wrong:
        raise RunError(f"{run.manifest_path} is damaged ({wrong}); plan the run again into a new directory")
    return routing
