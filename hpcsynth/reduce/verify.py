"""`hpcsynth verify DIR`: reopen everything a reduce wrote and check it against its report.

Checks, each failure one line: every listed file exists with its size and sha256; the token files'
own structure (Megatron header, lengths vs pointers vs .bin size; .ds index vs data; .npy shape); every
token id below the vocabulary size; every document ending in EOS; NAME.docs.jsonl having one line per
sequence with the same token counts; the mix (report.json's and mix.json, equal) holding each source's
documents and tokens as NAME.docs.jsonl counts them; the Parquet files' row counts. Streaming, so it works on files
larger than memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson

from hpcsynth.errors import RunError
from hpcsynth.files import read_json, sha256_file
from hpcsynth.reduce.formats.megatron import read_index, with_suffix
from hpcsynth.reduce.report import report_path
from hpcsynth.storage import Location, is_remote

BLOCK = 1 << 24  # tokens per block when scanning token files


def verify_output(out_dir: Location) -> tuple[list[tuple[str, dict]], list[str]]:
    """([(which reduce, its report)] for each reduce DIR holds: "full" (report.json) and/or "partial"
    (report-partial.json), each checked; one line per problem); RunError when DIR holds no reduce output.
    A folder may hold both (a `reduce --partial`, then the full one): each is named, never mixed up.
    An s3:// URL is downloaded into a temporary folder and checked there, by the same checks."""
    if is_remote(out_dir):
        import shutil

        from hpcsynth.storage.upload import download_dir

        folder = download_dir(str(out_dir))
        try:
            return verify_output(folder)
        except RunError:  # named by the URL, not by the temporary folder
            raise RunError(f"{out_dir} has no report.json or report-partial.json; is it where `hpcsynth reduce "
                           f"--out` uploaded?") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    out_dir = Path(out_dir)
    reports = [(kind, path) for kind, path in (("full", report_path(out_dir, False)),
                                               ("partial", report_path(out_dir, True))) if path.is_file()]
    if not reports:
        raise RunError(f"{out_dir} has no report.json or report-partial.json; is it the output of "
                       f"`hpcsynth reduce` (default RUN/reduce)?")
    problems: list[str] = []
    checked: list[tuple[str, dict]] = []
    for kind, path in reports:
        try:
            data = read_json(path)
        except ValueError:
            problems.append(f"{path}: not valid JSON; run reduce again")
            continue
        checked.append((kind, data))
        problems += [f"{path.name}: {p}" for p in _verify(out_dir, data)]
    return checked, problems


def _verify(out_dir: Path, data: dict) -> Iterator[str]:
    for entry in data.get("files", []):
        path = out_dir / entry["path"]
        if not path.is_file():
            yield f"{entry['path']} is missing"
        elif path.stat().st_size != entry["bytes"]:
            yield f"{entry['path']} has {path.stat().st_size} bytes, the report says {entry['bytes']}"
        elif sha256_file(path) != entry["sha256"]:
            yield f"{entry['path']} does not match its sha256 in the report (changed or damaged)"
    lengths: list[np.ndarray] = []
    first = 0
    for group in data.get("token_files", []):
        prefix = out_dir / group["prefix"]
        first, start = first + group["sequences"], first
        try:
            found, seq_lengths = _check_tokens(prefix, data, group, start)
        except (OSError, ValueError) as exc:
            yield f"{group['prefix']}: cannot be read ({exc})"
            continue
        lengths.append(seq_lengths)
        yield from found
    if lengths:
        by_source: dict[str, list[int]] = {}
        yield from _check_docs(out_dir / data["docs"], np.concatenate(lengths), data["sequences"], by_source)
        yield from _check_mix(out_dir, data, by_source)
    yield from _check_text(out_dir, data.get("text_export"))


def _check_tokens(prefix: Path, data: dict, group: dict, first: int) -> tuple[list[str], np.ndarray]:
    fmt = data["format"]
    if fmt == "megatron":
        dtype, lengths, pointers, documents = read_index(prefix)
        tokens: np.ndarray = np.memmap(with_suffix(prefix, ".bin"), dtype=dtype, mode="r")
        problems = []
        itemsize = np.dtype(dtype).itemsize
        expected = np.concatenate(([0], np.cumsum(lengths[:-1], dtype=np.int64))) * itemsize if len(lengths) else lengths
        if not np.array_equal(pointers, expected):
            problems.append("index pointers do not follow the lengths")
        if not np.array_equal(documents, np.arange(len(lengths) + 1)):
            problems.append("index document boundaries are not one per sequence")
        ends = np.cumsum(lengths, dtype=np.int64)
    elif fmt == "datatrove":
        from hpcsynth.reduce.formats.datatrove import read_ds

        tokens, ends, meta = read_ds(prefix)
        problems = [] if meta.splitlines()[1] == str(len(tokens)) else ["metadata token count differs from .ds"]
        lengths = np.diff(np.concatenate(([0], ends.astype(np.int64))))
        if len(ends) and (np.any(lengths <= 0) or ends[-1] != len(tokens)):
            problems.append(".ds.index does not match the .ds file")
    else:
        # A flat array has no index: the boundaries come from NAME.docs.jsonl (not from EOS positions,
        # since a web text may spell out the EOS token itself).
        tokens = np.load(with_suffix(prefix, ".npy"), mmap_mode="r")
        with open(prefix.parent / data["docs"], "rb") as handle:
            lines = itertools.islice(handle, first, first + group["sequences"])
            lengths = np.fromiter((orjson.loads(line)["tokens"] for line in lines), dtype=np.int64)
        ends = np.cumsum(lengths)
        problems = []
    if int(np.sum(lengths, dtype=np.int64)) != len(tokens):
        problems.append(f"lengths add up to {int(np.sum(lengths))} tokens, the file holds {len(tokens)}")
    if len(lengths) != group["sequences"] or len(tokens) != group["tokens"]:
        problems.append(f"holds {len(lengths)} sequences / {len(tokens)} tokens, the report says "
                        f"{group['sequences']} / {group['tokens']}")
    problems += _check_ids(tokens, ends, data)
    return [f"{prefix.name}: {p}" for p in problems], np.asarray(lengths)


def _check_ids(tokens: np.ndarray, ends: np.ndarray, data: dict) -> list[str]:
    problems = []
    for start in range(0, len(tokens), BLOCK):
        block = np.asarray(tokens[start:start + BLOCK])
        if len(block) and int(block.max()) >= data["vocab_size"]:
            problems.append(f"token id {int(block.max())} near position {start} is outside the vocabulary "
                            f"({data['vocab_size']})")
            break
    ends = np.asarray(ends, dtype=np.int64)
    ends = ends[(ends > 0) & (ends <= len(tokens))]
    if len(ends) and np.any(np.asarray(tokens[ends - 1]) != data["eos_id"]):
        bad = int(np.count_nonzero(np.asarray(tokens[ends - 1]) != data["eos_id"]))
        problems.append(f"{bad} document(s) do not end with EOS id {data['eos_id']}")
    return problems


def _check_docs(path: Path, lengths: np.ndarray, sequences: int,
                by_source: dict[str, list[int]] | None = None) -> Iterator[str]:
    if not path.is_file():
        yield f"{path.name} is missing"
        return
    count = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle):
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield f"{path.name} line {number + 1}: not valid JSON"
                return
            if number < len(lengths) and entry.get("tokens") != int(lengths[number]):
                yield f"{path.name} line {number + 1}: says {entry.get('tokens')} tokens, the sequence has {lengths[number]}"
                return
            count += 1
            if by_source is not None:
                tally = by_source.setdefault(str(entry.get("source")), [0, 0])
                tally[0] += 1
                tally[1] += entry.get("tokens") or 0
    if count != sequences:
        yield f"{path.name} has {count} lines for {sequences} sequences"


def _check_mix(out_dir: Path, data: dict, by_source: dict[str, list[int]]) -> Iterator[str]:
    """The mix the report and mix.json state is the one in the files: documents and tokens per source,
    counted from NAME.docs.jsonl (which the token files were just checked against)."""
    mix = data.get("mix")
    if not isinstance(mix, dict) or not isinstance(mix.get("sources"), list):
        return
    for row in mix["sources"]:
        counted = by_source.get(str(row.get("name")), [0, 0])
        if [row.get("documents"), row.get("tokens")] != counted:
            yield (f"the mix says {row.get('name')} has {row.get('documents')} documents and {row.get('tokens')} tokens, "
                   f"{data['docs']} holds {counted[0]} and {counted[1]}; run reduce again")
    name = "mix-partial.json" if data.get("partial") else "mix.json"
    try:
        written = read_json(out_dir / name)
    except (OSError, ValueError):
        return  # a missing or damaged mix.json is reported by its checksum above
    if written != mix:
        yield f"{name} is not the mix report.json records; run reduce again"


def _check_text(out_dir: Path, text: dict | None) -> Iterator[str]:
    if not text:
        return
    import pyarrow.parquet as pq

    folder = out_dir / text["dir"]
    for entry in text["files"]:
        path = folder / entry["path"]
        if not path.is_file():
            yield f"text export {entry['path']} is missing"
        elif sha256_file(path) != entry["sha256"]:
            yield f"text export {entry['path']} does not match its sha256"
        elif pq.ParquetFile(path).metadata.num_rows != entry["rows"]:
            yield f"text export {entry['path']} has {pq.ParquetFile(path).metadata.num_rows} rows, not {entry['rows']}"
    if not (folder / "README.md").is_file():
        yield f"text export {folder.name}/README.md (the dataset card) is missing"
