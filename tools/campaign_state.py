"""The run-directory side of tools/bench_campaign.py, run under the checkout being measured.

bench_campaign.py never imports hpcsynth itself: it runs this script with PYTHONPATH set to the chosen
checkout, so every path (done markers, outputs, the done index where the checkout has one) is that
checkout's own RunDir's, and a changed layout needs no change here.

    python tools/campaign_state.py info RUN
    python tools/campaign_state.py fabricate RUN --fraction 0.9

`fabricate` leaves a fraction of the shards done the way a worker leaves them: it runs a real worker
(the checkout's `python -m hpcsynth.generate.pull RUN --shards A,B`) on two shards of the chosen set,
then clones what that worker committed under the other ids: the output file byte for byte (so its size
and sha256 match the marker; the record ids inside still name shard A, which status, claims and the
estimate never read), the done marker with `shard` and `committed` changed, and every JSON line of any
other file the worker wrote that names shard A (a per-worker done index), with its shard, the new
marker's figures and, where the line has one, the new marker's inode (`ino`). All cloned lines go to
the real worker's file: one index file where the campaign would have ~1,000 (one per worker).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hpcsynth.rundir import LAYOUT_VERSION, RunDir

# Directories a worker writes that are not done state (its clock, logs, in-progress work).
NOT_DONE_STATE = ("tasks", "logs", "work", "failed")


def done_set(ids: list[int], fraction: float) -> list[int]:
    """A spread, seeded choice of shards (Knuth's multiplicative hash): done shards scattered among
    pending ones, as after a campaign's first days of 1,000 workers and their failures."""
    cut = round(fraction * 1000)
    return [i for i in ids if (i * 2654435761) % 4294967296 % 1000 < cut]


def info(run: RunDir) -> dict:
    return {"layout_version": LAYOUT_VERSION, "done_dir": str(run.done_dir), "outputs_dir": str(run.outputs_dir),
            "tasks_dir": str(run.tasks_dir), "done_path_example": str(run.done_path(123456)),
            "shards": run.shard_count(), "done": len(run.done_ids())}


def tree(root: Path) -> set[str]:
    """Every file under root except the planner's shards and the worker's non-done state."""
    out = set()
    for base, dirs, files in os.walk(root):
        rel = os.path.relpath(base, root)
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in ("shards",) + NOT_DONE_STATE]
        out.update(os.path.normpath(os.path.join(rel, f)) for f in files)
    return out


def fabricate(run: RunDir, fraction: float) -> dict:
    ids = run.shard_ids()
    chosen = done_set(ids, fraction)
    if not chosen:
        return {"done": 0, "cloned_lines": {}}
    real = chosen[:2]
    before = tree(run.root)
    env = dict(os.environ, HPCSYNTH_FAKE_FAULTS="")
    subprocess.run([sys.executable, "-m", "hpcsynth.generate.pull", str(run.root), "--shards",
                    ",".join(map(str, real))], check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    template = real[0]
    marker = json.loads(run.done_path(template).read_bytes())
    output = run.output_path(template).read_bytes()
    written = sorted(tree(run.root) - before)
    plain = {os.path.relpath(run.done_path(s), run.root) for s in real} | \
            {os.path.relpath(run.output_path(s), run.root) for s in real}
    extras = [p for p in written if p not in plain]
    index_lines = {p: _lines_naming(run.root / p, template) for p in extras}
    start = time.time() - 86_400  # commits spread over the day before
    rest = [s for s in chosen if s not in real]
    appended: dict[str, list[bytes]] = {p: [] for p, lines in index_lines.items() if lines}
    for n, shard in enumerate(rest):
        marker.update(shard=shard, committed=start + n * 86_400 / max(len(rest), 1))
        if "output" in marker:
            marker["output"] = run.output_path(shard).name
        run.output_path(shard).write_bytes(output)
        run.done_path(shard).write_bytes(json.dumps(marker, indent=2, sort_keys=True).encode() + b"\n")
        if appended:
            ino = os.stat(run.done_path(shard)).st_ino
            for p, lines in index_lines.items():
                appended.get(p, []).extend(_reshard(line, template, shard, marker, ino) for line in lines)
    for p, lines in appended.items():
        with open(run.root / p, "ab") as handle:
            handle.writelines(lines)
    return {"done": len(chosen), "real_worker_shards": real, "other_files_written": extras,
            "cloned_lines": {p: len(v) for p, v in appended.items()}}


def _lines_naming(path: Path, shard: int) -> list[bytes]:
    """Lines of a JSON-lines file whose object's `shard` (or `id`) is this shard; [] for anything else."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    found = []
    for line in data.splitlines(keepends=True):
        try:
            obj = json.loads(line)
        except ValueError:
            return []  # not JSON lines: a format this script cannot clone (reported as not cloned)
        if isinstance(obj, dict) and shard in (obj.get("shard"), obj.get("id")):
            found.append(line)
    return found


def _reshard(line: bytes, old: int, new: int, marker: dict, ino: int) -> bytes:
    """The line with the new shard's id, its marker's figures (committed, ...) and, where the line
    records the marker file's inode (`ino`), the new marker's."""
    obj = json.loads(line)
    for key in ("shard", "id"):
        if obj.get(key) == old:
            obj[key] = new
    obj.update({k: marker[k] for k in obj.keys() & marker.keys() if k not in ("shard", "id")})
    if "ino" in obj:
        obj["ino"] = ino
    for key in ("output", "marker", "path"):
        if isinstance(obj.get(key), str):
            obj[key] = obj[key].replace(f"{old:06d}", f"{new:06d}")
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def main() -> None:
    command, root = sys.argv[1], RunDir(Path(sys.argv[2]).resolve())
    if command == "info":
        print(json.dumps(info(root)))
    elif command == "fabricate":
        print(json.dumps(fabricate(root, float(sys.argv[sys.argv.index("--fraction") + 1]))))
    else:
        raise SystemExit(f"unknown command {command!r}; one of info, fabricate")


if __name__ == "__main__":
    main()
