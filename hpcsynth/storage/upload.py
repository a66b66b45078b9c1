"""A reduce's output to a bucket, and back for `verify`: the last step of `reduce --out s3://...`.

The reduce writes into a local folder first (RUN/reduce-s3/NAME: the merge seeks and renames, which an
object store cannot), then every file of it but the tokenized parts goes up, the report last: a prefix
that holds report.json holds everything the report lists. Each object carries its sha256 in its metadata
(x-amz-meta-sha256); botocore also sends a CRC of every request's body, which the server checks before it
stores anything. Uploading again skips each object already there with the same size and sha256, so an
interrupted upload resumes where it stopped, and sends again one that is partial or different.

`verify s3://...` downloads the objects into a temporary folder and runs the same checks as on a local
output; the folder needs room for the output (TMPDIR).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from hpcsynth.errors import InputError
from hpcsynth.files import open_regular, read_regular
from hpcsynth.storage.s3 import filesystem, one_line

LEFT_LOCAL = ("parts",)  # tokenized parts: the merge's input, kept in the staging folder for a re-mix
LAST = ("report.json", "report-partial.json")
REPORT_BYTES = 64 << 20  # a report read back from a bucket: ours are kilobytes; a larger one is not ours
UPLOAD_BLOCK = 64 << 20  # bytes per multipart part, at least; S3 takes at most 10,000 parts (block_size below)
MAX_PARTS = 9_000  # written last: the report makes a remote output count


@dataclass
class Uploaded:
    files: int = 0  # sent now
    skipped: int = 0  # already there, whole
    bytes: int = 0  # sent now


def upload_dir(local: Path, url: str, before_each: Callable[[str], None] | None = None) -> Uploaded:
    """Every file below `local` (but parts/) to url/RELATIVE_PATH, the reports last; returns what was sent.
    `before_each(relative path)` is called before each upload (tests interrupt there)."""
    done = Uploaded()
    fs = filesystem()
    base = url.rstrip("/")
    with one_line(url, "reduce --out"):
        fs.call_s3("list_objects_v2", Bucket=base[len("s3://"):].split("/", 1)[0], MaxKeys=1)
        ours = _fingerprint(orjson.loads(read_regular(local / name)) for name in LAST if (local / name).is_file())
        _not_another_runs(fs, url, ours)
        for relative in _files(local):
            target = f"{base}/{relative}"[len("s3://"):]
            # One descriptor for the checksum and the upload, opened without following a link: a file swapped
            # for a link to a secret between the listing and the upload is refused, not sent to the bucket.
            with open_regular(local / relative, max_bytes=None) as handle:
                size, digest = os.fstat(handle.fileno()).st_size, _sha256(handle)
                if _whole(fs, target, size, digest):
                    done.skipped += 1
                    continue
                if before_each is not None:
                    before_each(relative)
                handle.seek(0)
                with fs.open(target, "wb", block_size=max(UPLOAD_BLOCK, -(-size // MAX_PARTS)),
                             Metadata={"sha256": digest}) as remote:
                    shutil.copyfileobj(handle, remote, 8 << 20)
            if not _whole(fs, target, size, digest):
                raise InputError(f"reduce --out {url}: {relative} did not arrive whole (size or sha256 differs "
                                 f"after the upload); run the same reduce again to send it again")
            done.files += 1
            done.bytes += size
    return done


def check_prefix(url: str, fingerprint: str) -> None:
    """Before a reduce into `url` starts: InputError when the prefix holds another run's output (below)."""
    with one_line(url, "reduce --out"):
        _not_another_runs(filesystem(), url, fingerprint)


def _not_another_runs(fs: Any, url: str, ours: str) -> None:
    """Refuse a prefix whose report names another run (its fingerprint): its files and ours would mix, which a
    local --out cannot do (one reduce lock per folder; each run stages in a folder of its own). The same run
    (a re-mix under other reduce settings) replaces its own output, as locally. Checked before the reduce
    starts and again before the upload (another run's upload may have ended meanwhile)."""
    for name in LAST:
        target = f"{url.rstrip('/')}/{name}"[len("s3://"):]
        try:
            with fs.open(target, "rb") as handle:
                theirs = _fingerprint([orjson.loads(handle.read(REPORT_BYTES))])
        except (FileNotFoundError, ValueError):
            continue
        if theirs and ours and theirs != ours:
            raise InputError(f"reduce --out {url}: the prefix holds the output of another run (fingerprint "
                             f"{theirs[:12]}, ours {ours[:12]}); pass another --out, or remove that output first")


def _fingerprint(reports: Any) -> str:
    for report in reports:
        if isinstance(report, dict) and isinstance(report.get("fingerprint"), str):
            return report["fingerprint"]
    return ""


def _sha256(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(8 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _files(local: Path) -> list[str]:
    """Relative paths of the regular files to upload, sorted, the reports last."""
    found = []
    for folder, dirs, names in os.walk(local):
        top = Path(folder).relative_to(local)
        if top == Path("."):
            dirs[:] = [d for d in dirs if d not in LEFT_LOCAL]
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                found.append(str(path.relative_to(local)))
    return sorted(found, key=lambda name: (name in LAST, name))


def _whole(fs: object, target: str, size: int, digest: str) -> bool:
    """Whether the object is there with this size and sha256 (its metadata, checked by size too)."""
    try:
        info = fs.info(target)  # type: ignore[attr-defined]
    except FileNotFoundError:
        return False
    if int(info.get("size", -1)) != size:
        return False
    return fs.metadata(target).get("sha256") == digest  # type: ignore[attr-defined]


def download_dir(url: str) -> Path:
    """Every object below url, into a new temporary folder (the caller removes it); InputError when the
    prefix holds nothing."""
    from hpcsynth.storage import check_scheme

    check_scheme(url, "verify")
    fs = filesystem()
    base = url.rstrip("/")[len("s3://"):]
    with one_line(url, "verify"):
        fs.call_s3("list_objects_v2", Bucket=base.split("/", 1)[0], MaxKeys=1)  # a missing bucket says so
        names = sorted(fs.find(base))
    if not names:
        raise InputError(f"verify {url}: no objects under this prefix; is it where `hpcsynth reduce --out` uploaded?")
    folder = Path(tempfile.mkdtemp(prefix="hpcsynth-verify-"))
    try:
        with one_line(url, "verify"):
            for name in names:
                relative = name[len(base):].lstrip("/")
                if not relative or ".." in Path(relative).parts:
                    continue
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(name, str(folder / relative))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder
