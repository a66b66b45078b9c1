"""What a reader of the manifest pays at campaign scale: layout 1 (the rows inside manifest.json) against
layout 2 (a header and a fixed-width row file), over fabricated rows shaped like a plan's.

Each measurement runs in a fresh interpreter, so its peak RSS (VmHWM) is its own (the interpreter with
hpcsynth imported is reported as `base`):
  layout1 row    parse manifest.json whole and find one row (what every worker start did)
  layout2 row    RunDir.manifest_row(k): the header, then one pread of one row
  layout2 header RunDir.manifest() + shard_count() (status, estimate, reduce's prepare)
  layout2 all    every row through RunDir.manifest_rows() (a stream)

    python tools/bench_manifest.py [--shards 339000] [--inputs 2500] [--work DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcsynth.files import atomic_write_json  # noqa: E402
from hpcsynth.plan.manifest import write_manifest  # noqa: E402

PROBE = """
import sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from hpcsynth.files import read_json
from hpcsynth.rundir import RunDir
run, what, k = RunDir(Path({run!r})), {what!r}, {k}
started = time.perf_counter()
if what == "base":
    pass
elif what == "layout1":
    row = next(r for r in read_json(run.manifest_path)["shards"] if r["id"] == k)
elif what == "row":
    row = run.manifest_row(k)
elif what == "header":
    header, count = run.manifest(), run.shard_count()
elif what == "all":
    n = sum(1 for _ in run.manifest_rows())
seconds = time.perf_counter() - started
# VmHWM, not ru_maxrss: the latter keeps the peak of the forked parent (which held every row) across exec.
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(seconds, peak / 1024)
"""


def fabricate(root: Path, shards: int, inputs: int) -> tuple[dict, list[dict]]:
    files = [f"/data/fineweb-edu/data/CC-MAIN-2024-10/{i // 100:03d}_{i % 100:05d}.parquet" for i in range(inputs)]
    per_file = -(-shards // inputs)
    rows = []
    for i in range(shards):
        path = files[i // per_file]
        first = (i % per_file) * 1000
        rows.append({"id": i, "path": f"shards/{i:06d}.jsonl.zst", "documents": 1000, "est_tokens": 1_040_000 + i % 977,
                     "chars": 4_368_000 + i % 4099, "bytes": 1_480_000 + i % 8191,
                     "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
                     "inputs": [{"path": path, "unit": "row", "first": first, "last": first + 999}]})
    header = {"layout_version": 2, "hpcsynth_version": "0.1.0", "fingerprint": "f" * 64,
              "prompts": [{"name": p, "format": "free", "version": "1", "template_hash": "0" * 16}
                          for p in ("faq", "math", "table", "tutorial")],
              "inputs": [{"path": f, "bytes": 2_100_000_000, "mtime_ns": 1_700_000_000_000_000_000,
                          "documents": per_file * 1000} for f in files],
              "documents": shards * 1000, "sources": shards * 1000, "rejected": 0,
              "est_tokens": sum(r["est_tokens"] for r in rows), "bytes_per_token": 4.2}
    return header, rows


def probe(run: Path, what: str, k: int) -> tuple[float, float]:
    code = PROBE.format(repo=str(Path(__file__).resolve().parents[1]), run=str(run), what=what, k=k)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=339_000)
    parser.add_argument("--inputs", type=int, default=2_500)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-manifest-"))
    old, new = work / "layout1", work / "layout2"
    for d in (old, new):
        d.mkdir(parents=True, exist_ok=True)
    header, rows = fabricate(work, args.shards, args.inputs)
    atomic_write_json(old / "manifest.json", {**header, "layout_version": 1, "shards": rows})
    written = write_manifest(new, header, rows)
    del rows
    k = args.shards * 2 // 3
    results = {"shards": args.shards, "inputs": args.inputs,
               "layout1_manifest_bytes": (old / "manifest.json").stat().st_size,
               "layout2_header_bytes": (new / "manifest.json").stat().st_size,
               "layout2_rows_bytes": (new / "manifest.rows.jsonl").stat().st_size, "row_width": written["rows"]["width"]}
    for name, run, what in (("base", new, "base"), ("layout1_row", old, "layout1"), ("layout2_row", new, "row"),
                            ("layout2_header", new, "header"), ("layout2_all_rows", new, "all")):
        seconds, rss = probe(run, what, k)
        results[name] = {"s": round(seconds, 4), "peak_rss_mb": round(rss, 1)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
