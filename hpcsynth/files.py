"""Reading and writing the run directory's files: zstd JSONL, atomic JSON, checksums.

Every stage writes through these helpers, so that whatever a crash leaves behind is either the old
file or the new one, never half of one (temp file + fsync + rename).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

import orjson
import zstandard

from hpcsynth.errors import RunError

# Files we create get what the user's umask leaves of rw for all, as open() would give them: 0644 under
# umask 022, 0664 under a team's 002 (a fixed 0o644 here overrode that).
FILE_MODE = 0o666
# Independent ~4 MiB frames: <1% larger than one frame, and a reader can seek between them.
FRAME_BYTES = 4 << 20


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data to path so that readers see the old file or the whole new one."""
    atomic_write_chunks(path, (data,))


def atomic_write_chunks(path: Path, chunks: Iterable[bytes]) -> None:
    """atomic_write_bytes for data that comes in pieces: each is written as it comes, so a file larger
    than memory is never held whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file next to path, with the mode a plain open() would give (0644 under umask 022):
    mkstemp makes it 0600, which would leave the run unreadable to a team or a training job under
    another account once it is renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (os.umask can only swap it,
    which would race with other threads creating files)."""
    try:
        with open("/proc/self/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def read_json(path: Path) -> Any:
    return orjson.loads(read_regular(path))


# Past any manifest a real campaign writes (~400 bytes a shard); a sparse file costs nothing to plant.
MAX_READ_BYTES = 1 << 30


def open_regular(path: Path | str, max_bytes: int | None = MAX_READ_BYTES, follow: bool = False) -> BinaryIO:
    """The one way to open a run file for reading: a regular file, or OSError naming it.

    Every command reads the run directory this way (tests/test_run_files_planted.py plants a link, a FIFO,
    /dev/zero and a sparse giant at each of its paths). O_NOFOLLOW: a symlink planted as the file (to a
    secret, to /dev/zero) is refused, never followed. O_NONBLOCK: a FIFO planted as one (a done marker,
    grid.json, a task clock) would otherwise hang status, estimate or launch on open(). max_bytes: a file
    read whole is bounded (a sparse giant would otherwise be read whole; OSError EFBIG instead); None for a
    file read as a stream. os, not pathlib: status reads 10^5 markers this way, and building Path objects
    was a third of its time. follow: for a file the user names (a tokenizer in a hub cache is a link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symbolic link where hpcsynth keeps a file of its own (never followed)",
                          str(path)) from None
        raise
    handle = os.fdopen(fd, "rb")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if max_bytes is not None and info.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"larger than {max_bytes:,} bytes", str(path))
    except BaseException:
        handle.close()
        raise
    return handle


def read_regular(path: Path | str, max_bytes: int = MAX_READ_BYTES) -> bytes:
    """A regular run file's bytes, at most max_bytes (open_regular); OSError for anything else."""
    with open_regular(path, max_bytes) as handle:
        return handle.read()  # not read(max_bytes + 1): that allocates the whole bound up front


def read_tail(path: Path, max_bytes: int) -> bytes:
    """The last max_bytes of a regular file, refusing a symlink as the file or as its directory (OSError,
    or RunError for a link). For logs whose end a command prints: a link planted as one (to a secret) is
    never followed, a FIFO never blocks (O_NONBLOCK), and a device or a sparse giant is never read whole."""
    fd = _open_nofollow(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return os.pread(fd, min(max_bytes, info.st_size), max(0, info.st_size - max_bytes))
    finally:
        os.close(fd)


def open_append_nofollow(path: Path, text: bool = False) -> IO[Any]:
    """Open a run-directory file for appending (created if missing), refusing symlinks.

    A symlink planted as the file (RUN/work/ID/records.jsonl -> a file elsewhere) or as its directory
    would make us write outside the run; O_NOFOLLOW turns that into an error instead.
    """
    fd = _open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "a", encoding="utf-8") if text else os.fdopen(fd, "ab")


def open_write_nofollow(path: Path, directory_too: bool = True) -> IO[bytes]:
    """Open a run-directory file for writing from empty; a symlink is refused before anything is cut.

    directory_too=False lets the directory be a link (a user's --out pointing at another disk) while the
    file itself still may not be one.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if not directory_too:
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, FILE_MODE)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a FIFO nobody reads
                raise OSError(errno.EINVAL, "not a regular file", str(path)) from None
            raise _symlink_error(Path(path), exc) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "wb")
    return os.fdopen(_open_nofollow(path, flags), "wb")


def truncate_nofollow(path: Path, size: int) -> None:
    fd = _open_nofollow(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def read_bytes_nofollow(path: Path) -> bytes:
    fd = _open_nofollow(path, os.O_RDONLY)
    try:
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    except OSError as exc:  # raised on the descriptor: name the file (a directory there, EIO), not "5"
        raise _named(exc, path) from None
    finally:
        os.close(fd)


def _open_nofollow(path: Path, flags: int) -> int:
    """A descriptor for the regular file at path, refusing a symlink as the file itself or as the directory
    holding it, and anything but a regular file there (a FIFO planted as a log would block the open for
    ever: O_NONBLOCK, then the check)."""
    path = Path(path)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _symlink_error(path.parent, exc) from None
    try:
        fd = os.open(path.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads, opened for writing without blocking
            raise OSError(errno.EINVAL, "not a regular file", str(path)) from None
        raise _symlink_error(path, exc) from None
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return fd


def _symlink_error(path: Path, exc: OSError) -> OSError | RunError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and path.is_symlink():
        return RunError(f"{path} is a symbolic link; hpcsynth writes only real files inside the run directory, "
                        f"so remove the link (and check who made it)")
    return _named(exc, path)


def _named(exc: OSError, path: Path) -> OSError:
    """The same error (OSError picks the subclass from errno) naming the whole path: opened relative to
    its directory's descriptor, or read through a descriptor, it would name only the file or the fd."""
    return OSError(exc.errno, exc.strerror, str(path)) if exc.errno else exc


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is; some filesystems refuse, which is fine.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_jsonl_zst(path: Path, records: Iterable[dict], level: int = 3) -> tuple[int, str]:
    """Atomically write records as zstd JSONL; return (count, sha256 of the compressed file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    count = 0
    digest = hashlib.sha256()
    # Content checksums: a reader detects a flipped bit inside a frame, not just a cut file.
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    try:
        with os.fdopen(fd, "wb") as handle:
            frame: list[bytes] = []
            size = 0
            for record in records:
                line = orjson.dumps(record) + b"\n"
                frame.append(line)
                size += len(line)
                count += 1
                if size >= FRAME_BYTES:
                    _write_frame(handle, compressor, frame, digest)
                    frame, size = [], 0
            if frame or count == 0:
                _write_frame(handle, compressor, frame, digest)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return count, digest.hexdigest()


def _write_frame(handle: Any, compressor: zstandard.ZstdCompressor, lines: list[bytes], digest: Any) -> None:
    blob = compressor.compress(b"".join(lines))
    digest.update(blob)
    handle.write(blob)


def read_jsonl_zst(path: Path, fix: str = "restore it, or make it again") -> Iterator[dict]:
    """Records of a zstd JSONL file written by this project (all frames, via a stream reader). A file that
    is not one (damaged, cut, replaced by a link or a FIFO) is a RunError naming it and `fix`."""
    try:
        with open_regular(path, None) as raw:
            yield from jsonl_zst_records(raw)
    except (OSError, ValueError, zstandard.ZstdError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:200]
        raise RunError(f"{path} cannot be read ({reason}); {fix}") from None


def jsonl_zst_records(raw: Any) -> Iterator[dict]:
    """Records from a binary file object holding zstd JSONL; zstandard.ZstdError when the bytes are damaged."""
    for line in zstd_stream(raw):
        if line.strip():
            yield orjson.loads(line)


ZSTD_MAGIC = 0xFD2FB528


def zstd_cut_at(raw: Any) -> int | None:
    """Where a seekable zstd file stops making sense: None when it ends exactly after a whole frame.

    zstandard's stream reader returns what it has when a file is cut inside a frame, without an error,
    so a cut file would read as a shorter one. Walking the frame and block headers (reading a few bytes
    per 128 KiB block, seeking over the rest) finds a cut without decompressing anything.
    """
    size = raw.seek(0, 2)
    at = 0
    while at < size:
        raw.seek(at)
        head = raw.read(4)
        if len(head) < 4:
            return at
        magic = int.from_bytes(head, "little")
        if 0x184D2A50 <= magic <= 0x184D2A5F:  # a skippable frame: magic, 4-byte size, content
            length = raw.read(4)
            if len(length) < 4:
                return at
            end = at + 8 + int.from_bytes(length, "little")
            if end > size:  # its content is cut
                return at
            at = end
            continue
        if magic != ZSTD_MAGIC:
            return at
        descriptor = raw.read(1)
        if not descriptor:
            return at
        flags = descriptor[0]
        single_segment = (flags >> 5) & 1
        header = 4 + 1 + (0 if single_segment else 1) + (0, 1, 2, 4)[flags & 3] + \
            ((1 if single_segment else 0), 2, 4, 8)[flags >> 6]
        block = at + header
        while True:
            raw.seek(block)
            head3 = raw.read(3)
            if len(head3) < 3:
                return at
            value = int.from_bytes(head3, "little")
            kind, length = (value >> 1) & 3, value >> 3
            block += 3 + (1 if kind == 1 else length)  # an RLE block stores its byte once
            if block > size:
                return at
            if value & 1:
                break
        end = block + (4 if (flags >> 2) & 1 else 0)
        if end > size:  # the checksum after the last block is cut
            return at
        at = end
    return None if at == size else at


class ZstdFrameWalk:
    """A zstd file's bytes passed through unchanged while its frame and block headers are followed, so that a
    file cut inside a frame (which zstandard's stream reader ends quietly) fails at its end with ZstdError,
    without zstd_cut_at's pass over the file first: each byte is read once. For an object in a bucket that
    pass would be a second download (a block header every 128 KiB: every range of the object)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.at = 0  # bytes followed so far
        self.frame = 0  # where the frame being read started
        self.state, self.need, self.header, self.skip, self.checksum = "magic", 4, bytearray(), 0, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            self._follow(memoryview(data))
        elif self.state != "magic" or self.header or self.skip:
            raise zstandard.ZstdError(f"the file is cut short or damaged inside the zstd frame at byte {self.frame}")
        return data

    def _follow(self, data: memoryview) -> None:
        i = 0
        while i < len(data):
            if self.skip:  # block contents, a skippable frame, a checksum: counted, not looked at
                taken = min(self.skip, len(data) - i)
                self.skip -= taken
                i += taken
                continue
            taken = min(self.need - len(self.header), len(data) - i)
            if not self.header and self.state == "magic":
                self.frame = self.at + i
            self.header += data[i:i + taken]
            i += taken
            if len(self.header) == self.need:
                self._header(bytes(self.header))
                self.header.clear()
        self.at += len(data)

    def _header(self, head: bytes) -> None:
        value = int.from_bytes(head, "little")
        if self.state == "magic":
            if 0x184D2A50 <= value <= 0x184D2A5F:  # a skippable frame: its 4-byte size, then its content
                self.state, self.need = "skippable", 4
            elif value == ZSTD_MAGIC:
                self.state, self.need = "descriptor", 1
            else:
                raise zstandard.ZstdError(f"the file is cut short or damaged inside the zstd frame at byte {self.frame}")
        elif self.state == "skippable":
            self.state, self.need, self.skip = "magic", 4, value
        elif self.state == "descriptor":  # window, dictionary id and content size: skipped, as zstd_cut_at does
            single = (value >> 5) & 1
            self.skip = (0 if single else 1) + (0, 1, 2, 4)[value & 3] + ((1 if single else 0), 2, 4, 8)[value >> 6]
            self.checksum = 4 if (value >> 2) & 1 else 0
            self.state, self.need = "block", 3
        else:  # a block header: its kind, its size, whether it is the frame's last
            kind, length = (value >> 1) & 3, value >> 3
            if kind == 3:
                raise zstandard.ZstdError(f"the file is cut short or damaged inside the zstd frame at byte {self.frame}")
            self.skip = 1 if kind == 1 else length  # an RLE block stores its byte once
            if value & 1:
                self.skip += self.checksum
                self.state, self.need = "magic", 4


def zstd_stream(raw: Any) -> Any:
    """A bounded-memory binary stream of zstd data across frames; ZstdError when it is cut in a frame."""
    cut = zstd_cut_at(raw)
    if cut is not None:
        raise zstandard.ZstdError(f"the file is cut short or damaged inside the zstd frame at byte {cut}")
    raw.seek(0)
    # decompress() on a multi-frame file would silently return only the first frame.
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return io.BufferedReader(reader, buffer_size=1 << 20)


def sha256_file(path: Path, follow: bool = False) -> str:
    """The sha256 of a run file (of a file the user names, with follow=True), read as a stream."""
    digest = hashlib.sha256()
    with open_regular(path, None, follow) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()




def bounded_lines(stream: BinaryIO, limit: int) -> Iterator[bytes | None]:
    """The lines of a binary stream, each at most `limit` bytes (newline included); None stands for a
    longer line, which is read past in 1 MiB pieces and never held."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit:
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = stream.readline(1 << 20)
        yield None
