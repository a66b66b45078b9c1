"""Plan: a corpus -> token-balanced zstd JSONL shards, the manifest, rejects and a summary.

First stage of the flow. Everything is built in RUN/.plan-tmp-PID and moved into place when whole
(manifest.py): RUN/config.yaml, RUN/fingerprint, RUN/shards/*.jsonl.zst, RUN/plan/rejects.jsonl,
RUN/plan/summary.json, RUN/manifest.rows.jsonl and, last, RUN/manifest.json (the header): a run counts as
planned once the header exists.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from hpcsynth import __version__
from hpcsynth.config import Config, fingerprint
from hpcsynth.errors import ConfigError, HpcsynthError, InputError, RunError
from hpcsynth.files import atomic_write_json, read_json
from hpcsynth.plan.calibrate import bytes_per_token
from hpcsynth.plan.heap import keep_freed_memory
from hpcsynth.plan.manifest import (changes_since, check_inputs_unchanged, commit_plan, input_stats, take_lock,
                                    write_manifest)
from hpcsynth.plan.parallel import MapGroups, default_jobs, run_groups, run_groups_mapped
from hpcsynth.corpus.readers import ByteCounter, display_path, expand_inputs, unit
from hpcsynth.plan.documents import estimate_tokens
from hpcsynth.plan.routing import routes_of, totals as route_totals
from hpcsynth.plan.scan import GroupJob, GroupResult
from hpcsynth.plan.summary import summarize
from hpcsynth.prompts import load_prompts
from hpcsynth.rundir import LAYOUT_VERSION, RunDir
from hpcsynth.storage import Location

MIN_GROUPS = 16  # a plan under 16 x plan.group_mb is cut into this many groups, when it has the files
MIN_GROUP_BYTES = 1 << 20  # ...but groups of at least this: a smaller plan takes a moment in one process


@dataclass(frozen=True)
class Plan:
    run: RunDir
    shards: int
    documents: int
    rejected: int
    fingerprint: str
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    unchanged: bool = False  # RUN already held this very plan; nothing was written


def plan_corpus(config: Config, run: RunDir, inputs: list[str] | None = None, jobs: int = 0,
                force: bool = False, progress: Callable[[int, int], None] | None = None,
                map_groups: MapGroups | None = None) -> Plan:
    """Shard the corpus named by `inputs` (or plan.inputs) into RUN.

    Re-planning a planned RUN with the same config and inputs changes nothing; with others it raises
    RunError saying what changed, unless `force` (outputs of changed shards move to RUN/replaced/).
    With `map_groups` (execute/plan_array.py's Slurm arrays for `--executor slurm`), the input groups are
    planned by it, elsewhere (RUN must be on a shared filesystem); without, in this process or its pool.
    """
    if map_groups is not None and config.plan.limit:
        raise HpcsynthError("plan.limit plans a prefix of the input, which one process reads fastest; "
                            "plan it without --executor slurm")
    started = time.monotonic()
    paths, empty = expand_inputs(inputs or list(config.plan.inputs))
    config = dataclasses.replace(config, plan=dataclasses.replace(config.plan, inputs=tuple(map(str, paths))))
    prompts = load_prompts(config)
    digest = fingerprint(config, {p.name: p.template_hash for p in prompts})
    stats = input_stats(paths)
    if run.manifest_path.exists():
        changes = changes_since(run, config, stats)
        if not changes:
            manifest = read_json(run.manifest_path)
            return Plan(run, manifest["rows"]["count"], manifest["documents"], manifest["rejected"], digest,
                        unchanged=True)
        if not force:
            raise RunError(f"{run.root} is already planned differently ({'; '.join(changes)}); plan into a new "
                           f"--run directory, or pass --force to replace the plan (finished outputs are kept)")
    created = not run.root.exists()
    run.root.mkdir(parents=True, exist_ok=True)
    lock = take_lock(run.root)
    tmp = run.plan_staging_dir(os.getpid())
    try:
        for stale in run.root.glob(".plan-tmp-*"):  # left by a planner that died; we hold the lock now
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        plan = _plan_into(tmp, run, config, digest, prompts, (paths, stats), empty, jobs or default_jobs(),
                          progress, map_groups)
        commit_plan(tmp, run)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        lock.release()
        if created and not any(run.root.iterdir()):
            run.root.rmdir()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # raised by a write or an fsync of a shard, which name no file: say where, and what it needs
            total = sum(s["bytes"] for s in stats)
            size = f"{total / 1e6:,.1f} MB" if total >= 100_000 else f"{total:,} bytes"
            raise RunError(f"no space left on the filesystem of {run.root} (or over its quota) while planning "
                           f"{size} of input files; free space there, or plan into a --run on another "
                           f"filesystem, and plan again (nothing was planned)") from None
        raise
    lock.release()
    plan.summary["seconds"] = round(time.monotonic() - started, 3)
    atomic_write_json(run.plan_dir / "summary.json", plan.summary)
    return plan


def _plan_into(tmp: Path, run: RunDir, config: Config, digest: str, prompts: list,
               inputs: tuple[list[Location], list[dict]], empty: list[str], jobs: int,
               progress: Callable[[int, int], None] | None, map_groups: MapGroups | None = None) -> Plan:
    paths, stats = inputs
    keep_freed_memory()  # before the pool forks: its workers inherit the setting
    ratio, ratio_source = bytes_per_token(config, paths)
    routes = routes_of(config)
    group_jobs = [GroupJob(i, files, str(tmp), config.plan, ratio, -1, config.plan.limit, routes=routes)
                  for i, files in enumerate(_groups(paths, stats, group_bytes(config, stats)))]
    if config.plan.limit:
        jobs = 1  # a limit is a prefix of the input: later groups would be read only to be thrown away
    counter, total = ByteCounter(), sum(s["bytes"] for s in stats)

    def meanwhile() -> None:  # what needs no group's result, done while a pool's workers run
        RunDir(tmp).write_config(config, digest)
        import rich.console  # noqa: F401  what the CLI's summary table needs (~40 ms), not after the pool
        import rich.table  # noqa: F401
        if total > LARGE_PLAN_BYTES:  # past plan/duplicates.py's SMALL_IDS sources: numpy sorts their ids
            import numpy  # noqa: F401  ~0.1-0.3 s

    if map_groups is not None:
        results, rows = run_groups_mapped(group_jobs, map_groups)
        meanwhile()
    else:
        results, rows = run_groups(group_jobs, jobs, counter, lambda: progress and progress(counter.done, total),
                                   meanwhile)
    check_inputs_unchanged(paths, stats)  # first: a file being written may also look like bad records
    lost = _check_lost([entry for r in results for entry in r.lost], stats, config)
    warnings = _check_filter_fields(results, config, paths)
    warnings += _check_route_fields(results, routes, paths)
    rejects = _merge_rejects(tmp, len(results), empty)
    from hpcsynth.plan.duplicates import find_duplicates, remove_documents

    removed = find_duplicates(tmp, len(results), [r.documents for r in results], config.plan.duplicate_ids)
    dropped = remove_documents(tmp / "shards", rows, removed, config.plan.zstd_level, ratio)
    for r in removed:
        doc = dropped[r.doc]
        first = f"{stats[r.first_file]['path']}:{r.first_pos}"
        rejects.write(orjson.dumps({"source": stats[r.file]["path"], unit(paths[r.file]): r.pos, "kind": "reject",
                                    "reason": f"duplicate id {doc['id']!r} (first at {first})"}) + b"\n")
    rejects.close()
    totals = {**_totals(results, empty, removed), **lost, "warnings": warnings}
    gone = [dropped[r.doc + i] for r in removed for i in range(r.parts)]  # shard documents of duplicate ids
    routing = route_totals([r.routing for r in results if r.routing], routes,
                           [(doc, estimate_tokens(doc["text"], ratio)) for doc in gone])
    _check_rejects(totals, config, run, tmp)
    per_input: Counter[int] = Counter()
    for result in results:
        per_input.update(result.per_input)
    for r in removed:
        per_input[r.file] -= 1
    manifest = write_manifest(tmp, {
        "layout_version": LAYOUT_VERSION, "hpcsynth_version": __version__, "fingerprint": digest,
        "prompts": [p.describe() for p in prompts],  # name, format (reduce validates by it), version, hash
        "inputs": [{**s, "documents": per_input.get(i, 0)} for i, s in enumerate(stats)],
        "documents": sum(r["documents"] for r in rows), "sources": totals["sources"],
        "rejected": totals["rejected"], "est_tokens": sum(r["est_tokens"] for r in rows),
        "bytes_per_token": ratio, **({"routing": routing} if routing else {}),
    }, rows)
    summary = summarize(manifest, rows, totals, ratio_source, jobs, len(group_jobs))
    return Plan(run, len(rows), manifest["documents"], totals["rejected"], digest, summary)


# Input past which a plan likely holds more than duplicates.SMALL_IDS sources (FineWeb-Edu: ~5 KB each).
LARGE_PLAN_BYTES = 1 << 30


def group_bytes(config: Config, stats: list[dict]) -> int:
    """How many bytes of input files a group takes: plan.group_mb, but at most 1/MIN_GROUPS of the input
    (not under MIN_GROUP_BYTES), so a small plan still has groups for every process of a pool until its
    end: 3 groups of 8 MB on 2 processes leave one idle for a third of the time. A function of the config
    and the inputs only: the same shards for any --jobs."""
    share = -(-sum(s["bytes"] for s in stats) // MIN_GROUPS)
    return min(config.plan.group_mb << 20, max(MIN_GROUP_BYTES, share))


def _groups(paths: list[Location], stats: list[dict], group_bytes: int) -> list[tuple[tuple[int, str], ...]]:
    groups: list[list[tuple[int, str]]] = []
    size = group_bytes
    for index, info in enumerate(stats):
        if size >= group_bytes:
            groups.append([])
            size = 0
        groups[-1].append((index, str(paths[index])))
        size += info["bytes"]
    return [tuple(g) for g in groups]


def _merge_rejects(tmp: Path, groups: int, empty: list[str]) -> Any:
    (tmp / "plan").mkdir()
    out = open(tmp / "plan" / "rejects.jsonl", "wb")
    for pattern in empty:
        out.write(orjson.dumps({"source": display_path(pattern), "kind": "reject", "reason": "matches no file"})
                  + b"\n")
    for group in range(groups):
        part = tmp / "rejects" / f"{group:06d}.jsonl"
        with open(part, "rb") as handle:
            shutil.copyfileobj(handle, out)
        part.unlink()
    return out


def _totals(results: list[GroupResult], empty: list[str], removed: list) -> dict[str, Any]:
    reasons: Counter[str] = Counter()
    filtered: Counter[str] = Counter()
    for result in results:
        reasons.update(result.reasons)
        filtered.update(result.filtered)
    if empty:
        reasons["matches no file"] += len(empty)
    if removed:
        reasons["duplicate id"] += len(removed)
    rejected = sum(reasons.values())
    return {"read": sum(r.read for r in results) + len(empty), "rejected": rejected,
            "sources": sum(r.sources for r in results) - len(removed),
            "reasons": dict(reasons.most_common()), "filtered": dict(filtered.most_common())}


def _check_lost(lost: list[dict[str, Any]], stats: list[dict], config: Config) -> dict[str, Any]:
    """Files that could not be read whole fail the plan, unless plan.skip_bad_files: then their bytes
    (whole files, the part read before the failure too) count against plan.max_reject_rate, as a share
    of all input bytes. Returns what the summary says of them."""
    total = sum(s["bytes"] for s in stats)
    size = sum(entry["bytes"] for entry in lost)
    summary = {"lost_files": [{k: v for k, v in entry.items() if k != "file"} for entry in lost],
               "lost_bytes": size, "input_bytes": total}
    if not lost:
        return summary
    first = f"{lost[0]['source']}: {lost[0]['reason']}"
    more = ""
    if len(lost) > 1:
        names = ", ".join(e["source"] for e in lost[1:4]) + (" ..." if len(lost) > 4 else "")
        more = f" (and {len(lost) - 1:,} more: {names})"
    if not config.plan.skip_bad_files:
        raise InputError(f"input file {first}{more}; a file that cannot be read whole fails the plan (nothing was "
                         f"planned): repair or remove it, or plan with --skip-bad-files (plan.skip_bad_files: "
                         f"true) to plan without it, its bytes counted against plan.max_reject_rate")
    rate = size / total if total else 1.0
    if rate > config.plan.max_reject_rate:
        raise InputError(f"{len(lost):,} lost input file(s), {size:,} of {total:,} input bytes ({rate:.1%}), above "
                         f"plan.max_reject_rate={config.plan.max_reject_rate}: {first}{more}; repair or remove "
                         f"them, or raise plan.max_reject_rate (nothing was planned)")
    return summary


def _check_filter_fields(results: list[GroupResult], config: Config, paths: list[Location]) -> list[str]:
    """A plan.filter field that no judged document has is a misspelling: refused when the filter removed
    documents (a missing field never matches), a warning when it removed none. A field only some documents
    lack is ragged metadata: a warning, with the share of documents removed that lack it. Returns the warnings."""
    judged = sum(r.judged for r in results)
    return _check_fields("plan.filter", judged, [r.filter_fields for r in results], paths, "removed", "")


def _check_route_fields(results: list[GroupResult], routes: tuple[tuple[str, str], ...],
                        paths: list[Location]) -> list[str]:
    """plan.filter's rule for each prompt's condition: a field no planned document has, where the condition
    kept documents from its prompt for it, fails the plan naming the fields the data has."""
    judged = sum(r.routing.get("judged", 0) for r in results)
    warnings = []
    for i, (name, when) in enumerate(routes):
        if when:
            key = f"prompts[{i}].when"
            found = [r.routing["fields"][key] for r in results if r.routing]
            warnings += _check_fields(key, judged, found, paths, "kept", f" from prompt {name!r}")
    return warnings


def _check_fields(key: str, judged: int, found: list[dict[str, list[int]]], paths: list[Location], verb: str,
                  whence: str) -> list[str]:
    """A predicate's fields against the documents it judged (documents.FieldWatch, summed over the groups):
    `verb` and `whence` say what it did to a document it did not select ("removed", "kept ... from prompt X")."""
    fields: dict[str, list[int]] = {}
    for group in found:
        for name, (seen, removed) in group.items():
            counts = fields.setdefault(name, [0, 0])
            counts[0] += seen
            counts[1] += removed
    warnings = []
    for name, (seen, removed) in fields.items():
        if not judged or (seen and not removed):
            continue
        if not seen and removed:
            from hpcsynth.corpus.readers import field_names

            have = ", ".join(field_names(paths)) or "none"
            raise ConfigError(f"'{key}' reads field {name!r}, which none of the {judged:,} documents it judged "
                              f"has, and {verb} {removed:,} of them{whence} (a missing field never matches); the "
                              f"documents have: {have}; fix the field's name in {key} (nothing was planned)")
        if not seen:
            warnings.append(f"{key} reads field {name!r}, which none of the {judged:,} documents it judged has "
                            f"(it {verb} none{whence} for it); check the field's name")
        else:
            warnings.append(f"{key} {verb} {removed:,} of the {judged:,} documents it judged ({removed / judged:.1%})"
                            f"{whence} that lack field {name!r} (a missing field never matches)")
    return warnings


def _check_rejects(totals: dict[str, Any], config: Config, run: RunDir, tmp: Path) -> None:
    """Abort past plan.max_reject_rate or with nothing planned; keep the rejects where the user finds them."""
    read, rejected = totals["read"], totals["rejected"]
    rate = rejected / read if read else 1.0
    if totals["sources"] > 0 and rate <= config.plan.max_reject_rate:
        return
    kept = run.failed_plan_rejects_path
    shutil.copyfile(tmp / "plan" / "rejects.jsonl", kept)
    top = ", ".join(f"{reason} ({n:,})" for reason, n in list(totals["reasons"].items())[:3]) or "none"
    top += _first_reject(kept)
    if totals["sources"] == 0:
        raise InputError(f"no usable documents in the input ({rejected:,} rejected: {top}; filtered: "
                         f"{totals['filtered'] or 'none'}); see {kept}; check plan.text_key ({config.plan.text_key!r})"
                         f" and the filters")
    raise InputError(f"{rejected:,} of {read:,} records rejected ({rate:.1%}), above plan.max_reject_rate="
                     f"{config.plan.max_reject_rate}: {top}; see {kept}; fix the input or raise plan.max_reject_rate")


def _first_reject(path: Path) -> str:
    with open(path, "rb") as handle:
        line = handle.readline()
    if not line:
        return ""
    entry = orjson.loads(line)
    where = next((f" {unit} {entry[unit]}" for unit in ("line", "row") if unit in entry), "")
    return f"; first: {entry['source']}{where}: {entry['reason']}"
