"""The run directory: the one contract between plan, launch, the worker, status and reduce.

Stages never hand each other objects; each reads what the previous one committed here. The layout is
documented in docs/run-directory.md; keep the two in step.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hpcsynth.config import Config, config_from_dict, config_to_dict
from hpcsynth.errors import RunError
from hpcsynth.files import atomic_write_bytes, read_json

LAYOUT_VERSION = 1


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

    def log_path(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    # --- written by launch and reduce
    @property
    def launches_dir(self) -> Path:
        return self.root / "launches"

    @property
    def default_reduce_dir(self) -> Path:
        return self.root / "reduce"

    # --- reading
    def require_planned(self) -> None:
        if not self.root.is_dir():
            raise RunError(f"run directory {self.root} does not exist; run `hpcsynth plan CONFIG --run "
                           f"{self.root}` first")
        if not self.manifest_path.is_file():
            corpus = _corpus_files(self.root)
            if corpus:  # a corpus passed where a run belongs: planning into it would mix the two
                raise RunError(f"{self.root} holds corpus files ({corpus[0].name}...), not a planned run; plan a "
                               f"new run directory from them: `hpcsynth plan CONFIG --run NEW_RUN_DIR --input "
                               f"{shlex.quote(f'{self.root}/*' + ''.join(corpus[0].suffixes[-2:]))}`")
            raise RunError(f"{self.root} has no manifest.json; run `hpcsynth plan CONFIG --run {self.root}` first")

    def manifest(self) -> dict[str, Any]:
        self.require_planned()
        manifest = read_json(self.manifest_path)
        if manifest.get("layout_version") != LAYOUT_VERSION:
            raise RunError(f"{self.manifest_path}: layout version {manifest.get('layout_version')} is not "
                           f"{LAYOUT_VERSION}; plan the run again with this hpcsynth")
        return manifest

    def config(self) -> Config:
        self.require_planned()
        data = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        return config_from_dict(data, source=str(self.config_path))

    def fingerprint(self) -> str:
        return self.fingerprint_path.read_text(encoding="utf-8").strip()

    def write_config(self, config: Config, fingerprint: str) -> None:
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
        atomic_write_bytes(self.config_path, text.encode())
        atomic_write_bytes(self.fingerprint_path, f"{fingerprint}\n".encode())

    def shard_ids(self) -> list[int]:
        return [shard["id"] for shard in self.manifest()["shards"]]

    def is_done(self, shard: int, fingerprint: str) -> bool:
        """A shard counts as done only with a marker for this config's fingerprint."""
        path = self.done_path(shard)
        if not path.is_file():
            return False
        try:
            return read_json(path).get("fingerprint") == fingerprint
        except ValueError:
            return False


CORPUS_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".parquet")


def _corpus_files(directory: Path) -> list[Path]:
    """Corpus-looking files directly in a directory that is not a run (a run keeps its shards in shards/)."""
    try:
        return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(CORPUS_SUFFIXES))
    except OSError:
        return []
