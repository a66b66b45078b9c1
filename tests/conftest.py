"""Shared fixtures: one tiny model per test session, one thread everywhere (2 shared cores thrash at 2+)."""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses
from pathlib import Path

import orjson
import pytest

from hpcsynth.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    from hpcsynth.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def write_corpus(path: Path, count: int, prefix: str = "doc") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for i in range(count):
            text = f"Document {i} about topic {i % 7}.\n" + " ".join(f"word{(i * 13 + j) % 97}" for j in range(40))
            handle.write(orjson.dumps({"id": f"{prefix}-{i}", "text": text}) + b"\n")
    return path


def outlived(pids: list[int], seconds: float = 10) -> list[int]:
    """Which of `pids` still run after up to `seconds` (zombies count as ended); those are killed, by these
    PIDs only, so that a failing test leaves nothing running."""
    import signal
    import time

    alive, deadline = set(pids), time.monotonic() + seconds
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][0] != "Z"}
        time.sleep(0.05)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return sorted(alive)


def fake_config(corpus: Path, **sections) -> Config:
    """The demo config on the fake engine, with fast intervals; sections replace parts of it."""
    config = load_config(REPO / "configs" / "demo.yaml")
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, engine="fake", path="fake-model"),
        plan=dataclasses.replace(config.plan, inputs=(str(corpus),), shard_docs=5),
        worker=dataclasses.replace(config.worker, flush_interval_s=0.05, heartbeat_interval_s=0.05),
    )
    for name, changes in sections.items():
        config = dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **changes)})
    return config


@pytest.fixture(scope="session")
def cluster():
    """The project's single-node Slurm (slurm/start-cluster.sh), started once, left running."""
    from slurm_cluster import cluster_available, ensure_cluster

    ok, reason = cluster_available()
    if not ok:
        pytest.skip(reason)
    return ensure_cluster()


def planned_fake_run(tmp_path: Path, name: str = "run", docs: int = 40, shard_docs: int = 10, **sections):
    """A run planned from a generated corpus on the fake engine (see fake_config), in tmp_path/name."""
    from hpcsynth.plan import plan_corpus
    from hpcsynth.rundir import RunDir

    corpus = write_corpus(tmp_path / "corpus.jsonl", docs)
    config = fake_config(corpus, plan={"shard_docs": shard_docs}, **sections)
    run = RunDir(tmp_path / name)
    plan_corpus(config, run)
    return run
