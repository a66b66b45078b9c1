"""Is a reduce part whole? Checked before a done part is reused or merged (spec.ReduceSpec.part_done).

A part's files can be damaged after its done marker was written: a disk filling, a copy cut short, a
hand edit, another tool. The merge trusts their shapes (it slices .bin by .bounds.npy, indexes the
mix sources by .src.npy, shifts .keys.npy as uint64), so a wrong dtype, a cut array, an out-of-range
source or a cut .docs.jsonl would end in a traceback or, worse, in wrong files. Every such damage
found here makes the part be redone instead; reading is bounded by one part (its per-document arrays,
a few bytes per document), never the run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcsynth.reduce.marker import PartMarker

# Per-document arrays: the dtype parts.py writes them with.
DOC_ARRAYS = ((".lens.npy", np.int32), (".keys.npy", np.uint64), (".src.npy", np.uint8))


def part_is_whole(spec: Any, index: int, marker: PartMarker) -> bool:
    """True when the marker (its types checked as it was read, marker.py) and every file of the part
    agree with each other and with the spec."""
    if len(marker.mix) != len(spec.mix["sources"]):
        return False
    documents, tokens = marker.documents, marker.tokens
    itemsize = 2 if spec.tokenizer["vocab_size"] <= 65536 else 4
    if spec.part_path(index, ".bin").stat().st_size != tokens * itemsize:
        return False
    if spec.text_export and not spec.part_path(index, ".parquet").is_file():
        return False
    arrays = {}
    for suffix, dtype in DOC_ARRAYS:
        array = np.load(spec.part_path(index, suffix), mmap_mode="r", allow_pickle=False)
        if array.dtype != dtype or array.ndim != 1 or len(array) != documents:
            return False
        arrays[suffix] = array
    if documents and int(np.asarray(arrays[".src.npy"]).max()) >= len(spec.mix["sources"]):
        return False
    lens = np.asarray(arrays[".lens.npy"])
    if int(lens.sum(dtype=np.int64)) != tokens or (documents and int(lens.min()) < 1):
        return False
    bounds = np.load(spec.part_path(index, ".bounds.npy"), allow_pickle=False)
    if bounds.dtype != np.int64 or bounds.shape != (3, spec.buckets + 1) or bounds[:, 0].any():
        return False
    if (np.diff(bounds, axis=1) < 0).any() or bounds[0, -1] != documents or bounds[1, -1] != tokens:
        return False
    if spec.part_path(index, ".docs.jsonl").stat().st_size != bounds[2, -1]:
        return False
    return spec.part_path(index, ".rejects.jsonl").is_file()
