"""reduce.mix resolved into the list of sources a reduce mixes: plain data for DIR/parts/spec.json.

A source is one synthetic prompt (or every prompt pooled, "*"), the run's own source documents
(run_originals) or another corpus. Its index in the list is what a part stores for each document (one
byte), so the list is fixed by prepare_reduce and read back by every part and the merge. The simple
form (reduce.mix empty) is reduce.original_ratio: all prompts pooled at weight 1, run_originals at
original_ratio.
"""

from __future__ import annotations

from typing import Any

from hpcsynth.config import Config
from hpcsynth.errors import ConfigError, InputError
from hpcsynth.rundir import RunDir
from hpcsynth.storage import Location

RUN_ORIGINALS = "run_originals"
# What a part's bytes depend on (the merge-only settings, weights and policy, are left out of the spec
# key: changing a weight or too_few reuses every tokenized part).
PART_KEYS = ("name", "kind", "prompt", "path", "text_key", "id_key", "files", "stamps")


def resolve_mix(config: Config, run: RunDir) -> dict[str, Any]:
    """The mix as plain data: sources (in a fixed order) and the policy settings."""
    mix = config.reduce.mix
    synthetic = dict(mix.synthetic) or {"*": 1.0}
    sources = [_synthetic(run, prompt, weight) for prompt, weight in synthetic.items()]
    if mix.sources:
        for i, entry in enumerate(mix.sources):
            if entry.name == RUN_ORIGINALS:
                sources.append(_originals(run, entry.weight))
            else:
                sources.append(_corpus(i, entry))
    elif config.reduce.original_ratio > 0:
        sources.append(_originals(run, config.reduce.original_ratio * sum(synthetic.values())))
    return {"sources": sources, "too_few": mix.too_few, "max_repeat": mix.max_repeat,
            "total_tokens": mix.total_tokens, "max_doc_tokens": mix.max_doc_tokens, "oversize": mix.oversize,
            "form": "reduce.mix" if (mix.synthetic or mix.sources) else "reduce.original_ratio"}


def part_settings(mix: dict[str, Any]) -> dict[str, Any]:
    """The part of the mix that decides what a part tokenizes (for the spec key)."""
    return {"sources": [{k: s[k] for k in PART_KEYS} for s in mix["sources"]],
            "max_doc_tokens": mix["max_doc_tokens"], "oversize": mix["oversize"]}


def prompt_sources(mix: dict[str, Any]) -> dict[str, int]:
    """Prompt name -> source index; "*" stands for every prompt."""
    return {s["prompt"] or "*": i for i, s in enumerate(mix["sources"]) if s["kind"] == "synthetic"}


def source_of(prompts: dict[str, int], prompt: str) -> int | None:
    found = prompts.get(prompt)
    return prompts.get("*") if found is None else found


def originals_source(mix: dict[str, Any]) -> int | None:
    return next((i for i, s in enumerate(mix["sources"]) if s["kind"] == "original"), None)


def _synthetic(run: RunDir, prompt: str, weight: float) -> dict[str, Any]:
    return {"name": "synthetic" if prompt == "*" else f"synthetic/{prompt}", "kind": "synthetic",
            "prompt": None if prompt == "*" else prompt, "path": str(run.outputs_dir), "weight": weight,
            "text_key": "text", "id_key": "id", "files": [], "stamps": []}


def _originals(run: RunDir, weight: float) -> dict[str, Any]:
    return {"name": RUN_ORIGINALS, "kind": "original", "prompt": None, "path": str(run.shards_dir),
            "weight": weight, "text_key": "text", "id_key": "id", "files": [], "stamps": []}


def _corpus(index: int, entry: Any) -> dict[str, Any]:
    from hpcsynth.corpus.readers import expand_inputs

    try:
        files, empty = expand_inputs([entry.path])
    except InputError as exc:
        raise ConfigError(f"reduce.mix.sources[{index}].path ({entry.name}): {exc}") from None
    # Size and modification time of each file (of an object: size and ETag), in the spec key: a corpus changed
    # since its parts were made is never mixed from stale parts (every part is redone, as for any change of
    # reduce settings); a part checks an object's ETag again as it opens it (feed.py).
    stamps = [corpus_stamp(f) for f in files]
    return {"name": entry.name, "kind": "corpus", "prompt": None, "path": entry.path, "weight": entry.weight,
            "text_key": entry.text_key, "id_key": entry.id_key, "files": [str(f) for f in files], "stamps": stamps}


def corpus_stamp(file: Location) -> list:
    """[bytes, mtime_ns] of a file, [bytes, ETag] of an object: what must not change while it is mixed."""
    from hpcsynth.storage import stat_of

    info = stat_of(file)
    return [info["bytes"], info["etag"]] if "etag" in info else [info["bytes"], info["mtime_ns"]]


def corpus_parts(mix: dict[str, Any], first_index: int, part_rows: int) -> list[list]:
    """[part index, source index, file, row groups or None] for every corpus file: a JSONL file is one
    part; a Parquet file is split into runs of row groups of about `part_rows` rows (a run's part holds
    ~reduce.part_shards x plan.shard_docs documents), so a part's memory stays bounded by the part."""
    parts: list[list] = []
    for number, source in enumerate(mix["sources"]):
        for file in source["files"]:
            for groups in _row_group_runs(file, part_rows):
                parts.append([first_index + len(parts), number, file, groups])
    return parts


def _row_group_runs(file: str, part_rows: int) -> list[list[int] | None]:
    from hpcsynth.corpus.readers import is_parquet

    if not is_parquet(file):
        return [None]
    try:
        import pyarrow.parquet as pq

        from hpcsynth.storage import open_binary

        with open_binary(file) as handle:
            metadata = pq.ParquetFile(handle).metadata
    except Exception:  # unreadable: one part, whose reader records why in the rejects
        return [None]
    current: list[int] = []
    runs: list[list[int] | None] = [current]
    rows = 0
    for group in range(metadata.num_row_groups):
        if current and rows + metadata.row_group(group).num_rows > part_rows:
            current = []
            runs.append(current)
            rows = 0
        current.append(group)
        rows += metadata.row_group(group).num_rows
    return runs if runs[0] else [None]
