"""files.ZstdFrameWalk (the cut check of a zstd object read once, as from a bucket) against zstd_cut_at (the
seeking check of a local file): for every cut of multi-frame files, with skippable frames, checksums, RLE and
raw blocks, the two agree on whether and where the file is cut, and the walk passes every byte through."""

from __future__ import annotations

import io
import random

import pytest
import zstandard

from hpcsynth.files import ZstdFrameWalk, zstd_cut_at


def sample(seed: int) -> bytes:
    rng = random.Random(seed)
    parts = []
    for frame in range(rng.randint(1, 4)):
        kind = rng.choice(["text", "zeros", "random"])
        size = rng.randint(0, 300_000)
        data = (b"the harbor keeps a ledger " * (size // 26 + 1))[:size] if kind == "text" else \
            bytes(size) if kind == "zeros" else rng.randbytes(size)
        params = {"write_checksum": rng.random() < 0.5, "write_content_size": rng.random() < 0.5}
        parts.append(zstandard.ZstdCompressor(level=rng.choice([1, 3, 19]), **params).compress(data))
        if rng.random() < 0.3:  # a skippable frame between frames
            parts.append((0x184D2A50 + rng.randint(0, 15)).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello")
    return b"".join(parts)


def walk(data: bytes, chunk: int) -> tuple[bytes, str | None]:
    walker = ZstdFrameWalk(io.BytesIO(data))
    out = bytearray()
    try:
        while block := walker.read(chunk):
            out += block
    except zstandard.ZstdError as exc:
        return bytes(out), str(exc)
    return bytes(out), None


@pytest.mark.parametrize("seed", range(12))
def test_the_walk_agrees_with_the_seeking_check_at_every_kind_of_cut(seed: int) -> None:
    data = sample(seed)
    rng = random.Random(seed)
    cuts = sorted({len(data), *(rng.randint(0, len(data)) for _ in range(40)), 1, 4, 5, 8, len(data) - 1})
    for cut in cuts:
        piece = data[:max(0, cut)]
        expected = zstd_cut_at(io.BytesIO(piece))
        passed, error = walk(piece, rng.choice([1, 7, 4096, 1 << 20]))
        assert passed == piece[:len(passed)]
        if expected is None:
            assert error is None, (seed, cut, error)
            assert passed == piece
        else:
            assert error is not None and f"at byte {expected}" in error, (seed, cut, expected, error)


def test_a_whole_file_decompresses_through_the_walk_as_without_it() -> None:
    data = sample(3)
    reader = zstandard.ZstdDecompressor().stream_reader(ZstdFrameWalk(io.BytesIO(data)), read_across_frames=True)
    plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    assert reader.read() == plain.read()


def test_data_that_is_not_zstd_is_refused_at_its_first_byte() -> None:
    assert "at byte 0" in (walk(b"not zstd at all", 4)[1] or "")
