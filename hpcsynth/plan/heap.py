"""Keep freed memory in the process while planning, instead of handing it back to the kernel.

A plan allocates and frees the same few sizes for every frame and group: 4 MB frame buffers, zstd's output,
orjson's documents, a group's held lines in a pool worker. glibc's defaults give the top of the heap back
as soon as 128 KB of it is free (and map big blocks afresh each time), so every frame faults its pages in
again: ~1 page fault per 1.4 KB planned, about half of the planner's system time. Raising the trim and
mmap thresholds keeps those pages for the next frame; peak memory is unchanged (pages are only counted
once touched), and nothing else in the process depends on the heap being trimmed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's <malloc.h>
KEEP_BYTES = 256 << 20  # free memory at the top of the heap kept for reuse
MMAP_BYTES = 64 << 20  # blocks below this come from the heap (reused), not a fresh mapping each time
PAD_BYTES = 16 << 20  # the heap grows in steps of this, not page by page


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc's malloc for this process (and the pool workers it forks); False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: their allocators have no such knobs
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in (
        (M_MMAP_THRESHOLD, MMAP_BYTES), (M_TRIM_THRESHOLD, KEEP_BYTES), (M_TOP_PAD, PAD_BYTES)))
