"""`hpcsynth plan --executor slurm` on the real dev cluster: the same bytes as a local plan."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from conftest import REPO

pytestmark = pytest.mark.slurm


def digest(run: Path) -> str:
    h = hashlib.sha256((run / "manifest.json").read_bytes() + (run / "plan" / "rejects.jsonl").read_bytes())
    for path in sorted((run / "shards").iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_plan_as_cpu_arrays_matches_local(tmp_path: Path, cluster) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for part in range(3):  # three input groups: three scan tasks, three write tasks
        with open(inputs / f"p{part}.jsonl", "wb") as handle:
            for i in range(40):
                text = f"Part {part} document {i}.\n\n" + "words and more words " * (i % 9 + 1) * 30
                handle.write(orjson.dumps({"id": f"d{i % 37}" if part == 2 else f"p{part}-{i}", "text": text}) + b"\n")
    config = tmp_path / "c.yaml"
    config.write_text("model: {engine: fake}\nplan: {shard_tokens: 3000, max_reject_rate: 1.0, group_mb: 0}\n"
                      "slurm: {partition: gpu, mem_gb: 1}\n")
    runs = {}
    for executor in ("local", "slurm"):
        runs[executor] = tmp_path / executor
        proc = subprocess.run([sys.executable, "-m", "hpcsynth", "plan", str(config), "--run", str(runs[executor]),
                               "--input", str(inputs), "--jobs", "1", "--executor", executor],
                              cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert digest(runs["local"]) == digest(runs["slurm"])
    assert len(list((runs["slurm"] / "slurm").glob("plan-scan-*"))) == 1, "one scan array"
    assert not list(runs["slurm"].glob(".plan-tmp-*"))
