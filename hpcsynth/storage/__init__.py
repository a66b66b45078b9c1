"""Where data may live besides this machine's filesystem: s3:// URLs, for corpus inputs (plan --input,
reduce.mix.sources[].path) and for reduce outputs (reduce --out).

The lowest stage: corpus/ reads through it, reduce/ and cli/ upload and verify through it; it imports only
the ground floor. This module holds what needs no library (telling a URL from a path); s3.py talks to a
bucket through s3fs (the [s3] extra), upload.py moves a reduce's output to and from one.

The run directory never lives in a bucket: its leases, done markers and atomic renames need a POSIX
filesystem (docs/run-directory.md, "What lives where").
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Union

# s3://bucket/x, hf://datasets/..., gs://, https://: a scheme of letters, then "://".
URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# The same after pathlib made a Path of it ("s3://b/k" -> "s3:/b/k"): how a URL given where a directory
# is expected (--run) still shows as one.
FOLDED_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):/(?!/)")
SUPPORTED = ("s3",)

# An input or output: a local path, or an s3:// URL kept as a str (a Path would fold its "//").
Location = Union[Path, str]


def is_remote(name: object) -> bool:
    """Whether a name is an s3:// URL (what this package reads and writes), not a local path."""
    return isinstance(name, str) and name.startswith("s3://")


def scheme_of(name: str) -> str | None:
    """The URL scheme a name starts with ("s3", "hf", ...), or None for a path."""
    found = URL_SCHEME.match(name)
    return found.group(1) if found else None


def check_scheme(name: str, what: str) -> None:
    """Refuse, in one line, a URL of a scheme this version does not read or write."""
    from hpcsynth.errors import InputError

    scheme = scheme_of(name)
    if scheme == "s3" and not name[len("s3://"):].split("/", 1)[0]:
        raise InputError(f"{what} {name!r} names no bucket; write s3://BUCKET/KEY (a key, a prefix or a glob)")
    if scheme is None or scheme in SUPPORTED:
        return
    raise InputError(f"{what} {name!r}: {scheme}:// is not supported (only s3:// URLs and local paths are); copy "
                     f"the files to a bucket or to a filesystem this machine and the workers see (e.g. "
                     f"`huggingface-cli download`, `gsutil rsync`) and pass that URL or path")


def path_or_url(text: str) -> Location:
    """argparse type of an argument that may be a bucket URL: the URL as given, else a Path."""
    return text if scheme_of(text) else Path(text)


def folded_url(path: Path | str) -> str | None:
    """The URL a Path was made of ("s3:/b/run" -> "s3://b/run"), for the error that says where a run
    directory must live; None for an ordinary path."""
    text = os.fspath(path)
    if URL_SCHEME.match(text):
        return text
    found = FOLDED_URL.match(text)
    return f"{found.group(1)}://{text[found.end():]}" if found else None


def base_name(name: Location) -> str:
    """The last part of a path or URL: what the readers tell formats by (.jsonl.gz, .parquet)."""
    return os.fspath(name).rsplit("/", 1)[-1]


def open_binary(name: Location) -> Any:
    """A raw, seekable binary file: an unbuffered local file, or an object read a block at a time."""
    if is_remote(name):
        from hpcsynth.storage.s3 import open_object

        return open_object(str(name))
    return open(name, "rb", buffering=0)


def stat_of(name: Location) -> dict[str, Any]:
    """What identifies an input cheaply: {"bytes", "mtime_ns"} of a file, and "etag" of an object too."""
    if is_remote(name):
        from hpcsynth.storage.s3 import stat

        return stat(str(name))
    info = os.stat(name)
    return {"bytes": info.st_size, "mtime_ns": info.st_mtime_ns}


def size_of(name: Location) -> int:
    """Bytes of a file or object; 0 when it cannot be read (it is gone: the caller names that elsewhere)."""
    try:
        return int(stat_of(name)["bytes"])
    except Exception:  # noqa: BLE001 - OSError of a file, InputError of an object the server no longer gives
        return 0
