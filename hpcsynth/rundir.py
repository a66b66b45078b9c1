"""The run directory: the one contract between plan, launch, the worker, status and reduce.

Stages never hand each other objects; each reads what the previous one committed here. The layout is
documented in docs/run-directory.md; keep the two in step.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import orjson
import yaml

from hpcsynth.config import (MAX_RUN_YAML_BYTES, Config, config_from_dict, config_to_dict, diff_payloads,
                             fingerprint, fingerprint_payload, read_yaml)
from hpcsynth.errors import ConfigError, HpcsynthError, RunError
from hpcsynth import typed
from hpcsynth.files import atomic_write_bytes, read_json, read_regular, sha256_file
from hpcsynth.locks import describe_holder, lock_holder
from hpcsynth.storage import folded_url
from hpcsynth.rowfile import MAX_WIDTH, RowFileError, check_file, iter_rows, read_row

# 2: manifest.json is a header and the shard rows are a fixed-width row file beside it (MANIFEST_ROWS);
# 1: the rows were a list inside manifest.json, which every reader parsed whole (146 MB at 339,000 shards).
LAYOUT_VERSION = 2
MANIFEST_ROWS = "manifest.rows.jsonl"
PLAN_LOCK = ".plan.lock"  # held by the one `hpcsynth plan` writing a run (hpcsynth/plan/manifest.py)


def shard_name(shard: int) -> str:
    return f"{shard:06d}"


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        url = folded_url(self.root)
        if url is not None:  # pathlib folds "s3://b/run" to "s3:/b/run": a local folder no one meant
            raise RunError(f"the run directory {url} is a URL; a run directory must be "
                           f"on a POSIX filesystem (its leases, markers and renames need one), shared with the "
                           f"workers: pass a local or shared path to --run; the corpus (plan --input) and the "
                           f"reduce output (reduce --out) may be s3:// URLs")

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
    def manifest_path(self) -> Path:  # the header: counts, prompts, inputs, totals, where the rows are
        return self.root / "manifest.json"

    @property
    def manifest_rows_path(self) -> Path:  # one fixed-width line per shard (hpcsynth/rowfile.py)
        return self.root / MANIFEST_ROWS

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

    def staged_reduce_dir(self, url: str) -> Path:
        """Where `reduce --out s3://...` writes before uploading (and keeps its parts for a re-mix): a folder
        per URL, named after it, made unique by its hash."""
        import hashlib

        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", url.split("://", 1)[-1]).strip("_.")[:80] or "bucket"
        return self.root / "reduce-s3" / f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"

    # --- written by `hpcsynth repair` (hpcsynth/repair/): each attempt's sub-runs, ordinary run directories
    # of the records still refused, and the yield report; reduce and status read them by these paths alone
    @property
    def repair_dir(self) -> Path:
        return self.root / "repair"

    def repair_run_dir(self, attempt: int, prompt: str) -> Path:
        return self.repair_dir / f"attempt-{attempt}" / prompt

    @property
    def repair_report_path(self) -> Path:
        return self.repair_dir / "report.json"

    def repair_runs(self) -> list[tuple[int, str, RunDir]]:
        """(attempt, prompt, sub-run) of every planned repair sub-run, by attempt then prompt; [] without repair."""
        found = []
        try:
            attempts = [p for p in self.repair_dir.iterdir() if p.name.startswith("attempt-")]
        except (FileNotFoundError, NotADirectoryError):
            return []
        for folder in attempts:
            number = folder.name[len("attempt-"):]
            if not number.isdigit() or not folder.is_dir():
                continue
            for sub in folder.iterdir():
                if (sub / "manifest.json").is_file():
                    found.append((int(number), sub.name, RunDir(sub)))
        return sorted(found, key=lambda entry: (entry[0], entry[1]))

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
        """The manifest's header: everything the plan recorded but the shard rows (manifest_row(s) read those)."""
        self.require_planned()
        fix = "plan the run again into a new directory"
        raw = _read_run_bytes(self.manifest_path, fix)
        old = _LAYOUT_1.search(raw)
        if old is not None:  # before parsing: a layout-1 manifest is the 146 MB this layout ends
            raise self._layout_1_error(old)
        try:
            manifest = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RunError(f"{self.manifest_path} is damaged ({exc}); {fix}") from None
        if not isinstance(manifest, dict):
            raise RunError(f"{self.manifest_path}: not a manifest; {fix}")
        if manifest.get("layout_version") == 1:
            raise self._layout_1_error(None, manifest.get("hpcsynth_version"))
        if manifest.get("layout_version") != LAYOUT_VERSION:
            raise RunError(f"{self.manifest_path}: layout version {manifest.get('layout_version')} is not "
                           f"{LAYOUT_VERSION}; plan the run again with this hpcsynth")
        self._rows_spec(manifest)
        wrong = typed.problem(manifest, MANIFEST_SHAPE)
        if wrong:  # a forged or damaged header: one line here, not a traceback in whichever stage reads it
            raise RunError(f"{self.manifest_path} is damaged ({wrong}); {fix}")
        return manifest

    def _layout_1_error(self, found: re.Match | None, version: Any = None) -> RunError:
        if found is not None:
            named = _PLANNED_BY.search(found.string)
            version = named[1].decode("ascii", "replace") if named else None
        by = f"hpcsynth {version}" if isinstance(version, str) and version else "the hpcsynth version"
        return RunError(f"{self.root} is a run directory of layout 1 (its shard rows inside manifest.json) and this "
                        f"hpcsynth reads layout {LAYOUT_VERSION}: {self._replan_fix()}, or finish it with {by} "
                        f"that planned it")

    def _replan_fix(self) -> str:
        """How a plan whose manifest cannot be used is made again, keeping the shards whose files are unchanged."""
        parent = self.grid_parent()
        if parent is not None:
            return f"plan the grid again: `hpcsynth plan CONFIG --run {parent} --force` (finished shards stay done)"
        return (f"plan it again: `hpcsynth plan CONFIG --run {self.root} --force` (finished shards whose files "
                f"are unchanged stay done), or into a new directory")

    def _rows_spec(self, manifest: dict[str, Any]) -> tuple[Path, int, int]:
        """(row file, row count, row width) from a header, each checked: a forged header names no file outside
        RUN and no width that would size every read."""
        rows = manifest.get("rows")
        spec = rows if isinstance(rows, dict) else {}
        name, count, width = spec.get("file"), spec.get("count"), spec.get("width")
        if not (isinstance(name, str) and name and "/" not in name and "\\" not in name and not name.startswith(".")
                and _is_int(count) and count >= 0 and _is_int(width) and 2 <= width <= MAX_WIDTH):
            raise RunError(f"{self.manifest_path}: not a layout-{LAYOUT_VERSION} manifest header (its \"rows\" is "
                           f"not {{\"file\", \"count\", \"width\"}}); plan the run again into a new directory")
        return self.root / name, count, width

    def _row_error(self, exc: RowFileError) -> RunError:
        return RunError(f"{exc}; {self._replan_fix()}")

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
        """The planned shards: ids 0..N-1 (the plan numbers them so; each row read checks its id)."""
        return list(range(self.shard_count()))

    def shard_count(self) -> int:
        """From the header, once the row file is there with the size the header gives it (one stat)."""
        path, count, width = self._rows_spec(self.manifest())
        try:
            check_file(path, count, width)
        except RowFileError as exc:
            raise self._row_error(exc) from None
        return count

    def manifest_rows(self) -> Iterator[dict[str, Any]]:
        """Every shard's manifest row (id, path, documents, est_tokens, chars, bytes, sha256, inputs), in id
        order, streamed: memory is one block of rows, whatever the run's size."""
        path, count, width = self._rows_spec(self.manifest())
        try:
            for index, row in enumerate(iter_rows(path, count, width)):
                yield _checked_row(row, path, index)
        except RowFileError as exc:
            raise self._row_error(exc) from None

    def manifest_row(self, shard: int) -> dict[str, Any] | None:
        """One shard's manifest row (one pread of its line), None when the plan has no such shard."""
        path, count, width = self._rows_spec(self.manifest())
        if not _is_int(shard) or not 0 <= shard < count:
            return None
        try:
            return _checked_row(read_row(path, shard, count, width), path, shard)
        except RowFileError as exc:
            raise self._row_error(exc) from None

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


# A layout-1 manifest, told from its top-level key (files.atomic_write_json indents those by two spaces, and
# no string holds a raw newline), so that refusing one does not parse its rows first.
_LAYOUT_1 = re.compile(rb'\n  "layout_version": 1,\n')
_PLANNED_BY = re.compile(rb'\n  "hpcsynth_version": "([0-9A-Za-z.+_-]{1,40})"')
_SHA256 = re.compile(r"[0-9a-f]{64}")
ROW_COUNTS = ("documents", "est_tokens", "chars", "bytes")


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# What every stage reads of the manifest's header (docs/run-directory.md, "The plan"), checked as it is read.
MANIFEST_SHAPE: dict[str, Any] = {
    "documents": typed.count, "sources": typed.count, "rejected": typed.count, "est_tokens": typed.count,
    "bytes_per_token": typed.positive, "fingerprint": typed.text, "hpcsynth_version": typed.text,
    "prompts": typed.list_of({"name": typed.text, "format": typed.text, "version": typed.text,
                              "template_hash": typed.text}),
    "inputs": typed.list_of({"path": typed.text, "bytes": typed.count, "mtime_ns": typed.count,
                             "documents": typed.count}),
}


def _checked_row(row: dict[str, Any], path: Path, index: int) -> dict[str, Any]:
    """Row `index` as the plan writes it: its own id and shard path, counts, a checksum. A row forged or
    damaged into another shard's, or without its checksum, would feed a worker the wrong file unchecked.
    One expression first (a pass over 339,000 rows runs it for each; `type() is int` also refuses bools),
    the reason only for a row that fails it."""
    rid, docs, tokens, chars, size, sha = (row.get("id"), row.get("documents"), row.get("est_tokens"),
                                          row.get("chars"), row.get("bytes"), row.get("sha256"))
    if (type(rid) is int and rid == index and row.get("path") == "shards/%06d.jsonl.zst" % index
            and type(docs) is int and docs >= 0 and type(tokens) is int and tokens >= 0 and type(chars) is int
            and chars >= 0 and type(size) is int and size >= 0 and type(sha) is str and len(sha) == 64
            and _SHA256.fullmatch(sha) and type(row.get("inputs", [])) is list):
        return row
    problem = ""
    if row.get("id") != index or not _is_int(row.get("id")):
        problem = f"its id is {row.get('id')!r}"
    elif row.get("path") != f"shards/{shard_name(index)}.jsonl.zst":
        problem = f"its path is {row.get('path')!r}"
    elif not all(_is_int(row.get(key)) and row[key] >= 0 for key in ROW_COUNTS):
        problem = "a count is missing or not a whole number"
    elif not isinstance(row.get("sha256"), str) or not _SHA256.fullmatch(row["sha256"]):
        problem = "no sha256"
    elif not isinstance(row.get("inputs", []), list):
        problem = "its inputs are not a list"
    if problem:
        raise RowFileError(f"{path}: row {index} is damaged ({problem})")
    return row


def _read_run_bytes(path: Path, fix: str) -> bytes:
    try:
        return read_regular(path)
    except FileNotFoundError:
        raise RunError(f"{path} is missing; {fix}") from None
    except OSError as exc:  # not a regular file, or a giant (files.read_regular)
        raise RunError(f"{path} is damaged ({exc.strerror}); {fix}") from None


CORPUS_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".parquet")


def _corpus_files(directory: Path) -> list[Path]:
    """Corpus-looking files directly in a directory that is not a run (a run keeps its shards in shards/)."""
    try:
        return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(CORPUS_SUFFIXES))
    except OSError:
        return []
