"""plan -> launch -> reduce with the corpus in a bucket and the output in a bucket, on moto's S3 server on
127.0.0.1, through the real CLI: the same training files, byte for byte, as the same run from local files;
an object changed after the plan, an interrupted upload, and `verify` of the remote copy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from conftest import run_cli, write_corpus
from hpcsynth.files import read_jsonl_zst
from moto_s3 import Server, bucket, s3, s3_server  # noqa: F401 (fixtures)

TOKEN_FILES = ("mix.bin", "mix.idx")


def write_config(folder: Path, tokenizer: Path, mix_path: str | None = None) -> Path:
    """The fake engine, small shards, and (with mix_path) a mix-in corpus beside the run's originals."""
    mix = ""
    if mix_path is not None:
        mix = (f"  mix:\n    sources:\n      - {{name: run_originals, weight: 1.0}}\n"
               f"      - {{name: web, path: {orjson.dumps(mix_path).decode()}, weight: 1.0}}\n")
    config = folder / "config.yaml"
    config.write_text("prompts: [faq]\nmodel: {engine: fake, path: fake-model}\nplan: {shard_docs: 5}\n"
                      "worker: {flush_interval_s: 0.05, heartbeat_interval_s: 0.05}\n"
                      f"reduce:\n  tokenizer: {orjson.dumps(str(tokenizer)).decode()}\n  min_chars: 1\n"
                      f"  original_ratio: 0.5\n{mix}"
                      "validate: {action: keep}\n")  # the fake engine's records fail the format checks: keep them
    return config


def ok(*args) -> str:
    result = run_cli(*args)
    assert result.returncode == 0, f"hpcsynth {' '.join(map(str, args))}: {result.stdout}\n{result.stderr}"
    return result.stdout


def one_line_error(*args) -> str:
    result = run_cli(*args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


def upload_corpus(s3: Server, bucket: str, local: Path, key: str) -> str:
    s3.client().upload_file(str(local), bucket, key)
    return f"s3://{bucket}/{key}"


@pytest.fixture
def corpora(tmp_path: Path) -> dict[str, Path]:
    return {"main": write_corpus(tmp_path / "local" / "main.jsonl", 30),
            "web": write_corpus(tmp_path / "local" / "web.jsonl", 12, prefix="web")}


def test_bucket_in_bucket_out_is_byte_identical_to_local_files(s3: Server, bucket: str, tmp_path: Path,
                                                                 tokenizer: Path, corpora: dict[str, Path]) -> None:
    # The same run twice: from local files into a local folder, and from the bucket into the bucket.
    ok("plan", write_config(tmp_path / "local", tokenizer, str(corpora["web"])), "--run", tmp_path / "run-local",
       "--input", corpora["main"])
    ok("launch", tmp_path / "run-local")
    ok("reduce", tmp_path / "run-local", "--out", tmp_path / "out-local")

    main = upload_corpus(s3, bucket, corpora["main"], "corpus/main.jsonl")
    web = upload_corpus(s3, bucket, corpora["web"], "web text/web.jsonl")  # a space in the key
    (tmp_path / "remote").mkdir()
    ok("plan", write_config(tmp_path / "remote", tokenizer, web), "--run", tmp_path / "run-s3",
       "--input", f"s3://{bucket}/corpus/*.jsonl")
    manifest = orjson.loads((tmp_path / "run-s3" / "manifest.json").read_bytes())
    [entry] = manifest["inputs"]
    assert entry["path"] == main and entry["bytes"] == corpora["main"].stat().st_size and entry["etag"]
    ok("launch", tmp_path / "run-s3")
    said = ok("reduce", tmp_path / "run-s3", "--out", f"s3://{bucket}/out/v1")
    assert f"to s3://{bucket}/out/v1" in said and "hpcsynth verify" in said

    objects = {o["Key"]: o for o in s3.client().list_objects_v2(Bucket=bucket, Prefix="out/v1/")["Contents"]}
    for name in (*TOKEN_FILES, "mix.json", "report.json", "mix.docs.jsonl", "README.md"):
        assert f"out/v1/{name}" in objects, sorted(objects)
    assert any(k.startswith("out/v1/text/") and k.endswith(".parquet") for k in objects)
    assert any(k == "out/v1/text/README.md" for k in objects)  # the dataset card of the Parquet export
    assert not any("/parts/" in k for k in objects)  # the tokenized parts stay in the staging folder
    for name in TOKEN_FILES:
        body = s3.client().get_object(Bucket=bucket, Key=f"out/v1/{name}")["Body"].read()
        assert body == (tmp_path / "out-local" / name).read_bytes(), name
    head = s3.client().head_object(Bucket=bucket, Key="out/v1/mix.bin")
    assert head["Metadata"]["sha256"] == hashlib.sha256(body if name == "mix.bin" else
                                                        (tmp_path / "out-local" / "mix.bin").read_bytes()).hexdigest()

    verified = ok("verify", f"s3://{bucket}/out/v1")
    assert "is whole" in verified
    # Nothing of the credentials went into the run directory.
    for path in (tmp_path / "run-s3").rglob("*"):
        if path.is_file():
            assert s3.secret.encode() not in path.read_bytes(), path


def test_an_object_changed_after_the_plan_stops_launch_in_one_line(s3: Server, bucket: str, tmp_path: Path,
                                                                   tokenizer: Path, corpora: dict[str, Path]) -> None:
    url = upload_corpus(s3, bucket, corpora["main"], "c/main.jsonl")
    ok("plan", write_config(tmp_path, tokenizer), "--run", tmp_path / "run", "--input", url)
    write_corpus(tmp_path / "other.jsonl", 31)
    upload_corpus(s3, bucket, tmp_path / "other.jsonl", "c/main.jsonl")
    said = one_line_error("launch", tmp_path / "run")
    assert url in said and "since the run was planned" in said and "ETag" in said and "plan again" in said
    assert not (tmp_path / "run" / "done").exists() or not any((tmp_path / "run" / "done").iterdir())
    # A re-plan without --force names the change.
    said = one_line_error("plan", write_config(tmp_path, tokenizer), "--run", tmp_path / "run", "--input", url)
    assert "inputs changed" in said
    # A campaign whose corpus was updated upstream mid-way goes on from its shards with launch --force.
    forced = run_cli("launch", tmp_path / "run", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "warning" in forced.stderr and "going on from the shards" in forced.stderr and url in forced.stderr
    records = [r for p in sorted((tmp_path / "run" / "outputs").iterdir()) for r in read_jsonl_zst(p)]
    assert {r["source_id"] for r in records} == {f"doc-{i}" for i in range(30)}  # the planned version's 30


def test_launch_checks_many_objects_at_once(s3: Server, bucket: str, tmp_path: Path, tokenizer: Path) -> None:
    """One HEAD per object, 16 at a time: a dump of hundreds of objects is checked in about the time of a few."""
    import time

    for i in range(200):
        s3.client().put_object(Bucket=bucket, Key=f"many/{i:04d}.jsonl",
                               Body=orjson.dumps({"id": f"m{i}", "text": f"document {i} " * 20}) + b"\n")
    ok("plan", write_config(tmp_path, tokenizer), "--run", tmp_path / "run", "--input", f"s3://{bucket}/many/")
    from hpcsynth.plan.manifest import check_objects_unchanged

    inputs = orjson.loads((tmp_path / "run" / "manifest.json").read_bytes())["inputs"]
    assert len(inputs) == 200
    started = time.monotonic()
    check_objects_unchanged(inputs)
    took = time.monotonic() - started
    s3.client().put_object(Bucket=bucket, Key="many/0150.jsonl", Body=b'{"id": "x", "text": "changed"}\n')
    with pytest.raises(Exception, match="many/0150.jsonl changed"):
        check_objects_unchanged(inputs)
    assert took < 30, took


def test_an_object_deleted_after_the_plan_stops_launch_in_one_line(s3: Server, bucket: str, tmp_path: Path,
                                                                   tokenizer: Path, corpora: dict[str, Path]) -> None:
    url = upload_corpus(s3, bucket, corpora["main"], "c/main.jsonl")
    ok("plan", write_config(tmp_path, tokenizer), "--run", tmp_path / "run", "--input", url)
    s3.client().delete_object(Bucket=bucket, Key="c/main.jsonl")
    said = one_line_error("launch", tmp_path / "run")
    assert f"{url} was removed since the run was planned" in said


def test_an_interrupted_upload_resumes_and_skips_what_is_there(s3: Server, bucket: str, tmp_path: Path,
                                                               tokenizer: Path, corpora: dict[str, Path],
                                                               monkeypatch) -> None:
    from hpcsynth.storage import upload

    url = upload_corpus(s3, bucket, corpora["main"], "c/main.jsonl")
    ok("plan", write_config(tmp_path, tokenizer), "--run", tmp_path / "run", "--input", url)
    ok("launch", tmp_path / "run")
    sent: list[str] = []
    real_upload = upload.upload_dir

    def interrupted(local, target, before_each=None):
        def count(relative: str) -> None:
            if len(sent) == 3:
                raise KeyboardInterrupt  # Ctrl-C (or a lost connection) in the middle of the upload
            sent.append(relative)
        return real_upload(local, target, count)

    monkeypatch.setattr(upload, "upload_dir", interrupted)
    result = run_cli("reduce", tmp_path / "run", "--out", f"s3://{bucket}/out")
    assert result.returncode == 130, result.stderr
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix="out/").get("Contents", [])]
    assert len(keys) == 3 and "out/report.json" not in keys  # the report goes last: the prefix is not whole
    monkeypatch.setattr(upload, "upload_dir", real_upload)
    # One object sent partly (cut short): it is not whole, so the resumed upload sends it again.
    s3.client().put_object(Bucket=bucket, Key=keys[0], Body=b"cut", Metadata={"sha256": "0" * 64})
    said = ok("reduce", tmp_path / "run", "--out", f"s3://{bucket}/out")
    assert "; 2 already there, whole" in said, said
    assert "is whole" in ok("verify", f"s3://{bucket}/out")
    # A remote copy damaged afterwards: verify says which file.
    s3.client().put_object(Bucket=bucket, Key="out/mix.idx", Body=b"broken")
    result = run_cli("verify", f"s3://{bucket}/out")
    assert result.returncode == 1 and "mix.idx" in result.stdout


def test_run_directory_in_a_bucket_is_refused_in_one_line(s3: Server, bucket: str, tmp_path: Path,
                                                          tokenizer: Path, corpora: dict[str, Path]) -> None:
    said = one_line_error("plan", write_config(tmp_path, tokenizer), "--run", f"s3://{bucket}/run",
                          "--input", corpora["main"])
    assert f"s3://{bucket}/run is a URL" in said and "POSIX filesystem" in said
    assert not Path("s3:").exists()


def test_a_link_planted_in_the_staging_folder_is_never_uploaded(s3: Server, bucket: str, tmp_path: Path,
                                                                tokenizer: Path, corpora: dict[str, Path]) -> None:
    from hpcsynth.errors import InputError
    from hpcsynth.storage.upload import upload_dir

    url = upload_corpus(s3, bucket, corpora["main"], "c/main.jsonl")
    ok("plan", write_config(tmp_path, tokenizer), "--run", tmp_path / "run", "--input", url)
    ok("launch", tmp_path / "run")
    ok("reduce", tmp_path / "run", "--out", f"s3://{bucket}/out")
    (staged,) = (tmp_path / "run" / "reduce-s3").iterdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-s3\n")
    (staged / "stolen.txt").symlink_to(secret)
    # A file swapped for a link between the listing and its upload: its descriptor is opened without following.
    real = staged / "mix.json"
    real.unlink()
    real.symlink_to(secret)
    said = run_cli("reduce", tmp_path / "run", "--out", f"s3://{bucket}/out")  # the same staging folder
    bodies = [s3.client().get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
              for o in s3.client().list_objects_v2(Bucket=bucket, Prefix="out/").get("Contents", [])]
    assert bodies and not any(b"TOPSECRET-s3" in body for body in bodies), said.stderr
    assert "TOPSECRET-s3" not in said.stdout + said.stderr
    # The listing itself skips links; straight to the upload with the swap it refuses in one line.
    import hpcsynth.storage.upload as upload

    if not real.is_symlink():  # the rerun wrote its mix.json again, over the link
        real.unlink()
        real.symlink_to(secret)
    original = upload._files
    upload._files = lambda local: ["mix.json"]
    try:
        with pytest.raises(InputError, match=r"symbolic link .*\(never followed\)"):
            upload_dir(staged, f"s3://{bucket}/third")
    finally:
        upload._files = original


def test_another_runs_prefix_is_refused_and_left_whole(s3: Server, bucket: str, tmp_path: Path,
                                                       tokenizer: Path, corpora: dict[str, Path]) -> None:
    """Each run stages in a folder of its own, so no reduce lock stands between two runs sent to one prefix:
    the prefix's report says whose output it holds, and another run's upload is refused before any object."""
    config = write_config(tmp_path, tokenizer)
    ok("plan", config, "--run", tmp_path / "a", "--input", corpora["main"])
    ok("plan", config, "--run", tmp_path / "b", "--input", corpora["web"])
    for run in ("a", "b"):
        ok("launch", tmp_path / run)
    ok("reduce", tmp_path / "a", "--out", f"s3://{bucket}/shared")
    before = {o["Key"]: o["ETag"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix="shared/")["Contents"]}
    said = one_line_error("reduce", tmp_path / "b", "--out", f"s3://{bucket}/shared")
    assert "holds the output of another run" in said and "pass another --out" in said
    after = {o["Key"]: o["ETag"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix="shared/")["Contents"]}
    assert after == before
    assert "is whole" in ok("verify", f"s3://{bucket}/shared")
    # The same run again (a re-mix under other reduce settings) replaces its own output.
    remix = tmp_path / "remix.yaml"
    remix.write_text("reduce:\n  original_ratio: 0.25\n")
    ok("reduce", tmp_path / "a", "--out", f"s3://{bucket}/shared", "--config", remix)
    assert "is whole" in ok("verify", f"s3://{bucket}/shared")


def test_a_mix_in_object_changed_mid_reduce_stops_it_and_the_rerun_mixes_the_new_one(
        s3: Server, bucket: str, tmp_path: Path, tokenizer: Path, corpora: dict[str, Path]) -> None:
    from hpcsynth.errors import RunError
    from hpcsynth.reduce.parts import reduce_part
    from hpcsynth.reduce.reducer import prepare_reduce
    from hpcsynth.rundir import RunDir

    web = upload_corpus(s3, bucket, corpora["web"], "web/web.jsonl")
    ok("plan", write_config(tmp_path, tokenizer, web), "--run", tmp_path / "run", "--input", corpora["main"])
    ok("launch", tmp_path / "run")
    run = RunDir(tmp_path / "run")
    spec = prepare_reduce(run, tmp_path / "out", None, False)
    corpus = [index for index, *_ in spec.corpus_parts]
    # The object is rewritten after the reduce stamped it, before its part reads it.
    write_corpus(tmp_path / "web2.jsonl", 15, prefix="changed")
    upload_corpus(s3, bucket, tmp_path / "web2.jsonl", "web/web.jsonl")
    with pytest.raises(RunError, match=r"web/web.jsonl \(reduce.mix.sources web\) changed since this reduce started "
                                       r"\(\d[\d,]* bytes now"):
        reduce_part(str(spec.out_dir), corpus[0])
    # Run again: the new object's stamp is in the spec key, so its parts are made from it.
    ok("reduce", tmp_path / "run", "--out", tmp_path / "out")
    docs = (tmp_path / "out" / "mix.docs.jsonl").read_text()
    assert "changed-" in docs


def test_tune_takes_its_sample_from_a_bucket(s3: Server, bucket: str, tmp_path: Path, tokenizer: Path,
                                             corpora: dict[str, Path]) -> None:
    """`hpcsynth tune --input s3://...` plans its sample as `plan` does: the same readers, from the bucket."""
    upload_corpus(s3, bucket, corpora["main"], "sample/main.jsonl")
    result = run_cli("tune", write_config(tmp_path, tokenizer), "--input", f"s3://{bucket}/sample/*.jsonl", "--out",
                     tmp_path / "tune", "--try", "worker.batch_size=2", "--json")
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert [t["state"] for t in data["trials"]] == ["ok", "ok"] and data["requests"] == 30  # 30 documents x faq
    manifest = orjson.loads((tmp_path / "tune" / "sample" / "manifest.json").read_bytes())
    assert manifest["inputs"][0]["path"] == f"s3://{bucket}/sample/main.jsonl" and manifest["inputs"][0]["etag"]
