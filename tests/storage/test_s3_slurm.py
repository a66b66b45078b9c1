"""`reduce --executor slurm --out s3://...` on the real single-node cluster with moto's S3 server on 127.0.0.1:
the parts and the merge run as jobs into the run's staging folder and the merge job uploads; the bucket then
holds the same token files as a local reduce, and `verify s3://` passes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, fake_config, run_cli, write_corpus
from moto_s3 import Server, bucket, s3, s3_server  # noqa: F401 (fixtures)
from slurm_cluster import ClusterInfo

pytestmark = pytest.mark.slurm


def test_a_slurm_reduce_uploads_from_its_merge_job(cluster: ClusterInfo, s3: Server, bucket: str, tmp_path: Path,
                                                   tokenizer: Path) -> None:
    from hpcsynth.plan import plan_corpus
    from hpcsynth.rundir import RunDir

    corpus = write_corpus(tmp_path / "c.jsonl", 24)
    config = fake_config(corpus, plan={"shard_docs": 6}, reduce={"tokenizer": str(tokenizer), "min_chars": 1},
                         validate={"action": "keep"})
    plan_corpus(config, RunDir(tmp_path / "run"))
    assert run_cli("launch", tmp_path / "run", "--progress", "0").returncode == 0
    profile = tmp_path / "site.yaml"
    profile.write_text("slurm: {array_tasks: 2, partition: debug, gpus_per_task: 0, cpus_per_task: 1, mem_gb: 1, "
                       "time_min: 20}\n")
    url = f"s3://{bucket}/slurm-out"
    environ = {**cluster.env, **{k: v for k, v in s3.env().items() if v is not None}}
    proc = subprocess.run([sys.executable, "-m", "hpcsynth", "reduce", str(tmp_path / "run"), "--out", url,
                           "--executor", "slurm", "--profile", str(profile)], env=environ, capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "the merge job uploads it to" in proc.stdout and url in proc.stdout
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix="slurm-out/").get("Contents", [])]
        if "slurm-out/report.json" in keys:
            break
        time.sleep(1)
    staged = next((tmp_path / "run" / "reduce-s3").iterdir())
    logs = "\n".join(p.read_text()[-800:] for p in staged.glob("slurm/*/*.out"))
    assert "slurm-out/report.json" in keys, logs
    assert "uploaded" in logs
    verified = run_cli("verify", url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    local = run_cli("reduce", tmp_path / "run", "--out", tmp_path / "local")
    assert local.returncode == 0, local.stderr
    for name in ("mix.bin", "mix.idx"):
        remote = s3.client().get_object(Bucket=bucket, Key=f"slurm-out/{name}")["Body"].read()
        assert remote == (tmp_path / "local" / name).read_bytes(), name
