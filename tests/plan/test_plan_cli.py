"""`hpcsynth plan` through the CLI (main(), in-process): summary, --jobs, re-plan refusal and --force."""

from __future__ import annotations

from pathlib import Path

import orjson

from hpcsynth.files import read_json

from conftest import run_cli, write_corpus


def test_plan_cli_summary_jobs_replan_and_force(tmp_path: Path) -> None:
    for part in range(3):
        write_corpus(tmp_path / "in" / f"p{part}.jsonl", 30, prefix=f"p{part}")
    (tmp_path / "in" / "p1.jsonl").open("ab").write(b'{"id": "x", "text": ""}\n')
    config = tmp_path / "c.yaml"
    config.write_text("model: {engine: fake}\nplan: {shard_docs: 7, filter: 'not language == \"de\"', min_chars: 10}\n")
    out = tmp_path / "run"
    proc = run_cli("plan", str(config), "--run", str(out), "--input", str(tmp_path / "in"), "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    for words in ("documents", "90 (from 90 sources)", "estimated tokens", "tokens per shard", "empty text", "1"):
        assert words in proc.stdout, proc.stdout
    assert "planned 90 documents into 13 shards" in proc.stdout
    summary = read_json(out / "plan" / "summary.json")
    assert summary["jobs"] == 2 and summary["rejected_by_reason"] == {"empty text": 1}
    assert [orjson.loads(l)["line"] for l in (out / "plan" / "rejects.jsonl").read_bytes().splitlines()] == [31]

    again = run_cli("plan", str(config), "--run", str(out), "--input", str(tmp_path / "in"), "--jobs", "1")
    assert again.returncode == 0 and "already planned with this config and these inputs" in again.stdout
    config.write_text("model: {engine: fake}\nplan: {shard_docs: 9}\n")
    refused = run_cli("plan", str(config), "--run", str(out), "--input", str(tmp_path / "in"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "config keys changed: plan.filter, plan.min_chars, plan.shard_docs" in refused.stderr
    forced = run_cli("plan", str(config), "--run", str(out), "--input", str(tmp_path / "in"), "--force")
    assert forced.returncode == 0 and "planned 90 documents into 10 shards" in forced.stdout
    bad = run_cli("plan", str(config), "--run", str(tmp_path / "other"), "--jobs", "-1")
    assert bad.returncode == 2 and "--jobs must be 1 or more" in bad.stderr
