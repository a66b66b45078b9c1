"""`hpcsynth repair RUN`: refused records generated again in sub-runs, and the reduce taking the first passing
attempt of each. Through the real entry point; the engine is the fake one, whose output depends on the
record's seed: with sampling.max_tokens 30 about 45% of its records reach the cap, and reduce.drop_truncated
refuses them (check `truncated`), so a new seed recovers about half of what is left each attempt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from hpcsynth.config import config_from_dict, fingerprint
from hpcsynth.files import atomic_write_json, read_json, read_jsonl_zst, sha256_file, write_jsonl_zst
from hpcsynth.generate.shard import record_seed
from hpcsynth.plan import plan_corpus
from hpcsynth.repair.subrun import attempt_seed
from hpcsynth.rundir import RunDir

from conftest import fake_config, run_cli, write_corpus

PROMPTS = ("distill", "extract_knowledge")  # format free: only the generic checks judge them


def refusing_run(tmp_path: Path, tiny_model: Path | None = None, docs: int = 40, shard_docs: int = 10) -> RunDir:
    """A launched fake run whose records reach sampling.max_tokens ~45% of the time, refused as truncated."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", docs)
    reduce = {"drop_truncated": True, "min_chars": 1, "original_ratio": 0.0}
    if tiny_model is not None:
        reduce["tokenizer"] = str(tiny_model)
    config = fake_config(corpus, plan={"shard_docs": shard_docs}, sampling={"max_tokens": 30},
                         reduce=reduce, validate={"action": "drop"})
    import dataclasses

    config = dataclasses.replace(config, prompts=PROMPTS)
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run)
    launched = run_cli("launch", run.root)
    assert launched.returncode == 0, launched.stderr
    return run


def outputs(run: RunDir) -> list[dict]:
    return [r for s in run.shard_ids() if run.output_path(s).is_file() for r in read_jsonl_zst(run.output_path(s))]


def truncated(records: list[dict]) -> set[str]:
    return {r["id"] for r in records if r["finish_reason"] == "length"}


def mix_docs(out: Path) -> list[dict]:
    return [orjson.loads(line) for line in (out / "mix.docs.jsonl").read_bytes().splitlines()]


def test_two_attempts_leave_at_most_half_refused_and_reduce_takes_each_record_once(tmp_path: Path,
                                                                                   tiny_model: Path) -> None:
    run = refusing_run(tmp_path, tiny_model)
    original = outputs(run)
    refused = truncated(original)
    assert 0.25 <= len(refused) / len(original) <= 0.6, len(refused)
    before = run_cli("reduce", run.root)
    assert before.returncode == 0, before.stderr
    assert {d["id"] for d in mix_docs(run.default_reduce_dir)} == {r["id"] for r in original} - refused

    proc = run_cli("repair", run.root, "--attempts", "2")
    assert proc.returncode == 0, proc.stderr
    report = read_json(run.repair_report_path)
    still = sum(row["still_refused"] for row in report["prompts"].values())
    assert still <= len(refused) / 2, report["prompts"]
    assert sum(row["refused"] for row in report["prompts"].values()) == len(refused)
    for prompt, row in report["prompts"].items():
        assert f"{prompt}: {row['refused']} of {row['records']} refused before repair" in proc.stdout
        assert row["refused"] - sum(row["recovered"].values()) == row["still_refused"]
        assert row["yield_after"] > row["yield_before"]
    # Sub-runs: one per attempt and prompt, holding records with the original ids and a seed of the attempt.
    subs = run.repair_runs()
    assert {(a, p) for a, p, _ in subs} <= {(a, p) for a in (1, 2) for p in PROMPTS} and len(subs) >= 3
    first = [r for a, _, sub in subs if a == 1 for r in outputs(sub)]
    assert {r["id"] for r in first} == refused, "attempt 1 generates exactly the refused records, ids unchanged"
    seed = run.config().sampling.seed
    for attempt, _, sub in subs:
        for record in outputs(sub):
            assert record["seed"] == record_seed(attempt_seed(seed, attempt), record["source_id"], record["prompt"])
    assert attempt_seed(seed, 1) != attempt_seed(seed, 2) != seed

    after = run_cli("reduce", run.root)  # the repair changed the spec key: every part is made again
    assert after.returncode == 0, after.stderr
    docs = mix_docs(run.default_reduce_dir)
    ids = [d["id"] for d in docs]
    assert len(ids) == len(set(ids)), "no record twice in the reduce output"
    assert len(ids) == len(original) - still
    assert all("attempt" in d for d in docs), "every kept record's attempt is in its provenance"
    repaired = [d for d in docs if d["attempt"] > 0]
    assert {d["id"] for d in repaired} == refused & set(ids) and repaired
    for doc in repaired:  # the reasons of the attempts before it, the original's first
        assert [step["attempt"] for step in doc["repaired_from"]] == list(range(doc["attempt"]))
        assert {step["check"] for step in doc["repaired_from"]} == {"truncated"}
    assert Counter(d["attempt"] for d in docs)[0] == len(original) - len(refused)
    validation = read_json(run.default_reduce_dir / "report.json")["validation"]
    assert sum(sum(v.get("repaired", {}).values()) for v in validation.values()) == len(repaired)
    assert sum(sum(v["rejected"].values()) for v in validation.values()) == still
    assert run_cli("verify", run.default_reduce_dir).returncode == 0
    card = (run.default_reduce_dir / "README.md").read_text()
    assert "## Repair" in card and "| repaired | by attempt | still refused |" in card
    for prompt, row in report["prompts"].items():
        assert f"| {prompt} | {row['refused'] - row['still_refused']} |" in card


def test_kill_9_mid_attempt_then_rerun_generates_each_record_of_the_attempt_once(tmp_path: Path) -> None:
    run = refusing_run(tmp_path, docs=60, shard_docs=5)
    refused = truncated(outputs(run))
    counts = tmp_path / "generated.txt"
    env = {**os.environ, "HPCSYNTH_FAKE_FAULTS": json.dumps({"delay_s": 0.04, "count_to": str(counts)})}
    repair = subprocess.Popen([sys.executable, "-m", "hpcsynth", "repair", str(run.root), "--attempts", "1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    try:  # killed once a sub-run shard is committed and another holds records but is not committed
        while time.monotonic() < deadline:
            done = [p for p in run.repair_dir.glob("attempt-1/*/done/*.json")]
            logs = [p for p in run.repair_dir.glob("attempt-1/*/work/*/records.jsonl")
                    if len(p.read_bytes().splitlines()) > 2]
            if done and logs:
                break
            assert repair.poll() is None, f"repair ended before it could be killed: {repair.stderr.read()}"
            time.sleep(0.01)
        else:
            pytest.fail("the repair never reached the middle of a sub-run shard")
    finally:
        os.killpg(repair.pid, signal.SIGKILL)
        repair.wait()
    before_kill = {r["id"] for _, _, sub in run.repair_runs() for r in outputs(sub)}
    assert before_kill and before_kill < refused, "killed mid-attempt"

    again = run_cli("repair", run.root, "--attempts", "1", env={"HPCSYNTH_FAKE_FAULTS": json.dumps(
        {"count_to": str(counts)})})
    assert again.returncode == 0, again.stderr
    records = [r for _, _, sub in run.repair_runs() for r in outputs(sub)]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) and set(ids) == refused, "each (record, attempt 1) committed exactly once"
    generated = Counter(counts.read_text().split())
    assert set(generated) == refused
    assert all(generated[i] == 1 for i in before_kill), "records committed before the kill were not generated again"
    lines = len(counts.read_text().splitlines())
    assert run_cli("repair", run.root, "--attempts", "1").returncode == 0
    assert len(counts.read_text().splitlines()) == lines, "a finished attempt is not generated again"


def test_repair_config_sampling_reaches_the_sub_runs_and_changes_no_fingerprint(tmp_path: Path) -> None:
    run = refusing_run(tmp_path)
    refused = truncated(outputs(run))
    digest, config_text = run.fingerprint(), run.config_path.read_text()
    settings = tmp_path / "repair.yaml"
    settings.write_text("repair:\n  sampling: {temperature: 0.5, max_tokens: 2048, extra: {min_p: 0.05}}\n")
    proc = run_cli("repair", run.root, "--config", settings)
    assert proc.returncode == 0, proc.stderr
    assert run.fingerprint() == digest and run.config_path.read_text() == config_text, "the run is left as it was"
    records = [r for _, _, sub in run.repair_runs() for r in outputs(sub)]
    assert {r["id"] for r in records} == refused
    assert {(r["sampling"]["temperature"], r["sampling"]["max_tokens"]) for r in records} == {(0.5, 2048)}
    assert {r["sampling"]["extra"]["min_p"] for r in records} == {0.05}
    assert all(r["finish_reason"] == "stop" for r in records), "no cut under the larger cap"
    report = read_json(run.repair_report_path)
    assert all(row["still_refused"] == 0 for row in report["prompts"].values())
    for _, _, sub in run.repair_runs():
        sub_config = sub.config()
        assert sub_config.sampling.seed == attempt_seed(run.config().sampling.seed, 1)
        assert sub.fingerprint() != digest

    # status: each attempt's sub-runs apart from the run; estimate RUN: the repair's cost; validate: the yield.
    subs = {(a, p) for a, p, _ in run.repair_runs()}
    seen = json.loads(run_cli("status", run.root, "--json").stdout)["repair"]
    assert {(e["attempt"], e["prompt"]) for e in seen} == subs and all(e["shards_done"] == e["shards"] for e in seen)
    assert sum(e["records"] for e in seen) == len(refused) and all(e["cpu_seconds"] > 0 for e in seen)
    assert f"repair attempt 1: {len(subs)}/{len(subs)} sub-runs done" in run_cli("status", run.root).stdout
    estimate = run_cli("estimate", run.root, env={"COLUMNS": "200"})
    assert f"repair: {len(refused)} records generated again in 1 attempt(s)" in estimate.stdout, estimate.stdout
    validated = run_cli("validate", run.root)
    assert validated.returncode == 0 and "repair (as of the last `hpcsynth repair`" in validated.stdout
    assert read_json(run.validate_report_path)["repair"]["prompts"] == report["prompts"]

    base = {"prompts": ["faq"], "model": {"engine": "fake"}}
    plain = config_from_dict(base)
    with_repair = config_from_dict({**base, "repair": {"checks": ["truncated"], "attempts": 3,
                                                       "sampling": {"temperature": 0.5, "max_tokens": 2048}}})
    assert fingerprint(plain, {}) == fingerprint(with_repair, {}), "repair settings are not fingerprinted"
    bad = tmp_path / "bad.yaml"
    bad.write_text("repair:\n  checks: [truncatd]\n")
    refused_config = run_cli("repair", run.root, "--config", bad)
    assert refused_config.returncode == 2 and "'repair.checks' names no check 'truncatd'" in refused_config.stderr


def _plant_refusals(run: RunDir, every: int) -> set[str]:
    """Make every `every`-th record a content refusal (check `refusal`), as a worker would have committed it."""
    planted = set()
    for shard in run.shard_ids():
        records = list(read_jsonl_zst(run.output_path(shard)))
        for n, record in enumerate(records):
            if n % every == 0:
                record.update(text="I'm sorry, but I can't help with rewriting this document.", finish_reason="stop")
                planted.add(record["id"])
        write_jsonl_zst(run.output_path(shard), records)
        marker = read_json(run.done_path(shard))
        marker.update(sha256=sha256_file(run.output_path(shard)), bytes=run.output_path(shard).stat().st_size)
        atomic_write_json(run.done_path(shard), marker)
    return planted


def test_a_content_refusal_is_not_repaired_by_default_and_a_changed_set_under_done_work_is_refused(
        tmp_path: Path) -> None:
    run = refusing_run(tmp_path)
    planted = _plant_refusals(run, every=4)
    refused = truncated(outputs(run))
    proc = run_cli("repair", run.root)
    assert proc.returncode == 0, proc.stderr
    generated = {r["id"] for _, _, sub in run.repair_runs() for r in outputs(sub)}
    assert generated == refused and not generated & planted, "refusals are left alone by default"
    report = read_json(run.repair_report_path)
    assert sum(r["refused_by_check"].get("refusal", 0) for r in report["prompts"].values()) == len(planted)
    assert sum(r["repairable"] for r in report["prompts"].values()) == len(refused)
    manifests = {sub.root: sub.manifest_path.stat().st_mtime_ns for _, _, sub in run.repair_runs()}
    again = run_cli("repair", run.root)  # nothing changed: nothing planned again, nothing generated
    assert again.returncode == 0 and "planned" not in again.stdout, again.stdout
    assert manifests == {sub.root: sub.manifest_path.stat().st_mtime_ns for _, _, sub in run.repair_runs()}

    checks = tmp_path / "refusals.yaml"
    checks.write_text("repair:\n  checks: [truncated, refusal]\n")
    changed = run_cli("repair", run.root, "--config", checks)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert "attempt 1 of prompt" in changed.stderr and "has done shards" in changed.stderr


def test_repair_needs_every_shard_done(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", 10)
    run = RunDir(tmp_path / "run")
    plan_corpus(fake_config(corpus, plan={"shard_docs": 5}), run)
    proc = run_cli("repair", run.root)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "2 of 2 shards" in proc.stderr and f"hpcsynth launch {run.root}" in proc.stderr
    assert not run.repair_dir.exists()
