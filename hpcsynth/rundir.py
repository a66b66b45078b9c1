"""The run directory: the one contract between plan, launch, the worker, status and reduce.

Stages never hand each other objects; each reads what the previous one committed here. The layout is
documented in docs/run-directory.md; keep the two in step.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hpcsynth.config import (MAX_RUN_YAML_BYTES, Config, config_from_dict, config_to_dict, diff_payloads,
                             fingerprint, fingerprint_payload, read_yaml)
from hpcsynth.errors import ConfigError, HpcsynthError, RunError
from hpcsynth.files import atomic_write_bytes, read_json, read_regular, sha256_file
from hpcsynth.locks import describe_holder, lock_holder

LAYOUT_VERSION = 1
PLAN_LOCK = ".plan.lock"  # held by the one `hpcsynth plan` writing a run (hpcsynth/plan/manifest.py)


def shard_name(shard: int) -> str:
    return f"{shard:06d}"


@dataclass(frozen=True)
class RunDir:
    root: Path

    # --- written by plan
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def fingerprint_path(self) -> Path:
        return self.root / "fingerprint"

    @property
    def fingerprint_payload_path(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def shard_path(self, shard: int) -> Path:
        return self.root / "shards" / f"{shard_name(shard)}.jsonl.zst"

    # --- written by the worker while a shard is in progress
    def work_dir(self, shard: int) -> Path:
        return self.root / "work" / shard_name(shard)

    def progress_path(self, shard: int) -> Path:
        return self.work_dir(shard) / "records.jsonl"

    def heartbeat_path(self, shard: int) -> Path:
        return self.work_dir(shard) / "heartbeat.json"

    def lease_path(self, shard: int) -> Path:
        return self.work_dir(shard) / "lease.json"

    # --- committed by the worker
    def output_path(self, shard: int) -> Path:
        return self.root / "outputs" / f"{shard_name(shard)}.jsonl.zst"

    def done_path(self, shard: int) -> Path:
        return self.root / "done" / f"{shard_name(shard)}.json"

    def failed_path(self, shard: int) -> Path:
        return self.root / "failed" / f"{shard_name(shard)}.json"

    def rejects_path(self, shard: int) -> Path:
        return self.root / "rejects" / f"{shard_name(shard)}.jsonl"

    @property
    def set_aside_dir(self) -> Path:
        return self.root / "set-aside"

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    # --- the folders above, for whoever reads them whole (status, the account, the mix)
    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def outputs_dir(self) -> Path:
        return self.root / "outputs"

    @property
    def done_dir(self) -> Path:
        return self.root / "done"

    @property
    def failed_dir(self) -> Path:
        return self.root / "failed"

    @property
    def work_root(self) -> Path:
        return self.root / "work"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    # --- written by plan beside the shards
    @property
    def plan_dir(self) -> Path:
        return self.root / "plan"

    @property
    def replaced_dir(self) -> Path:  # outputs of shards a forced re-plan changed (kept, not lost)
        return self.root / "replaced"

    def plan_staging_dir(self, pid: int) -> Path:  # a plan being written, moved into place whole
        return self.root / f".plan-tmp-{pid}"

    @property
    def failed_plan_rejects_path(self) -> Path:  # a failed plan's rejects, kept for the user to read
        return self.root / "plan-failed-rejects.jsonl"

    # --- written by launch, the workers, validate and reduce
    @property
    def tasks_dir(self) -> Path:  # one clock per worker process (RUN/tasks/NAME.json)
        return self.root / "tasks"

    def task_path(self, name: str) -> Path:
        return self.tasks_dir / f"{name}.json"

    @property
    def slurm_dir(self) -> Path:  # submitit's job folders and logs
        return self.root / "slurm"

    def slurm_log_path(self, task_id: str) -> Path:
        return self.slurm_dir / task_id.split("_")[0] / f"{task_id}_0_log.out"

    @property
    def validate_report_path(self) -> Path:
        return self.root / "validate" / "report.json"

    @property
    def generators_dir(self) -> Path:  # a grid run's generator runs
        return self.root / "generators"

    @property
    def datasets_dir(self) -> Path:  # a grid run's reduced datasets
        return self.root / "datasets"

    @property
    def launches_dir(self) -> Path:
        return self.root / "launches"

    @property
    def reduce_jobs_path(self) -> Path:  # the Slurm jobs of `reduce --executor slurm`, for `cancel`
        return self.root / "reduce-jobs.json"

    @property
    def default_reduce_dir(self) -> Path:
        return self.root / "reduce"

    def _restore_fix(self, what: str = "restore the config") -> str:
        parent = self.grid_parent()
        if parent is not None:  # a grid generator's config is derived from the grid's: plan puts it back
            return f"plan the grid again: `hpcsynth plan CONFIG --run {parent}` (finished work is kept)"
        return f"{what} with `hpcsynth launch {self.root} --config FILE --force`"

    def grid_parent(self) -> Path | None:
        """The grid run whose generator's run this is (RUN/generators/NAME/ beside RUN/grid.json), else None:
        such a run is fixed by planning the grid again, never by planning into a new directory."""
        parent = self.root.parent.parent
        return parent if self.root.parent.name == "generators" and (parent / "grid.json").is_file() else None

    # --- reading
    def require_planned(self) -> None:
        if not self.root.is_dir():
            raise RunError(f"run directory {self.root} does not exist; run `hpcsynth plan CONFIG --run "
                           f"{self.root}` first")
        if not self.manifest_path.is_file():
            lock = self.root / PLAN_LOCK  # a plan is writing this run now, unless its holder is gone
            holder = lock_holder(lock)
            if holder is not None:
                raise RunError(f"{self.root} is being planned now ({lock} is held by {describe_holder(holder)}); "
                               f"wait for that plan to finish, or if it died, plan again: "
                               f"`hpcsynth plan CONFIG --run {self.root}`")
            corpus = _corpus_files(self.root)
            if corpus:  # a corpus passed where a run belongs: planning into it would mix the two
                raise RunError(f"{self.root} holds corpus files ({corpus[0].name}...), not a planned run; plan a "
                               f"new run directory from them: `hpcsynth plan CONFIG --run NEW_RUN_DIR --input "
                               f"{shlex.quote(f'{self.root}/*' + ''.join(corpus[0].suffixes[-2:]))}`")
            raise RunError(f"{self.root} has no manifest.json; run `hpcsynth plan CONFIG --run {self.root}` first")

    def manifest(self) -> dict[str, Any]:
        self.require_planned()
        manifest = _read_run_json(self.manifest_path, "plan the run again into a new directory")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
            raise RunError(f"{self.manifest_path}: not a manifest (no 'shards' list); plan the run again into "
                           f"a new directory")
        if manifest.get("layout_version") != LAYOUT_VERSION:
            raise RunError(f"{self.manifest_path}: layout version {manifest.get('layout_version')} is not "
                           f"{LAYOUT_VERSION}; plan the run again with this hpcsynth")
        return manifest

    def config(self) -> Config:
        """The run's resolved config, refused when it no longer matches the run's fingerprint."""
        config = self.load_config_file()
        self.check_fingerprint(config)
        return config

    def load_config_file(self) -> Config:
        self.require_planned()
        if not self.config_path.is_file():
            raise RunError(f"{self.config_path} is missing; {self._restore_fix('restore it')}")
        try:
            data, lines = read_yaml(self.config_path, MAX_RUN_YAML_BYTES)
            return config_from_dict(data, source=str(self.config_path), lines=lines)
        except ConfigError as exc:  # the run's own copy: damaged or hand-edited; say how to put it right
            raise RunError(f"{exc}; undo the edit, or {self._restore_fix()}") from None

    def check_fingerprint(self, config: Config) -> str:
        """Recompute the fingerprint of what was loaded; refuse, naming the keys, when it differs."""
        from hpcsynth.prompts import load_prompts

        try:
            hashes = {p.name: p.template_hash for p in load_prompts(config)}
        except HpcsynthError as exc:
            raise RunError(f"{self.config_path}: {exc}") from None
        digest = fingerprint(config, hashes)
        planned = self.fingerprint()
        if digest == planned:
            return digest
        try:
            old = read_json(self.fingerprint_payload_path)
            changed = diff_payloads(old, fingerprint_payload(config, hashes))
        except (OSError, ValueError):
            changed = []
        what = ", ".join(changed) if changed else "what decides the outputs"
        raise RunError(f"{self.config_path} no longer matches the run's fingerprint ({what} changed since it was "
                       f"written); to change the config use `hpcsynth launch {self.root} --config FILE "
                       f"[--force]`, or undo the edit")

    def fingerprint(self) -> str:
        try:
            # read_regular: a FIFO planted here hung every command, a link to /dev/zero filled memory.
            digest = read_regular(self.fingerprint_path, 1024).decode("utf-8", "replace").strip()
        except FileNotFoundError:
            raise RunError(f"{self.fingerprint_path} is missing; {self._restore_fix()}") from None
        except OSError:
            digest = ""
        if len(digest) != 64:
            raise RunError(f"{self.fingerprint_path} is damaged; {self._restore_fix()}")
        return digest

    def write_config(self, config: Config, digest: str) -> None:
        from hpcsynth.prompts import load_prompts

        hashes = {p.name: p.template_hash for p in load_prompts(config)}
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
        # json, not orjson: a corpus path that is not UTF-8 (kept as surrogates) is escaped, not refused.
        payload = json.dumps(fingerprint_payload(config, hashes), sort_keys=True, indent=1)
        atomic_write_bytes(self.fingerprint_payload_path, payload.encode() + b"\n")
        atomic_write_bytes(self.config_path, text.encode())
        atomic_write_bytes(self.fingerprint_path, f"{digest}\n".encode())

    def shard_ids(self) -> list[int]:
        return [shard["id"] for shard in self.manifest()["shards"]]

    def shard_count(self) -> int:
        return len(self.manifest()["shards"])

    def manifest_rows(self) -> Iterator[dict[str, Any]]:
        """Every shard's manifest row (id, path, documents, est_tokens, chars, bytes, sha256), in id order."""
        yield from self.manifest()["shards"]

    def manifest_row(self, shard: int) -> dict[str, Any] | None:
        """One shard's manifest row, None when the plan has no such shard."""
        for row in self.manifest()["shards"]:
            if row["id"] == shard:
                return row
        return None

    def done_ids(self) -> set[int]:
        """Shards with a done marker, from one listing of done/ (names only: what a marker says, and
        whether its output is in place, is is_done's to check)."""
        return _listed_ids(self.done_dir, ".json")

    def failed_ids(self) -> set[int]:
        return _listed_ids(self.failed_dir, ".json")

    def done_marker(self, shard: int) -> dict | None:
        """The shard's done marker, or None when absent or damaged (a damaged one counts as not done)."""
        try:
            marker = read_json(self.done_path(shard))
        except (OSError, ValueError):
            return None
        return marker if isinstance(marker, dict) else None

    def is_done(self, shard: int, fingerprint: str, verify: str = "size") -> bool:
        """Done: a marker for this fingerprint whose output is in place (same size; with
        verify="sha256" also the same checksum)."""
        return self.done_problem(shard, fingerprint, verify) is None

    def done_problem(self, shard: int, fingerprint: str, verify: str = "size") -> str | None:
        """None when the shard is done; else why not ('' when simply not done under this fingerprint)."""
        path = self.done_path(shard)
        if not path.exists():
            return ""
        marker = self.done_marker(shard)
        if marker is None:
            return f"done marker {path} is damaged"
        if marker.get("fingerprint") != fingerprint:
            return ""
        output = self.output_path(shard)
        try:
            size = output.stat().st_size
        except FileNotFoundError:
            return f"done marker {path.name} names {output} but the file is missing"
        if "bytes" in marker and size != marker["bytes"]:
            return f"{output} has {size} bytes, its done marker says {marker['bytes']}"
        if verify == "sha256" and sha256_file(output) != marker.get("sha256"):
            return f"{output} fails its checksum (sha256 differs from its done marker)"
        return None


def _listed_ids(directory: Path, suffix: str) -> set[int]:
    """The shard ids named NNNNNN{suffix} in a directory, from one scandir (no file is opened or stat-ed)."""
    try:
        with os.scandir(directory) as entries:
            names = [entry.name for entry in entries]
    except FileNotFoundError:
        return set()
    return {int(name[:-len(suffix)]) for name in names if name.endswith(suffix) and name[:-len(suffix)].isdigit()}


def _read_run_json(path: Path, fix: str) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        raise RunError(f"{path} is missing; {fix}") from None
    except ValueError as exc:
        raise RunError(f"{path} is damaged ({exc}); {fix}") from None
    except OSError as exc:  # not a regular file, or a giant (files.read_regular)
        raise RunError(f"{path} is damaged ({exc.strerror}); {fix}") from None


CORPUS_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".parquet")


def _corpus_files(directory: Path) -> list[Path]:
    """Corpus-looking files directly in a directory that is not a run (a run keeps its shards in shards/)."""
    try:
        return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(CORPUS_SUFFIXES))
    except OSError:
        return []
