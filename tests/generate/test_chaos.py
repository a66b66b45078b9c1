"""Chaos: kill -9 workers and launchers at random moments, change the config mid-run, damage a progress log.

Real processes and files throughout (the `hpcsynth launch --workers 2` entry point, its worker processes,
the run directory); only the engine is the fast fake, so that many kills fit in a CI minute. At the end
the committed outputs must hold every (document x prompt) exactly once, all under the final config.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import yaml

from hpcsynth.files import read_json, read_jsonl_zst
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir

from conftest import SHARED_DATA, fake_config, run_cli, write_corpus

DOCUMENTS = 240
KILLS = 24


def real_text_corpus(path: Path, count: int) -> Path:
    """Real Common Crawl text when the shared data is there, generated text otherwise."""
    source = SHARED_DATA / "web" / "cc_en_head-0091.jsonl"
    if not source.is_file():
        return write_corpus(path, count)
    with open(source, "rb") as inp, open(path, "wb") as out:
        kept = 0
        for line in inp:
            doc = orjson.loads(line)
            if len(doc.get("text", "")) > 200:
                out.write(orjson.dumps({"id": doc.get("id", kept), "text": doc["text"][:3000]}) + b"\n")
                kept += 1
            if kept == count:
                break
    return path if kept == count else write_corpus(path, count)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive_workers(run: RunDir, started: set[int]) -> list[int]:
    """Worker processes this test started (directly or through its launchers) that still run."""
    pids = set(started)
    for task in run.root.glob("tasks/*.json"):
        try:
            pids.add(int(read_json(task)["pid"]))
        except (OSError, ValueError, KeyError):
            pass
    alive = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"hpcsynth" in cmdline and str(run.root).encode() in cmdline:
            alive.append(pid)
    return alive


def launch(run: RunDir, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HPCSYNTH_FAKE_FAULTS": json.dumps({"delay_s": 0.06})}
    # A session of its own: its workers stay in its process group after the launcher is killed, so the
    # test can end every process it started, orphans included, by that group id.
    return subprocess.Popen([sys.executable, "-m", "hpcsynth", "launch", str(run.root), "--workers", "2",
                             "--verify", "size", *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def finished(run: RunDir) -> bool:
    """Every shard has a done marker (of whichever config: the final launch sorts that out)."""
    return all(run.done_path(shard).exists() for shard in run.shard_ids())


def damage_a_progress_log(run: RunDir) -> bool:
    for log in sorted(run.root.glob("work/*/records.jsonl")):
        lines = log.read_bytes().split(b"\n")
        if len(lines) > 3:  # the header, two records and the last newline at least
            lines[2] = b"\x00" * len(lines[2])
            log.write_bytes(b"\n".join(lines))
            return True
    return False


def test_kills_config_change_and_damage_leave_each_record_exactly_once(tmp_path: Path) -> None:
    corpus = real_text_corpus(tmp_path / "corpus.jsonl", DOCUMENTS)
    config = fake_config(corpus, plan={"shard_docs": 12}, worker={"lease_timeout_s": 3.0})
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run)
    new_config = tmp_path / "new.yaml"
    data = yaml.safe_load(run.config_path.read_text())
    data["sampling"]["max_tokens"] = 24
    new_config.write_text(yaml.safe_dump(data))

    groups: list[int] = []
    rng = random.Random(int(os.environ.get("HPCSYNTH_CHAOS_SEED", "20261129")))
    started: set[int] = set()
    kills = {"launcher": 0, "worker": 0}
    changed = damaged = False
    launcher = launch(run)
    groups.append(launcher.pid)
    # The kills stop at KILLS, or when the run finished under them (a quiet machine runs it faster than
    # the kills come): then nothing is left to kill, and a loop waiting for workers would spin for ever.
    give_up = time.monotonic() + 300
    while sum(kills.values()) < KILLS and not finished(run):
        assert time.monotonic() < give_up, f"the kill loop ran 300 s: {kills}"
        time.sleep(rng.uniform(0.3, 1.0))
        if sum(kills.values()) == KILLS // 3 and not changed:
            launcher.wait() if launcher.poll() is not None else None
            launcher = launch(run, "--config", str(new_config), "--force")  # the config changes mid-run
            groups.append(launcher.pid)
            old, deadline = run.fingerprint(), time.monotonic() + 60
            while run.fingerprint() == old and time.monotonic() < deadline:  # adopted before any kill
                time.sleep(0.05)
            changed = run.fingerprint() != old
            continue
        if sum(kills.values()) >= KILLS // 2 and changed and not damaged:
            damaged = damage_a_progress_log(run)
        workers = children(launcher.pid)
        started.update(workers)
        if launcher.poll() is None and rng.random() < 0.3:
            launcher.send_signal(signal.SIGKILL)  # its workers live on as orphans, as on a real node
            launcher.wait()
            kills["launcher"] += 1
        elif workers:
            os.kill(rng.choice(workers), signal.SIGKILL)
            kills["worker"] += 1
        if launcher.poll() is not None:
            launcher = launch(run)
            groups.append(launcher.pid)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    for group in groups:  # orphaned workers too: every process this test started
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while alive_workers(run, started) and time.monotonic() < deadline:
        time.sleep(0.1)
    for _ in range(3):  # the kills left no shard half done: make one, then damage its log
        if damaged:
            break
        launcher = launch(run)
        deadline = time.monotonic() + 60
        while launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if any(len(log.read_bytes().split(b"\n")) > 3 for log in run.root.glob("work/*/records.jsonl")):
                break
        with contextlib.suppress(ProcessLookupError):  # it may have finished the run by itself
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        time.sleep(0.5)
        damaged = damage_a_progress_log(run)
    assert changed and damaged and kills["launcher"] >= 3 and kills["worker"] >= 3, kills

    final = run_cli("launch", str(run.root), "--workers", "2", timeout=600)
    assert final.returncode == 0, final.stderr

    digest = run.fingerprint()
    documents = [d for s in run.shard_ids() for d in read_jsonl_zst(run.shard_path(s))]
    expected = {f"{d['key']}/{p}" for d in documents for p in data["prompts"]}
    records = [r for s in run.shard_ids() for r in read_jsonl_zst(run.output_path(s))]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "no record twice"
    assert set(ids) == expected, "none lost"
    assert {r["sampling"]["max_tokens"] for r in records} == {24}, "all under the final config"
    assert all(read_json(run.done_path(s))["fingerprint"] == digest for s in run.shard_ids())
    aside = list(run.set_aside_dir.glob("*.records.jsonl"))
    print(f"chaos: {kills['launcher']} launchers and {kills['worker']} workers killed, {len(records)} records, "
          f"{len(aside)} progress logs of the old config set aside; lost 0, duplicated 0")
