"""The benchmark n-gram table of reduce.decontaminate: the user's own benchmark files -> sorted 64-bit hashes.

Normalization, the one definition every side uses (the table, synthetic records, mixed-in documents):
a text's words are `\\w+` over text.lower() (wordids.words: Unicode letters, digits and underscore, so
punctuation, Markdown and spacing never matter); an n-gram is n consecutive words of one text (never
across two benchmark items, records or documents); its hash is ngrams.ngram_hashes over the words' ids
(wordids.word_ids: each word a splitmix64-finalized 64-bit polynomial of its code points; n of them
mixed into one 64-bit value). A benchmark item is its record's `text_keys` fields joined by line breaks
(a list of strings, e.g. MMLU's choices, gives its lines); an item shorter than n words has no n-gram
and is only counted (`short_items`).

The table holds each distinct n-gram once: its hash (uint64, sorted) and the item it was first found in
(uint32), 12 bytes an n-gram, nothing else of the benchmarks: memory follows the benchmarks' n-grams,
never the run. A lookup is np.searchsorted over the sorted hashes. Two different n-grams share a hash
with probability 2^-64, so a run of Q n-grams against a table of M expects Q x M / 2^64 false matches
(FinePhrase's ~5 x 10^11 output n-grams against 10^7: ~0.3); every refusal shows the record's own words
that matched, so a person can tell one.

A reduce builds the table once, in prepare_reduce, into DIR/parts/part-benchmarks.* (named part-*: cleared
with the parts when the spec key changes); every part, in any process or Slurm array task, memory-maps it
(load_table), so the operating system holds one copy per node. `hpcsynth validate` builds it in memory.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from hpcsynth.errors import ConfigError, InputError
from hpcsynth.files import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from hpcsynth.reduce.validate.ngrams import ngram_hashes
from hpcsynth.reduce.validate.wordids import word_ids_many

TABLE = "part-benchmarks"  # DIR/parts/part-benchmarks.{hashes,items,positions}.npy and .json (written last)
BATCH_ITEMS = 512  # benchmark items whose words are split in one numpy pass
BATCH_CHARS = 1 << 20  # and about this much text at most
KEY = "reduce.decontaminate"
_SHA256: dict[tuple[str, int, int], str] = {}  # (path, size, mtime): a file hashed once per process
_TABLES: dict[str, BenchmarkTable] = {}  # a reduce's table, opened once per process (by its key)


class BenchmarkTable:
    """Sorted n-gram hashes, the item each came from, and where each item is in its file."""

    def __init__(self, hashes: np.ndarray, items: np.ndarray, positions: np.ndarray, files: list[dict],
                 ngram: int, key: str = "") -> None:
        self.hashes, self.items, self.positions = hashes, items, positions
        self.files, self.ngram, self.key = files, ngram, key
        self._starts = np.asarray([f["first_item"] for f in files], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.hashes)

    @property
    def nbytes(self) -> int:
        return int(self.hashes.nbytes + self.items.nbytes + self.positions.nbytes)

    def find(self, grams: np.ndarray) -> np.ndarray:
        """Per n-gram hash, its row in the table, or -1 when no benchmark holds it."""
        none = np.full(len(grams), -1, dtype=np.int64)
        if not len(self.hashes) or not len(grams):
            return none
        # Sorted queries first: numpy's search then starts each from the last one's place, ~10x faster than
        # random probes into a table of millions (2.9 s -> 0.15 s for 1.6M n-grams against 8.75M).
        ordered = np.sort(grams)
        rows = np.minimum(np.searchsorted(self.hashes, ordered), len(self.hashes) - 1)
        if not (self.hashes[rows] == ordered).any():  # nearly every batch: nothing to place
            return none
        rows = np.minimum(np.searchsorted(self.hashes, grams), len(self.hashes) - 1)
        return np.where(self.hashes[rows] == grams, rows, -1)

    def where(self, row: int) -> tuple[str, str]:
        """(the benchmark's name, "line 17" / "row 16") of the item a table row came from."""
        item = int(self.items[row])
        file = self.files[int(np.searchsorted(self._starts, item, side="right")) - 1]
        unit = "row" if _is_parquet(file["path"]) else "line"
        return file["name"], f"{unit} {int(self.positions[item])}"

    def summary(self) -> dict[str, Any]:
        """What the reports say of the table: n, each benchmark's items, and the size."""
        return {"ngram": self.ngram, "ngrams": len(self.hashes), "bytes": self.nbytes,
                "benchmarks": [{k: f[k] for k in ("name", "items", "short_items", "bytes", "sha256")}
                               for f in self.files]}


def resolve_benchmarks(settings: Any) -> dict[str, Any] | None:
    """reduce.decontaminate as plain data, each benchmark file named and hashed (what the reduce's spec key
    covers, so that changing a benchmark redoes the parts); None when no benchmark is set. A pattern that
    matches no file, or a file that cannot be read, is a ConfigError naming it."""
    if not settings.benchmarks:
        return None
    from hpcsynth.corpus.readers import expand_inputs
    from hpcsynth.storage import is_remote

    remote = [name for name in settings.benchmarks if is_remote(name)]
    if remote:  # small files, hashed whole for the spec key: a local copy is what the check should read
        raise ConfigError(f"{KEY}.benchmarks: {remote[0]!r}: benchmarks are read from local files only; copy them "
                          f"here (e.g. `aws s3 cp`) and name that path")
    try:
        found, empty = expand_inputs(list(settings.benchmarks))
        paths = [Path(path) for path in found]
    except InputError as exc:
        raise ConfigError(f"{KEY}.benchmarks: {exc} (a benchmark left out would check nothing)") from None
    if empty:
        raise ConfigError(f"{KEY}.benchmarks: {empty[0]!r} matches no file; check the path or glob (a benchmark "
                          f"left out would check nothing)")
    names = [p.name for p in paths]
    files = []
    for path in paths:
        # Two files of one name (gsm8k/test.jsonl, mmlu/test.jsonl) are told apart by their folder.
        name = path.name if names.count(path.name) == 1 else f"{path.parent.name}/{path.name}"
        files.append({"path": str(path), "name": name, **_identity(path)})
    return {"ngram": settings.ngram, "text_keys": list(settings.text_keys), "files": files}


def table_key(resolved: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(resolved, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _identity(path: Path) -> dict[str, Any]:
    try:
        info = path.stat()
        stamp = (str(path), info.st_size, info.st_mtime_ns)
        if stamp not in _SHA256:
            _SHA256[stamp] = sha256_file(path, follow=True)
    except OSError as exc:
        raise ConfigError(f"{KEY}.benchmarks: {path} cannot be read ({exc.strerror or exc})") from None
    return {"bytes": info.st_size, "sha256": _SHA256[stamp]}


def build_table(resolved: dict[str, Any], max_line_bytes: int) -> BenchmarkTable:
    """Read every benchmark file and hash its items' n-grams: a file or an item that cannot be read is a
    ConfigError naming it (a benchmark read in part would pass text it should have refused)."""
    n = resolved["ngram"]
    hashes: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    positions: list[int] = []
    files = []
    for file in resolved["files"]:
        first, short = len(positions), 0
        texts: list[str] = []
        chars = 0
        for position, text in _items(file["path"], resolved["text_keys"], max_line_bytes):
            texts.append(text)
            positions.append(position)
            chars += len(text)
            if len(texts) >= BATCH_ITEMS or chars >= BATCH_CHARS:
                short += _hash_items(texts, len(positions) - len(texts), n, hashes, owners)
                texts, chars = [], 0
        short += _hash_items(texts, len(positions) - len(texts), n, hashes, owners)
        files.append({**file, "first_item": first, "items": len(positions) - first, "short_items": short})
    # One array at a time replaces the one before (the peak is ~3 copies of the hashes, ~25 bytes an n-gram).
    every = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    hashes.clear()
    items = np.concatenate(owners) if owners else np.zeros(0, np.uint32)
    owners.clear()
    order = np.argsort(every)  # of equal hashes one item is kept, whichever: each holds the n-gram
    every = every[order]
    items = items[order]
    del order
    first_seen = np.concatenate(([True], every[1:] != every[:-1])) if len(every) else np.zeros(0, bool)
    if not first_seen.all():
        every, items = every[first_seen], items[first_seen]
    return BenchmarkTable(every, items, np.asarray(positions, dtype=np.int64), files, n, table_key(resolved))


def _hash_items(texts: list[str], base: int, n: int, hashes: list, owners: list) -> int:
    """Append the n-grams of these items (item numbers from `base`); return how many are under n words."""
    if not texts:
        return 0
    ids, bounds = word_ids_many(texts)
    grams = ngram_hashes(ids, n)
    lengths = np.diff(bounds)
    if len(grams):
        at = np.arange(len(grams))
        owner = np.searchsorted(bounds, at, side="right") - 1
        inside = at + n <= bounds[owner + 1]  # an n-gram running into the next item is none
        hashes.append(grams[inside])
        owners.append((owner[inside] + base).astype(np.uint32))
    return int(np.count_nonzero(lengths < n))


def _items(path: str, text_keys: list[str], max_line_bytes: int):  # type: ignore[no-untyped-def]
    """(position, text) of every item of a benchmark file, read by the corpus reader (as plan.inputs)."""
    from hpcsynth.corpus.readers import read_file

    unit = "row" if _is_parquet(path) else "line"
    for position, record, reason in read_file(Path(path), list(text_keys), max_line_bytes=max_line_bytes):
        if reason or record is None:
            reason = str(reason).replace("(plan.text_key)", f"({KEY}.text_keys)")
            raise ConfigError(f"{KEY}.benchmarks: {path} {unit} {position}: {reason}; fix the file or leave it "
                              f"out (a benchmark read in part would let its other items through)")
        pieces = [piece for key in text_keys for piece in _strings(record.get(key))]
        if not any(piece.strip() for piece in pieces):
            raise ConfigError(f"{KEY}.benchmarks: {path} {unit} {position} has no text in {', '.join(text_keys)} "
                              f"({KEY}.text_keys); its fields: {', '.join(map(str, list(record)[:20])) or 'none'}")
        yield position, "\n".join(pieces)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return [str(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _is_parquet(path: str) -> bool:
    return path.endswith((".parquet", ".pq"))


def save_table(table: BenchmarkTable, folder: Path) -> None:
    """DIR/parts/part-benchmarks.*: the arrays first, the .json that vouches for them last."""
    for name, array in (("hashes", table.hashes), ("items", table.items), ("positions", table.positions)):
        atomic_write_bytes(folder / f"{TABLE}.{name}.npy", _npy(array))
    atomic_write_json(folder / f"{TABLE}.json", {"key": table.key, "ngram": table.ngram, "files": table.files,
                                                "ngrams": len(table.hashes), "items": len(table.positions)})


def load_table(folder: Path, key: str, cached: bool = True) -> BenchmarkTable | None:
    """The table saved under `key`, memory-mapped (the page cache holds one copy for every process of a
    node); None when it is missing, of other settings, or damaged (it is built again). `cached`: the one
    this process opened before, if any (a part; prepare_table looks on disk)."""
    if cached and key in _TABLES:
        return _TABLES[key]
    try:
        head = read_json(folder / f"{TABLE}.json")
        if head.get("key") != key:
            return None
        arrays = {name: np.load(folder / f"{TABLE}.{name}.npy", mmap_mode="r", allow_pickle=False)
                  for name in ("hashes", "items", "positions")}
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if (arrays["hashes"].dtype != np.uint64 or arrays["items"].dtype != np.uint32
            or arrays["positions"].dtype != np.int64 or len(arrays["hashes"]) != head.get("ngrams")
            or len(arrays["items"]) != head.get("ngrams") or len(arrays["positions"]) != head.get("items")):
        return None
    table = BenchmarkTable(arrays["hashes"], arrays["items"], arrays["positions"], head["files"], head["ngram"], key)
    _TABLES[key] = table
    return table


def prepare_table(resolved: dict[str, Any], folder: Path, max_line_bytes: int) -> BenchmarkTable:
    """The reduce's table in DIR/parts: the one there when it was built from these very files, else built
    and saved (prepare_reduce calls this once per reduce, before any part starts)."""
    key = table_key(resolved)
    table = load_table(folder, key, cached=False)
    if table is None:
        folder.mkdir(parents=True, exist_ok=True)
        table = build_table(resolved, max_line_bytes)
        save_table(table, folder)
    return table


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
