"""Planning a corpus that lives in a bucket: streamed by `plan --input s3://...` against the workflow it
replaces, copying the objects to local disk first (what `aws s3 sync` does: boto3's download_file) and
planning the copy. Same objects, one run, on moto's S3 server on 127.0.0.1 (the server the storage tests use).

Prints per path the wall seconds, the bytes fetched from the server (ours: every ranged GET s3fs sends,
counted; the copy: the objects' sizes), the local disk the copy needs, and the ratio ours/copy; checks that
both plans wrote the same documents into the same shards (each records where it was read from: a path or a
URL; the rest is compared). A loopback server measures our overhead
and the bytes, not a real bucket's bandwidth.

    python tools/bench_s3.py [--docs 60000] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests" / "storage"))
os.environ.update(OMP_NUM_THREADS="1", RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

import orjson  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import zstandard  # noqa: E402

from hpcsynth.cli.app import main as hpcsynth  # noqa: E402


def corpus(folder: Path, docs: int) -> list[Path]:
    """Half the documents as .jsonl.zst in frames of ~4 MB (as zstd -B writes them), half as Parquet."""
    rng = __import__("random").Random(0)
    words = [f"w{i}" for i in range(5000)]
    rows = [{"id": f"d{i}", "text": " ".join(rng.choice(words) for _ in range(rng.randint(80, 600)))}
            for i in range(docs)]
    lines = b"".join(orjson.dumps(r) + b"\n" for r in rows[: docs // 2])
    frames = [zstandard.ZstdCompressor(level=3).compress(lines[i:i + (4 << 20)]) for i in range(0, len(lines), 4 << 20)]
    (folder / "part-0.jsonl.zst").write_bytes(b"".join(frames))
    pq.write_table(pa.Table.from_pylist(rows[docs // 2:]), folder / "part-1.parquet", row_group_size=5000)
    return [folder / "part-0.jsonl.zst", folder / "part-1.parquet"]


def plan(config: Path, run: Path, inputs: list[str]) -> float:
    args = ["plan", str(config), "--run", str(run), "--jobs", "1"]
    for name in inputs:
        args += ["--input", name]
    started = time.monotonic()
    code = hpcsynth(args)
    if code != 0:
        raise SystemExit(f"plan failed ({code}): {args}")
    return time.monotonic() - started


def shards(run: Path) -> list[dict]:
    """Every planned document, without where it was read from (a local path, or the object's URL)."""
    docs = []
    for path in sorted((run / "shards").iterdir()):
        for line in zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read().splitlines():
            doc = orjson.loads(line)
            doc["meta"].pop("source", None)
            docs.append(doc)
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=60000)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    from moto_s3 import _server, counting_fetches

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-s3-"))
    (work / "local").mkdir(parents=True, exist_ok=True)
    files = corpus(work / "local", args.docs)
    size = sum(f.stat().st_size for f in files)
    config = work / "config.yaml"
    config.write_text("prompts: [faq, math]\nmodel: {engine: fake, path: fake-model}\nplan: {shard_docs: 5000}\n")
    with _server(authenticated=False) as server, counting_fetches() as fetched:
        for name, value in server.env().items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        client = server.client()
        client.create_bucket(Bucket="corpus")
        for f in files:
            client.upload_file(str(f), "corpus", f"fw/{f.name}")
        # The copy: download every object, then plan the local files.
        copy = work / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        started = time.monotonic()
        for f in files:
            client.download_file("corpus", f"fw/{f.name}", str(copy / f.name))
        downloaded = time.monotonic() - started
        planned_copy = plan(config, work / "run-copy", [str(copy / f.name) for f in files])
        # Ours: plan straight from the bucket.
        streamed = plan(config, work / "run-s3", ["s3://corpus/fw/*"])
        per_object = {}
        for f in files:  # what each object cost alone
            fetched["bytes"] = 0
            plan(config, work / f"run-{f.name}", [f"s3://corpus/fw/{f.name}"])
            per_object[f.name] = fetched["bytes"] / f.stat().st_size
        fetched["bytes"] = sum(per_object[f.name] * f.stat().st_size for f in files)
    same = shards(work / "run-copy") == shards(work / "run-s3")
    copy_s = downloaded + planned_copy
    print(f"corpus: {args.docs:,} documents, {size / 1e6:,.1f} MB in 2 objects (.jsonl.zst in 4 MB frames, Parquet)")
    print(f"copy then plan : {copy_s:7.2f} s ({downloaded:.2f} s download + {planned_copy:.2f} s plan), "
          f"{size / 1e6:,.1f} MB fetched, {size / 1e6:,.1f} MB of local disk")
    print(f"plan from s3://: {streamed:7.2f} s, {fetched['bytes'] / 1e6:,.1f} MB fetched "
          f"({fetched['bytes'] / size:.2f}x the objects), 0 MB of local disk")
    print("  fetched / object size: " + ", ".join(f"{name} {ratio:.2f}x" for name, ratio in per_object.items()))
    print(f"ratio ours/copy: {streamed / copy_s:.2f}x wall; shards identical: {same}")
    if not same:
        raise SystemExit("the two plans differ")


if __name__ == "__main__":
    main()
