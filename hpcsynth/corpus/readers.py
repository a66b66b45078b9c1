"""Corpus readers: JSONL (plain, .gz, .zst) and Parquet (streamed by row group, in batches bounded by bytes:
parquet_rows.py), one record at a time.

A reader never raises for bad data: it yields (position, record, "") for a good record and
(position, None, reason) for a bad one, and a file that cannot be read on (truncated, corrupt, unreadable,
the text column missing) ends with one such item whose reason is a FileFailure: the plan counts that file
as lost (or fails), not as one bad record. Positions are 1-based line numbers for JSONL and 0-based row
numbers for Parquet.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import io
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson
import zstandard

from hpcsynth.errors import HpcsynthError, InputError
from hpcsynth.files import ZstdFrameWalk, zstd_cut_at
from hpcsynth.storage import Location, base_name, check_scheme, is_remote, open_binary, size_of

Item = tuple[int, "dict | None", str]


class FileFailure(str):
    """The reason a file could not be read on: the reader's last item. A str, so that a caller that only
    lists reasons (the mix) takes it as one; the planner tells it apart by its class."""


class ByteCounter:
    """Compressed input bytes consumed so far, for the progress bar (read by the caller, not locked)."""

    def __init__(self) -> None:
        self.done = 0


def expand_inputs(patterns: tuple[str, ...] | list[str]) -> tuple[list[Location], list[str]]:
    """Files named by paths, directories (every file below, sorted) and globs, in order, each once, as
    resolved Paths, and objects named by s3:// URLs (one, a prefix or a glob: storage/s3.py) as URLs; and
    the patterns that matched nothing (the planner lists them as rejects)."""
    if not patterns:
        raise InputError("no input files: pass --input PATH_OR_GLOB or set plan.inputs in the config")
    paths: list[Location] = []
    empty: list[str] = []
    for pattern in patterns:
        check_scheme(pattern, "input")  # a URL read as a path "matches no file", which says nothing of the fix
        if is_remote(pattern):
            from hpcsynth.storage.s3 import expand

            objects = expand(pattern)
            empty += [] if objects else [pattern]
            paths += objects
            continue
        if glob.has_magic(pattern) and not Path(pattern).exists():  # "part[1].jsonl" may be a real name
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
        elif Path(pattern).is_dir():
            matches = sorted(p for p in Path(pattern).rglob("*") if not p.name.startswith("."))
        else:
            matches = [Path(pattern)]
        files = [m.resolve() for m in matches if m.is_file()]
        if not files:
            empty.append(pattern)
        paths += files
    if not paths:
        raise InputError(f"input {empty[0]!r} matches no file; check the path or glob")
    return list(dict.fromkeys(paths)), empty


def display_path(path: str) -> str:
    """A path as JSON can hold it: undecodable bytes of a file name shown as \\xNN (orjson refuses them)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unit(path: Location) -> str:
    return "row" if is_parquet(path) else "line"


def is_parquet(path: Location) -> bool:
    return base_name(path).endswith((".parquet", ".pq"))


def read_file(path: Location, columns: list[str], counter: ByteCounter | None = None,
              max_line_bytes: int = 64 << 20, row_groups: list[int] | None = None) -> Iterator[Item]:
    """Records of one corpus file; `columns` names the top-level fields a columnar reader must load;
    `row_groups` reads only those of a Parquet file (rows keep their numbers in the whole file)."""
    counter = counter or ByteCounter()
    if is_parquet(path):
        return _read_parquet(path, columns, counter, max_line_bytes, row_groups)
    return _read_jsonl(path, counter, max_line_bytes)  # returned, not delegated: one generator less a record


def field_names(paths: list[Location], records: int = 1000, limit: int = 40) -> list[str]:
    """Dotted names of the fields in the first `records` records of these files (of a Parquet file, its
    schema), sorted, at most `limit`: what an error about a field the data lacks lists instead."""
    names: dict[str, None] = {}
    seen = 0
    for path in paths[:16]:  # the start of the input is enough to show what its records hold
        if is_parquet(path):
            names.update(dict.fromkeys(_parquet_names(path)))
            continue
        for _, record, _ in _read_jsonl(path, ByteCounter(), 1 << 20):
            if record is not None:
                _dotted(record, "", names)
            seen += 1
            if seen >= records:
                break
        if seen >= records:
            break
    return sorted(names)[:limit]


def _parquet_names(path: Location) -> list[str]:
    import pyarrow
    import pyarrow.parquet as pq

    def walk(kind: Any, prefix: str) -> list[str]:
        if not pyarrow.types.is_struct(kind):
            return []
        fields = [kind.field(i) for i in range(kind.num_fields)]
        return [n for f in fields for n in [prefix + f.name, *walk(f.type, f"{prefix}{f.name}.")]]

    try:
        with open_binary(path) as handle:
            schema = pq.ParquetFile(handle).schema_arrow
    except (pyarrow.ArrowException, OSError, HpcsynthError):  # an unreadable file names no field; the plan
        return []  # reports it
    return [n for f in schema for n in [f.name, *walk(f.type, f"{f.name}.")]]


def _dotted(record: dict, prefix: str, names: dict[str, None], depth: int = 0) -> None:
    for key, value in record.items():
        names[prefix + str(key)] = None
        if isinstance(value, dict) and depth < 2:
            _dotted(value, f"{prefix}{key}.", names, depth + 1)


class _Counting(io.RawIOBase):
    """A raw file that adds what it reads to a ByteCounter."""

    def __init__(self, handle: Any, counter: ByteCounter) -> None:
        self.handle, self.counter = handle, counter

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.handle.readinto(buffer)
        self.counter.done += n or 0
        return n


def _read_jsonl(path: Location, counter: ByteCounter, max_line_bytes: int) -> Iterator[Item]:
    number = 0
    loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError  # noqa: N806 (a local for the hot loop)
    try:
        with open_binary(path) as raw:
            source = io.BufferedReader(_Counting(raw, counter), 1 << 20)
            # A line is read with a bound, never whole: a small .gz/.zst of zeros must not fill memory.
            # (files.bounded_lines, inlined: this loop runs once per line of the corpus.)
            readline = _stream(path, raw, source).readline
            while line := readline(max_line_bytes + 1):
                number += 1
                if len(line) > max_line_bytes:
                    while line and not line.endswith(b"\n"):
                        line = readline(1 << 20)
                    yield number, None, (f"line longer than plan.max_line_bytes={max_line_bytes:,} (a "
                                         f"decompression bomb, or raise the limit)")
                    continue
                try:
                    record = loads(line)
                except JSONDecodeError as exc:
                    if line.isspace():
                        continue
                    yield number, None, _json_reason(line, exc)
                    continue
                if record.__class__ is not dict:
                    yield number, None, f"expected a JSON object, got {type(record).__name__}"
                    continue
                yield number, record, ""
    except (EOFError, OSError, zlib.error, zstandard.ZstdError, InputError) as exc:
        yield number + 1, None, _file_reason(path, exc, number)


def _stream(path: Location, raw: Any, source: Any) -> Any:
    """A readable binary stream of the decompressed file."""
    if base_name(path).endswith(".gz"):
        return gzip.GzipFile(fileobj=source)
    if base_name(path).endswith(".zst") and is_remote(path):  # one download: the cut is found on the way
        walked = cast(BinaryIO, ZstdFrameWalk(source))  # a reader with read(), as stream_reader takes
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(walked, read_across_frames=True), 1 << 20)
    if base_name(path).endswith(".zst"):
        cut = zstd_cut_at(raw)  # zstandard's stream reader ends quietly inside a cut frame
        raw.seek(0)
        if cut is not None:
            raise zstandard.ZstdError(f"the file is cut short or damaged inside the zstd frame at byte {cut}")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True),
                                 1 << 20)
    return source


def _json_reason(line: bytes, exc: Exception) -> str:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"invalid UTF-8 at byte {bad.start}"
    return f"not valid JSON ({exc})"


def _file_reason(path: Location, exc: BaseException, lines: int = 0) -> FileFailure:
    """Why a file stops; `lines`: how many were read before."""
    before = f"; the {lines:,} lines before it were read" if lines else ""
    if isinstance(exc, InputError):  # an object refused or changed since it was listed: the line says which
        return FileFailure(f"{exc}{before}")
    if isinstance(exc, PermissionError):
        return FileFailure("cannot read the file (permission denied)")
    if isinstance(exc, EOFError):  # gzip: the stream stops before its end marker, i.e. where the file does
        return FileFailure(f"gzip stream is truncated or corrupt (cut at byte {_size(path):,}, the end of the "
                           f"file, before the end of the stream){before}")
    if isinstance(exc, (zlib.error, gzip.BadGzipFile)):
        return FileFailure(f"gzip stream is truncated or corrupt ({exc}){before}")
    if isinstance(exc, zstandard.ZstdError):
        return FileFailure(f"zstd stream is truncated or corrupt ({exc}){before}")
    return FileFailure(f"cannot read the file ({getattr(exc, 'strerror', None) or exc})")


def _size(path: Location) -> int:
    return size_of(path)


def _read_parquet(path: Location, columns: list[str], counter: ByteCounter, max_line_bytes: int,
                  only: list[int] | None = None) -> Iterator[Item]:
    """Rows in batches bounded by bytes, not rows, each row measured before it becomes Python objects
    (parquet_rows.py: a few KB of Parquet can decode to gigabytes)."""
    import pyarrow  # heavy; only a Parquet corpus pays for it
    import pyarrow.parquet as pq

    from hpcsynth.corpus.parquet_rows import (SLICE_BYTES, bounded, holds_dictionary, leaves, python_values, row_bytes,
                                              rows_per_batch)

    row = 0
    source = None
    try:
        source = open_binary(path) if is_remote(path) else None  # a local file: Arrow's own reads, memory-mapped
        parquet = pq.ParquetFile(source or path)
        names = parquet.schema_arrow.names
        if columns[0] not in names:
            yield 0, None, FileFailure(f"no column {columns[0]!r} (plan.text_key); the file has: {', '.join(names)}")
            return
        wanted = [c for c in dict.fromkeys(columns) if c in names]
        metadata, chunks = parquet.metadata, leaves(parquet.schema, wanted)
        dictionaries = any(holds_dictionary(field.type) for field in parquet.schema_arrow if field.name in wanted)
        small = min(max_line_bytes, SLICE_BYTES)
        size, groups = size_of(path), max(parquet.num_row_groups, 1)
        # The dictionary pages' headers are read from the file: for an object, through Arrow's own handle, whose
        # read-ahead then holds the column chunk Arrow reads next (a handle of their own fetched a block of
        # the object per header: 1.7x the object's bytes, measured with tools/bench_s3.py).
        with (contextlib.nullcontext(source) if source is not None else open_binary(path)) as headers:
            for group in range(parquet.num_row_groups):
                if only is not None and group not in only:
                    row += metadata.row_group(group).num_rows
                    continue
                rows = rows_per_batch(metadata.row_group(group), chunks, _reader_at(headers))
                # one thread: the planner runs a process per core, and small batches cost a hand-off each
                for batch in parquet.iter_batches(rows, row_groups=[group], columns=wanted, use_threads=False):
                    # Arrow's buffers hold at least what the rows decode to, but a dictionary holds each entry once
                    if dictionaries or batch.get_total_buffer_size() > small:
                        sizes = row_bytes(batch)
                        if batch.num_rows and (sizes.max() > max_line_bytes or sizes.sum() > SLICE_BYTES):
                            yield from bounded(batch, sizes, row, group, max_line_bytes)  # rare: no hot path
                            row += batch.num_rows
                            continue
                    names = batch.schema.names
                    for values in zip(*(python_values(column) for column in batch.columns)):
                        yield row, dict(zip(names, values)), ""
                        row += 1
                counter.done += size // groups
    except (pyarrow.ArrowException, OSError, UnicodeDecodeError, InputError) as exc:
        if isinstance(exc, InputError):  # an object changed or refused since it was listed: the line says which
            yield row, None, FileFailure(str(exc))
        elif isinstance(exc, PermissionError):
            yield row, None, _file_reason(path, exc)
        else:
            yield row, None, FileFailure(f"not a readable Parquet file ({str(exc).splitlines()[0][:200]})")
    finally:
        if source is not None:
            source.close()


def _reader_at(handle: Any) -> Any:
    """read_at(size, offset) over a file: one pread of a local file, a seek and a read of an object."""
    if isinstance(handle, io.FileIO):
        fd = handle.fileno()
        return lambda size, offset: os.pread(fd, size, offset)

    def read_at(size: int, offset: int) -> bytes:
        handle.seek(offset)
        return handle.read(size)

    return read_at
