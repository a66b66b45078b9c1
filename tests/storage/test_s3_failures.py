"""What goes wrong with a bucket, each as one line naming the URL and the fix (no traceback, no secret):
wrong credentials, a missing bucket, a glob matching nothing, other schemes, s3fs not installed; and the
readers' bounds and rejects on objects as on files (a decompression bomb, keys with spaces and shell
characters, Parquet read by ranges)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import orjson
import pytest

from conftest import run_cli, run_process, write_corpus
from moto_s3 import Server, bucket, counting_fetches, s3, s3_auth_server, s3_server  # noqa: F401 (fixtures)


def config(folder: Path, extra: str = "") -> Path:
    path = folder / "config.yaml"
    path.write_text(f"prompts: [faq]\nmodel: {{engine: fake, path: fake-model}}\n{extra}")
    return path


def one_line_error(*args, env=None) -> str:
    result = run_cli(*args, env=env)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def test_wrong_credentials_are_one_line_without_the_secret(s3_auth_server: Server, tmp_path: Path,
                                                            monkeypatch) -> None:
    server = s3_auth_server
    server.client().create_bucket(Bucket="guarded")
    server.client().put_object(Bucket="guarded", Key="c/a.jsonl", Body=b'{"id": "1", "text": "hello"}\n')
    wrong = "Wr0ngSecretValue/ThatMustNotLeak+123456"
    for name, value in server.env(AWS_SECRET_ACCESS_KEY=wrong).items():
        monkeypatch.setenv(name, value) if value is not None else monkeypatch.delenv(name, raising=False)
    for url in ("s3://guarded/c/*.jsonl", "s3://guarded/c/a.jsonl"):
        said = one_line_error("plan", config(tmp_path), "--run", tmp_path / "run", "--input", url)
        assert "refused the request" in said and "AWS_SECRET_ACCESS_KEY" in said and url in said, said
        assert wrong not in said and server.secret not in said
    said = one_line_error("verify", "s3://guarded/out")
    assert "refused" in said and wrong not in said
    assert not (tmp_path / "run").exists()


def test_a_missing_bucket_is_one_line(s3: Server, tmp_path: Path) -> None:
    for url in ("s3://no-such-bucket-here/c/*.jsonl", "s3://no-such-bucket-here/c/a.jsonl"):
        said = one_line_error("plan", config(tmp_path), "--run", tmp_path / "run", "--input", url)
        assert "bucket 'no-such-bucket-here' does not exist" in said and s3.endpoint in said, said
    run = tmp_path / "run"
    said = one_line_error("verify", "s3://no-such-bucket-here/out")
    assert "does not exist" in said
    assert not run.exists()


def test_a_glob_matching_nothing_is_one_line(s3: Server, bucket: str, tmp_path: Path) -> None:
    s3.client().put_object(Bucket=bucket, Key="c/a.jsonl", Body=b'{"id": "1", "text": "hello"}\n')
    said = one_line_error("plan", config(tmp_path), "--run", tmp_path / "run", "--input", f"s3://{bucket}/c/*.parquet")
    assert f"s3://{bucket}/c/*.parquet" in said and "matches no file" in said


@pytest.mark.parametrize("url", ["hf://datasets/HuggingFaceFW/fineweb-edu", "gs://bucket/c/*.parquet",
                                 "https://example.org/c.jsonl"])
def test_other_schemes_say_what_is_supported(tmp_path: Path, url: str) -> None:
    said = one_line_error("plan", config(tmp_path), "--run", tmp_path / "run", "--input", url)
    assert f"{url.split(':')[0]}:// is not supported (only s3:// URLs and local paths are)" in said


def test_without_s3fs_one_line_with_the_install_hint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)
    from hpcsynth.storage import s3 as storage_s3

    monkeypatch.setattr(storage_s3, "_filesystems", {})
    said = one_line_error("plan", config(tmp_path), "--run", tmp_path / "run", "--input", "s3://b/c/*.jsonl")
    assert "s3fs is not installed" in said and "pip install 'hpcsynth[s3]'" in said
    said = one_line_error("reduce", tmp_path / "run", "--out", "s3://b/out")
    assert "s3fs is not installed" in said and "pip install 'hpcsynth[s3]'" in said


def test_keys_with_spaces_and_shell_characters_are_read_and_named_as_they_are(s3: Server, bucket: str,
                                                                               tmp_path: Path) -> None:
    key = "odd dir/$(touch pwned); rm -rf x `id` 'q' \"d\" #1.jsonl"
    corpus = write_corpus(tmp_path / "c.jsonl", 4)
    s3.client().upload_file(str(corpus), bucket, key)
    result = run_cli("plan", config(tmp_path), "--run", tmp_path / "run", "--input", f"s3://{bucket}/odd dir/*.jsonl")
    assert result.returncode == 0, result.stderr
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert manifest["documents"] == 4 and manifest["inputs"][0]["path"] == f"s3://{bucket}/{key}"
    assert not Path("pwned").exists() and not (tmp_path / "pwned").exists()


def test_a_bomb_in_a_bucket_is_a_counted_reject_in_bounded_memory(s3: Server, bucket: str, tmp_path: Path) -> None:
    """1 GiB of zeros on one line, zstd-compressed to ~32 KB, read from the bucket by a planner whose address
    space is capped: the same reject, with the URL and the line, as from a local file (tests/plan/test_bombs.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plan"))
    from test_bombs import CAP, zst_bomb

    bomb = zst_bomb(tmp_path / "bomb.jsonl.zst")
    s3.client().upload_file(str(bomb), bucket, "c/bomb.jsonl.zst")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CAP * 2, CAP * 2))  # s3fs's threads and aiohttp add their own

    proc = run_process("plan", config(tmp_path, "plan: {max_reject_rate: 0.9}\n"), "--run", tmp_path / "run",
                       "--input", f"s3://{bucket}/c/bomb.jsonl.zst", preexec_fn=cap)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rejects = [orjson.loads(line) for line in (tmp_path / "run" / "plan" / "rejects.jsonl").read_bytes().splitlines()]
    assert len(rejects) == 1 and rejects[0]["source"] == f"s3://{bucket}/c/bomb.jsonl.zst" and rejects[0]["line"] == 1
    assert "longer than plan.max_line_bytes" in rejects[0]["reason"]


def test_a_parquet_object_is_read_by_row_group(s3: Server, bucket: str, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [f"p{i}" for i in range(50)], "text": [f"page {i} " + "word " * 30 for i in range(50)]})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=10)
    s3.client().upload_file(str(tmp_path / "c.parquet"), bucket, "pq/c.parquet")
    result = run_cli("plan", config(tmp_path), "--run", tmp_path / "run", "--input", f"s3://{bucket}/pq/")
    assert result.returncode == 0, result.stderr
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert manifest["documents"] == 50 and manifest["inputs"][0]["path"] == f"s3://{bucket}/pq/c.parquet"


def test_credentials_from_a_named_profile(s3_auth_server: Server, tmp_path: Path, monkeypatch) -> None:
    """AWS_PROFILE and a credentials file, as `aws configure --profile` writes them, with no key in the
    environment: the server checks the signature, so only the profile's key gets through."""
    server = s3_auth_server
    server.client().create_bucket(Bucket="profiled")
    server.client().put_object(Bucket="profiled", Key="c/a.jsonl",
                               Body=b"".join(orjson.dumps({"id": f"d{i}", "text": f"document {i} " * 20}) + b"\n"
                                             for i in range(5)))
    credentials = tmp_path / "credentials"
    credentials.write_text(f"[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n"
                           f"[hpcsynth-test]\naws_access_key_id = {server.key}\naws_secret_access_key = {server.secret}\n")
    settings = tmp_path / "config"
    settings.write_text("[default]\nregion = us-east-1\n\n[profile hpcsynth-test]\nregion = us-east-1\n")
    env = server.env(AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None, AWS_PROFILE="hpcsynth-test",
                     AWS_SHARED_CREDENTIALS_FILE=str(credentials), AWS_CONFIG_FILE=str(settings))
    for name, value in env.items():
        monkeypatch.setenv(name, value) if value is not None else monkeypatch.delenv(name, raising=False)
    result = run_cli("plan", config(tmp_path), "--run", tmp_path / "run", "--input", "s3://profiled/c/a.jsonl")
    assert result.returncode == 0, result.stderr
    assert server.secret not in result.stdout + result.stderr
    run_text = b"".join(p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert server.secret.encode() not in run_text and server.key.encode() not in run_text
    monkeypatch.setenv("AWS_PROFILE", "default")  # a profile whose key the server does not know
    said = one_line_error("plan", config(tmp_path), "--run", tmp_path / "run2", "--input", "s3://profiled/c/*.jsonl")
    assert "refused the request" in said and "AWS_PROFILE" in said


def test_a_zstd_object_is_downloaded_once_and_a_cut_one_is_named_as_locally(s3: Server, bucket: str,
                                                                           tmp_path: Path) -> None:
    """A local .zst is checked for a cut by a seeking pass over its block headers before it is read; an object
    is followed as it streams (files.ZstdFrameWalk), so it is downloaded once, and a cut one still fails the plan
    with the local file's reason."""
    import zstandard

    import os

    # ~20 MB compressed: past two of s3fs's 8 MiB read-ahead blocks, where a pass before the read downloads again.
    lines = b"".join(orjson.dumps({"id": f"d{i}", "text": f"document {i} " + os.urandom(500).hex()}) + b"\n"
                     for i in range(40_000))
    frames = [zstandard.ZstdCompressor(level=3, write_checksum=True).compress(lines[i:i + 400_000])
              for i in range(0, len(lines), 400_000)]  # frames cut mid-line, as zstd -B writes them
    whole = b"".join(frames)
    cut = whole[:len(whole) - 1000]
    (tmp_path / "whole.jsonl.zst").write_bytes(whole)
    (tmp_path / "cut.jsonl.zst").write_bytes(cut)
    s3.client().put_object(Bucket=bucket, Key="z/whole.jsonl.zst", Body=whole)
    s3.client().put_object(Bucket=bucket, Key="z/cut.jsonl.zst", Body=cut)
    with counting_fetches() as fetched:
        result = run_cli("plan", config(tmp_path), "--run", tmp_path / "run", "--input",
                         f"s3://{bucket}/z/whole.jsonl.zst", "--jobs", "1")
    assert result.returncode == 0, result.stderr
    manifest = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())
    assert manifest["documents"] == 40_000
    assert len(whole) > 2 * (8 << 20)
    assert len(whole) <= fetched["bytes"] <= 1.05 * len(whole), (fetched, len(whole))
    remote = one_line_error("plan", config(tmp_path), "--run", tmp_path / "run2", "--input",
                            f"s3://{bucket}/z/cut.jsonl.zst", "--jobs", "1")
    local = one_line_error("plan", config(tmp_path), "--run", tmp_path / "run3", "--input", tmp_path / "cut.jsonl.zst",
                           "--jobs", "1")
    frame = len(whole) - len(frames[-1])
    for said in (remote, local):
        assert f"cut short or damaged inside the zstd frame at byte {frame}" in said, said


def test_a_parquet_object_is_downloaded_once(s3: Server, bucket: str, tmp_path: Path) -> None:
    """The dictionary pages' headers are read through Arrow's own handle: a handle of their own fetched a
    read-ahead block of the object per header (1.7x its bytes before)."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": [f"p{i}" for i in range(20_000)], "text": [os.urandom(600).hex() for _ in range(20_000)]})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=2_000)
    size = (tmp_path / "big.parquet").stat().st_size
    assert size > 2 * (8 << 20)
    s3.client().upload_file(str(tmp_path / "big.parquet"), bucket, "pq/big.parquet")
    with counting_fetches() as fetched:
        result = run_cli("plan", config(tmp_path), "--run", tmp_path / "run", "--input",
                         f"s3://{bucket}/pq/big.parquet", "--jobs", "1")
    assert result.returncode == 0, result.stderr
    assert orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())["documents"] == 20_000
    assert size <= fetched["bytes"] <= 1.1 * size, (fetched, size)


@pytest.mark.parametrize("args", [("plan", "--input", "s3://"), ("plan", "--input", "s3:///key.jsonl"),
                                  ("verify", "s3:///out"), ("reduce", "--out", "s3://")])
def test_a_url_without_a_bucket_is_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    command, *rest = args
    if command == "plan":
        argv = ["plan", config(tmp_path), "--run", tmp_path / "run", *rest]
    elif command == "reduce":
        argv = ["reduce", tmp_path / "run", *rest]
    else:
        argv = list(args)
    said = one_line_error(*argv)
    assert "names no bucket" in said and "s3://BUCKET/KEY" in said
