"""Parquet rows bounded like JSONL lines: how many rows a batch may hold, what each row decodes to, and
which runs of rows become Python objects together, all decided before a row does (readers.py reads).

A Parquet file of a few KB can be a decompression bomb in two ways (issue 21):
- one huge plain value (300 MB of one byte, zstd): the row group's metadata counts it (its column chunks'
  uncompressed sizes), and the batch shrinks, down to one row;
- one big dictionary entry referenced by every row (a 20 MiB string stored once; 1,024 rows of it are
  20 GiB once each row is a string of its own): the metadata counts the entry once, so the decoded size of
  each column chunk's dictionary page, the most one row can take from it, is read from the page's header,
  and a batch holds at most BATCH_BYTES / that many rows.
Each batch's rows are then measured on the Arrow arrays (string offsets, a dictionary's through its
indices); a row past `plan.max_line_bytes` is a counted reject and never becomes a Python object, and the
others become Python objects in runs of at most SLICE_BYTES.

Memory held: one decoded batch (BATCH_BYTES by these bounds, or one page, which Arrow decodes whole) and one
run of Python rows (SLICE_BYTES, or one row of up to `plan.max_line_bytes`). Not bounded: how many values a
row of a list column holds (known only once decoded), and a file whose metadata lies about its pages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

BATCH_ROWS = 1024  # the most rows of a batch: its Python strings then stay in cache (docs/benchmarks.md)
# What one batch may decode to by the bounds above, as a JSONL line may (plan.max_line_bytes). Ordinary rows
# are far below it (1,024 rows of ~5 KB); pyarrow's dictionary page of the first 1,024 such documents (~5 MB)
# allows 13 rows a batch: read on one thread, such batches cost the planner no more CPU than 1,024-row ones
# did on Arrow's thread pool (docs/benchmarks.md). Arrow may hold twice this while it decodes (its buffers grow
# by doubling).
BATCH_BYTES = 64 << 20
SLICE_BYTES = 64 << 20  # the most decoded bytes turned into Python objects at once (one row may be more)
DICTIONARY_PAGE = 2  # parquet.thrift PageType
DICTIONARY_ENCODINGS = {"PLAIN_DICTIONARY", "RLE_DICTIONARY"}

ReadAt = Callable[[int, int], bytes]  # (size, offset) -> bytes of the file
Leaf = tuple[int, Any]  # a leaf column's index in the file's schema, and its pyarrow.parquet.ColumnSchema


def leaves(schema: Any, columns: list[str]) -> list[Leaf]:
    """The leaf columns (a struct's fields, a list's values) of these top-level columns."""
    found = []
    for index in range(len(schema)):
        leaf = schema.column(index)
        if any(leaf.path == name or leaf.path.startswith(name + ".") for name in columns):
            found.append((index, leaf))
    return found


def rows_per_batch(group: Any, wanted: list[Leaf], read_at: ReadAt) -> int:
    """Rows a batch of this row group (its RowGroupMetaData) may hold: BATCH_BYTES over the most a row can
    decode to, judged by the metadata and the dictionary pages' headers (read_at(size, offset) reads the
    file's bytes: a pread of a local file, a ranged read of an object in a bucket)."""
    rows = max(group.num_rows, 1)
    row_bytes = 0.0
    for index, leaf in wanted:
        chunk = group.column(index)
        row_bytes += chunk.total_uncompressed_size / rows  # plain values, spread evenly: what the metadata says
        per_row = max(chunk.num_values / rows, 1.0)  # values of a list column in a row: on average only
        if leaf.physical_type == "FIXED_LEN_BYTE_ARRAY":
            row_bytes += (leaf.length or 0) * per_row  # a dictionary of them decodes each to its full length
        elif leaf.physical_type == "BYTE_ARRAY":
            row_bytes += _dictionary_bytes(chunk, read_at) * per_row
    return max(1, min(BATCH_ROWS, int(BATCH_BYTES // max(row_bytes, 1.0))))


def _dictionary_bytes(chunk: Any, read_at: ReadAt) -> int:
    """The decoded size of a column chunk's dictionary page (0 without one): the most that one value read
    through it can be. Read from the header of the chunk's first page (Thrift compact: the required fields
    1-3, type, uncompressed_page_size and compressed_page_size, come first, each an i32); a header that does
    not read so, or a chunk whose encodings name a dictionary its first page is not, counts as the chunk's
    whole uncompressed size, the most the metadata allows."""
    worst = chunk.total_uncompressed_size
    try:
        start = chunk.data_page_offset
        if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
            start = chunk.dictionary_page_offset
        header = read_at(24, start)
    except (OSError, OverflowError, TypeError):
        return worst
    fields: list[int] = []
    at = 0
    while len(fields) < 3:
        if at >= len(header) or header[at] != 0x15:  # field id +1, type i32
            return worst
        value = shift = 0
        at += 1
        while at < len(header) and shift < 35:
            byte = header[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        else:
            return worst
        fields.append((value >> 1) ^ -(value & 1))  # zigzag
    if fields[0] == DICTIONARY_PAGE:
        return max(fields[1], 0)
    return worst if DICTIONARY_ENCODINGS & set(chunk.encodings) else 0


def holds_dictionary(kind: Any) -> bool:
    """Whether an Arrow type is, or nests, a dictionary: Parquet written from one reads back as one."""
    if pa.types.is_dictionary(kind):
        return True
    return any(holds_dictionary(kind.field(i).type) for i in range(getattr(kind, "num_fields", 0)))


def row_bytes(batch: Any) -> np.ndarray:
    """What each row of a record batch decodes to: its strings' bytes and its numbers' widths."""
    sizes = np.zeros(batch.num_rows, np.int64)
    for column in batch.columns:
        sizes += _value_bytes(column)
    return sizes


def _value_bytes(array: Any) -> np.ndarray:
    kind, count = array.type, len(array)
    if pa.types.is_dictionary(kind):  # a column written from an Arrow dictionary reads back as one
        indices = array.indices.fill_null(0).to_numpy()
        values = array.dictionary
        # the referenced entries only: a dictionary may hold a whole row group's values
        sizes = _lengths(values, indices) if _has_offsets(values.type) else _value_bytes(values)[indices]
        if array.null_count:
            sizes = np.where(array.is_valid().to_numpy(zero_copy_only=False), sizes, 0)
        return sizes
    if _has_offsets(kind):
        return _lengths(array)
    if pa.types.is_struct(kind):
        total = np.zeros(count, np.int64)
        for field in range(kind.num_fields):
            total += _value_bytes(array.field(field))
        return total
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        within = np.concatenate(([0], np.cumsum(_value_bytes(array.values))))
        ends = _offsets(array)
        return within[ends[1:]] - within[ends[:-1]]
    if pa.types.is_fixed_size_binary(kind):
        return np.full(count, kind.byte_width, np.int64)
    try:
        return np.full(count, (kind.bit_width + 7) // 8, np.int64)
    except ValueError:  # another nested or variable type (union, list view): its buffers spread evenly
        return np.full(count, array.get_total_buffer_size() // max(count, 1), np.int64)


def _has_offsets(kind: Any) -> bool:
    return pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_string(kind) \
        or pa.types.is_large_binary(kind)


def _offsets(array: Any) -> np.ndarray:
    """The offsets buffer of a string, binary or list array, as this (maybe sliced) array sees it."""
    large = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type) \
        or pa.types.is_large_list(array.type)
    buffer = array.buffers()[1]
    if buffer is None:
        return np.zeros(len(array) + 1, np.int64)
    return np.frombuffer(buffer, np.int64 if large else np.int32)[array.offset:array.offset + len(array) + 1]


def _lengths(array: Any, indices: np.ndarray | None = None) -> np.ndarray:
    ends = _offsets(array).astype(np.int64)
    if indices is None:
        return np.diff(ends)
    return ends[indices + 1] - ends[indices]


def bounded(batch: Any, sizes: np.ndarray, first: int, group: int,
            limit: int) -> Iterator[tuple[int, dict | None, str]]:
    """The rows of a batch that holds a row past `limit` or more than SLICE_BYTES, numbered from `first`:
    the others turned into Python objects a run at a time, those past `limit` never (a reject each)."""
    names = batch.schema.names
    for start, stop, big in runs(sizes, limit):
        if big:
            yield first + start, None, (f"row larger than plan.max_line_bytes={limit:,} ({big:,} bytes decoded, in "
                                        f"row group {group}: a decompression bomb, or raise the limit)")
            continue
        part = batch.slice(start, stop - start)
        for row, values in enumerate(zip(*(python_values(column) for column in part.columns)), first + start):
            yield row, dict(zip(names, values)), ""


def runs(sizes: np.ndarray, limit: int) -> Iterator[tuple[int, int, int]]:
    """The rows of a batch as (start, stop, 0): runs to turn into Python objects together, at most
    SLICE_BYTES each (or one row); and (row, row + 1, size) for a row past `limit`."""
    start = held = 0
    for row, size in enumerate(sizes.tolist()):
        if size > limit:
            if row > start:
                yield start, row, 0
            yield row, row + 1, size
            start, held = row + 1, 0
        elif held + size > SLICE_BYTES and row > start:
            yield start, row, 0
            start, held = row, size
        else:
            held += size
    if start < len(sizes):
        yield start, len(sizes), 0


def python_values(array: Any) -> list:
    """A column as Python objects; a dictionary column's entries copied per row (only this slice's)."""
    if pa.types.is_dictionary(array.type):
        return array.dictionary_decode().to_pylist()
    return array.to_pylist()
