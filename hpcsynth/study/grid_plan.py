"""Planning a grid: the source documents once (the parent run), then one sub-run per generator.

A generator's sub-run, RUN/generators/NAME/, is put in place like any plan (plan/manifest.py's
commit_plan: built in a temporary directory, the manifest last), so a forced re-plan retires changed
shards' outputs there as it does in a plain run. Its manifest is the parent's header with its own
fingerprint and prompts, and its row file a hard link to the parent's (the same rows: a row's path is
relative to its run, and the sub-run's shards sit at the same paths). Its shards are hard links to the parent's files: no copy,
and a later forced re-plan of the parent replaces the parent's files without touching the bytes a
generator's workers are reading. Where the filesystem refuses hard links (another device, some network
filesystems) they are relative symlinks; the workers check every shard's sha256 against the sub-run's
manifest either way, so a link that no longer points at the planned bytes fails its shard, never
feeds it wrong documents.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hpcsynth.config import Config, SlurmConfig, diff_payloads, fingerprint, fingerprint_payload
from hpcsynth.errors import RunError
from hpcsynth.files import atomic_write_json, read_json
from hpcsynth.plan import plan_corpus
from hpcsynth.plan.manifest import commit_plan, take_lock
from hpcsynth.plan.planner import Plan
from hpcsynth.prompts import load_prompts
from hpcsynth.rundir import MANIFEST_ROWS, RunDir
from hpcsynth.study.grid import Generator, Grid, expand_grid, generator_run, write_grid_file


@dataclass(frozen=True)
class GridPlan:
    plan: Plan  # the parent's: documents, shards, summary
    generators: dict[str, str]  # name -> "new", "unchanged" or "re-planned"
    fingerprints: dict[str, str]


def plan_grid(config: Config, run: RunDir, inputs: list[str] | None = None, jobs: int = 0, force: bool = False,
              progress=None, slurm: SlurmConfig | None = None) -> GridPlan:
    """Plan the corpus into RUN once, then derive every generator's sub-run; RUN/grid.json comes last."""
    map_groups = None
    if slurm is not None:  # the input groups as Slurm CPU arrays, as a plain run's `plan --executor slurm`
        from hpcsynth.execute.plan_array import slurm_map_groups

        map_groups = slurm_map_groups(run.root, slurm)
    plan = plan_corpus(config, run, inputs, jobs=jobs, force=force, progress=progress, map_groups=map_groups)
    # The grid is not fingerprinted (the parent generates nothing), so a plan that found nothing to do
    # may still carry an older grid: the parent's config.yaml always shows the one planned now.
    parent = run.load_config_file()
    if parent.grid != config.grid:
        parent = dataclasses.replace(parent, grid=config.grid)
        run.write_config(parent, run.fingerprint())
    # From the parent's resolved config: plan.inputs as planned (globs expanded), for every generator alike.
    grid = expand_grid(parent, str(run.config_path))
    manifest = run.manifest()
    states, digests = {}, {}
    for generator in grid.generators:
        states[generator.name], digests[generator.name] = derive_generator_run(run, manifest, generator, force)
    write_grid_file(run, Grid(grid.prompts, grid.generators, grid.mixins), digests)
    return GridPlan(plan, states, digests)


def derive_generator_run(run: RunDir, manifest: dict, generator: Generator, force: bool) -> tuple[str, str]:
    """Put RUN/generators/NAME/ in step with the parent's plan; returns (what happened, its fingerprint)."""
    sub = generator_run(run, generator.name)
    hashes = {p.name: p.template_hash for p in load_prompts(generator.config)}
    digest = fingerprint(generator.config, hashes)
    state = "new"
    if sub.manifest_path.is_file():
        old = _read_manifest(sub)
        if old.get("fingerprint") == digest and _same_shards(sub, run) and _intact(sub, digest):
            return "unchanged", digest
        if old and old.get("fingerprint") != digest and not force:
            raise RunError(f"generator {generator.name!r} of {run.root} was planned with another config "
                           f"({_changed(sub, generator.config, hashes)} changed); pass --force to plan it again "
                           f"(its finished shards are generated again), or give the new settings a new name")
        state = "re-planned"
    sub.root.mkdir(parents=True, exist_ok=True)
    lock = take_lock(sub.root)
    tmp = sub.plan_staging_dir(os.getpid())
    try:
        for stale in sub.root.glob(".plan-tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        (tmp / "shards").mkdir(parents=True)
        (tmp / "plan").mkdir()
        for row in run.manifest_rows():
            _link(run.root / row["path"], tmp / row["path"], sub.root / row["path"])
        _link_or_copy(run.manifest_rows_path, tmp / MANIFEST_ROWS)
        for name in ("summary.json", "rejects.jsonl"):
            if (run.plan_dir / name).is_file():
                _link(run.plan_dir / name, tmp / "plan" / name, sub.plan_dir / name)
        prompts = load_prompts(generator.config)
        RunDir(tmp).write_config(generator.config, digest)
        atomic_write_json(tmp / "manifest.json", {
            **manifest, "fingerprint": digest, "prompts": [p.describe() for p in prompts],
            "grid": {"parent": "../..", "generator": generator.name}})
        commit_plan(tmp, sub)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        lock.release()
    return state, digest


def _same_shards(sub: RunDir, run: RunDir) -> bool:
    """The sub-run's rows are the parent's, and each of its shards still is the parent's file (a link
    deleted or replaced is made again). Both row files are read a row at a time; a damaged or layout-1
    sub-run manifest counts as changed and is made again."""
    try:
        if sub.shard_count() != run.shard_count():
            return False
        return all(mine["sha256"] == theirs["sha256"] and _same_file(sub.root / mine["path"], run.root / theirs["path"])
                   for mine, theirs in zip(sub.manifest_rows(), run.manifest_rows()))
    except RunError:
        return False


def _link_or_copy(source: Path, target: Path) -> None:
    """The row file: a hard link, else a copy; never a symlink, which would follow the parent's next plan
    while the sub-run's header still describes this one (and which the row reader refuses)."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        shutil.copyfile(source, target)


def _link(source: Path, link: Path, final: Path) -> None:
    """A hard link to source at link; a relative symlink (valid at final) where hard links are refused."""
    try:
        os.link(source, link, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        os.symlink(os.path.relpath(source, final.parent), link)


def _same_file(link: Path, source: Path) -> bool:
    """The sub-run's shard still is the parent's file (a link deleted or replaced is made again)."""
    try:
        mine, theirs = link.stat(), source.stat()
    except OSError:
        return False
    return (mine.st_ino, mine.st_dev) == (theirs.st_ino, theirs.st_dev)


def _intact(sub: RunDir, digest: str) -> bool:
    """Its fingerprint and config.yaml still there (a deleted one is written again, its work kept)."""
    try:
        return sub.fingerprint_path.read_text(encoding="utf-8").strip() == digest and sub.config_path.is_file()
    except (OSError, UnicodeDecodeError):
        return False


def _read_manifest(sub: RunDir) -> dict:
    try:
        data = read_json(sub.manifest_path)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a damaged sub-run manifest is rebuilt like a changed one


def _changed(sub: RunDir, config: Config, hashes: dict[str, str]) -> str:
    try:
        # Through JSON, as the file was written: tuples become lists and compare equal.
        new = json.loads(json.dumps(fingerprint_payload(config, hashes)))
        keys = diff_payloads(read_json(sub.fingerprint_payload_path), new)
    except (OSError, ValueError):
        keys = []
    return ", ".join(keys) or "what decides the outputs"
