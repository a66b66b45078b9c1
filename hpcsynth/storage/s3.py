"""s3:// through s3fs (the [s3] extra): what a pattern names, an object's identity (size, ETag), reading
one as a file object, and every failure of the server as one line.

Credentials and the endpoint come from where every AWS tool looks: AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), AWS_PROFILE and ~/.aws, AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL for an S3-compatible server. None of them is printed or written anywhere: the secret is
registered with redact() before the first request, and a manifest records URLs, sizes and ETags only.

Objects are read through s3fs's buffered file, a block of BLOCK bytes at a time, never copied whole to
local disk; s3fs sends every ranged read with If-Match on the ETag it opened, so an object rewritten while
it is read fails the read (a lost file the planner then names as changed) instead of mixing two versions.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
from collections.abc import Iterator
from typing import Any

from hpcsynth.errors import InputError
from hpcsynth.optional import require
from hpcsynth.redact import redact, register_secret

BLOCK = 8 << 20  # bytes one ranged GET fetches: a few requests per Parquet row group, few per JSONL MB
RETRIES = 3  # s3fs's own retries of a failed call (5 by default: a wrong endpoint took half a minute)

# Made per process (a pool's forked worker opens its own connections) and per environment: credentials
# changed in the environment (a test, a long-lived caller) are used, not the first ones seen. Memory only.
_filesystems: dict[tuple, Any] = {}
SETTINGS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE")


def filesystem() -> Any:
    """This process's s3fs filesystem, made on first use, without s3fs's caches: an ETag or a listing read
    twice must be read from the server twice, or a changed object would go unnoticed."""
    key = (os.getpid(), *(os.environ.get(name) for name in SETTINGS))
    found = _filesystems.get(key)
    if found is not None:
        return found
    require("s3fs", extra="s3", for_what="reading or writing s3:// URLs")
    import s3fs

    for variable in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        register_secret(os.environ.get(variable, ""))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False,
                           client_kwargs={"endpoint_url": endpoint} if endpoint else {})
    fs.retries = RETRIES
    _filesystems.clear()
    _filesystems[key] = fs
    return fs


def split(url: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key)."""
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


@contextlib.contextmanager
def one_line(url: str, what: str) -> Iterator[None]:
    """Any failure of the server or the connection inside, as InputError: one line naming the URL and the fix."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore, aiohttp and s3fs each raise their own kinds
        raise InputError(describe(exc, url, what)) from None


def describe(exc: BaseException, url: str, what: str) -> str:
    """What went wrong talking to the server, and the fix, in one line with no secret in it."""
    bucket = split(url)[0]
    name = type(exc).__name__
    detail = redact((str(exc).strip().splitlines() or [name])[0])[:200]
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return (f"{what} {url}: no AWS credentials found ({detail}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                f"(or AWS_PROFILE) in the environment")
    if isinstance(exc, PermissionError):
        return (f"{what} {url}: the S3 server refused the request ({detail}); check the credentials "
                f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and that they may use bucket {bucket!r}")
    if isinstance(exc, FileNotFoundError) and "bucket" in detail.lower():
        return (f"{what} {url}: bucket {bucket!r} does not exist at {endpoint()}; check the bucket's name "
                f"(and AWS_ENDPOINT_URL for a server other than AWS)")
    if isinstance(exc, FileNotFoundError):
        return f"{what} {url}: no such object; check the URL"
    if "Connect" in name or "Timeout" in name:
        return (f"{what} {url}: cannot reach the S3 server at {endpoint()} ({detail}); check AWS_ENDPOINT_URL "
                f"and the network")
    return f"{what} {url}: {name}: {detail}"


def endpoint() -> str:
    """Where requests go, as the user set it (no credentials in it)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


def expand(pattern: str) -> list[str]:
    """The objects a URL names, sorted: one object, every object below a prefix ("a folder"), or those a
    glob matches (`*`, `?`, `[...]`, `**`). Empty when nothing matches in a bucket that is there; a
    missing bucket or refused credentials raise InputError."""
    fs = filesystem()
    path = pattern[len("s3://"):]
    with one_line(pattern, "input"):
        found = _matching(fs, path) if glob.has_magic(path) else _object_or_prefix(fs, path)
        names = sorted(name for name, info in found.items()
                       if info.get("type") == "file" and not name.endswith("/"))
        if not names:
            fs.call_s3("list_objects_v2", Bucket=split(pattern)[0], MaxKeys=1)  # a missing bucket says so
    return [f"s3://{name}" for name in names if not _hidden(name)]


def _matching(fs: Any, path: str) -> dict[str, dict]:
    """The objects a glob matches, from one listing of the folder before its first wildcard (one request
    per 1,000 objects, as `aws s3 ls --recursive`); an object named like the glob itself ("part[1].jsonl")
    is that object."""
    first = min(path.find(c) for c in "*?[" if c in path)
    folder = path[:first].rsplit("/", 1)[0]
    listed = fs.find(folder, detail=True) if "/" in path[:first] else fs.find(folder + "/", detail=True)
    if path in listed:
        return {path: listed[path]}
    wanted = _glob_pattern(path)
    return {name: info for name, info in listed.items() if wanted.fullmatch(name)}


def _glob_pattern(path: str) -> re.Pattern:
    """A glob as a regular expression over object names: `*` and `?` stop at "/", `**` crosses folders,
    `[...]` (and `[!...]`) is a character class."""
    out, i = [], 0
    while i < len(path):
        if path.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if path.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        char = path[i]
        end = path.find("]", i + 2) if char == "[" else -1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif end > 0:
            inside = path[i + 1:end]
            inside = "^" + inside[1:] if inside.startswith("!") else inside
            out.append("[" + inside.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _object_or_prefix(fs: Any, path: str) -> dict[str, dict]:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return {}
    if info.get("type") == "file":
        return {path: info}
    return fs.find(path, detail=True)


def _hidden(name: str) -> bool:
    """A dot-file below a prefix, skipped as a directory's are (expand_inputs)."""
    return name.rsplit("/", 1)[-1].startswith(".")


def stat(url: str) -> dict[str, Any]:
    """What identifies an object: its size, its ETag (a change of content changes it) and its modification
    time (as the manifest stores a local file's, in ns; S3 keeps seconds)."""
    with one_line(url, "input"):
        info = filesystem().info(url[len("s3://"):])
    modified = info.get("LastModified")
    stamp = int(modified.timestamp()) * 1_000_000_000 if modified is not None else 0
    return {"bytes": int(info["size"]), "mtime_ns": stamp, "etag": str(info.get("ETag", ""))}


def open_object(url: str, etag: str | None = None) -> Any:
    """A readable, seekable binary file object over an object; with `etag`, InputError unless the object is
    still that version (a reader must not mix one it was not planned or prepared from)."""
    with one_line(url, "input"):
        handle = filesystem().open(url[len("s3://"):], "rb", block_size=BLOCK, cache_type="readahead")
    if etag is not None and handle.details.get("ETag") != etag:
        handle.close()
        raise InputError(f"{url} changed since it was planned (ETag {etag} is now {handle.details.get('ETag')}); "
                         f"plan again (with --force), or put the object back as it was")
    return handle
