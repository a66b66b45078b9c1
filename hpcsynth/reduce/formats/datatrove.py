"""Writer for datatrove's / nanotron's tokenized format: PREFIX.ds + PREFIX.ds.index + PREFIX.ds.metadata.

.ds is the tokens back to back (uint16 while the vocabulary fits in 65,536 ids, else uint32), .ds.index
each document's end as a cumulative token count (uint64, no leading 0), .ds.metadata three lines:
`TOKENIZER|TOKEN_SIZE`, the token count, the count in words. Read with
datatrove.utils.dataset.DatatroveFolderDataset(folder, seq_len, token_size=...).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from hpcsynth.files import open_write_nofollow
from hpcsynth.reduce.formats.megatron import with_suffix


def ds_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= 65536 else np.uint32


class DatatroveWriter:
    suffixes = (".ds", ".ds.index", ".ds.metadata")

    def __init__(self, prefix: Path, vocab_size: int, tokenizer_name: str) -> None:
        self.prefix = Path(prefix)
        self.dtype = ds_dtype(vocab_size)
        self.tokenizer_name = tokenizer_name
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = {s: with_suffix(self.prefix, s + ".tmp") for s in self.suffixes}
        # As megatron.py: a temporary planted as a symlink is refused, never written through.
        self._data = open_write_nofollow(self._tmp[".ds"], directory_too=False)
        self._index = open_write_nofollow(self._tmp[".ds.index"], directory_too=False)
        self.sequences = 0
        self.tokens = 0

    @property
    def bytes_written(self) -> int:
        return self.tokens * np.dtype(self.dtype).itemsize

    def add(self, tokens: np.ndarray) -> None:
        array: np.ndarray = np.asarray(tokens, dtype=self.dtype)
        self._data.write(array.tobytes())
        self.tokens += len(array)
        self.sequences += 1
        self._index.write(struct.pack("<Q", self.tokens))

    def finish(self) -> list[Path]:
        size = np.dtype(self.dtype).itemsize
        text = f"{self.tokenizer_name}|{size}\n{self.tokens}\n{_words(self.tokens)}"
        with open_write_nofollow(self._tmp[".ds.metadata"], directory_too=False) as handle:
            handle.write(text.encode("utf-8"))
        for handle in (self._data, self._index):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        paths = []
        for suffix in self.suffixes:  # .ds first, the metadata last: its presence means the set is whole
            path = with_suffix(self.prefix, suffix)
            os.replace(self._tmp[suffix], path)
            paths.append(path)
        return paths

    def abort(self) -> None:
        self._data.close()
        self._index.close()
        for path in self._tmp.values():
            path.unlink(missing_ok=True)


def _words(count: int) -> str:
    for unit, scale in (("GT", 1e9), ("MT", 1e6), ("kT", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} T"


def read_ds(prefix: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(tokens, document ends, metadata text) of a .ds set, for verify and tests."""
    prefix = Path(prefix)
    meta = with_suffix(prefix, ".ds.metadata").read_text(encoding="utf-8")
    size = int(meta.splitlines()[0].rsplit("|", 1)[1])
    tokens = np.memmap(with_suffix(prefix, ".ds"), dtype=np.uint16 if size == 2 else np.uint32, mode="r")
    ends = np.fromfile(with_suffix(prefix, ".ds.index"), dtype="<u8")
    return tokens, ends, meta
