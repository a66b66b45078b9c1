"""Re-mixing in the open (issue #20): `reduce RUN --config FILE` changes only the reduce-side settings, says
what changed before it works, and the output keeps the settings that made it; `launch --config` says when it
changes them; a what-if `validate --config` never overwrites the report the dataset card quotes.

The run's outputs are the hand-written samples of test_validate_run (every format, good and bad), so the
validate: thresholds change what is kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
import yaml

from conftest import fake_config, run_cli, write_corpus
from hpcsynth.generate.pull import pull_shards
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir
from test_validate_run import DOCUMENTS, plant

STRICT = "validate:\n  min_faq_pairs: 4\n"  # the samples' FAQs have three pairs: every one fails


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_model: Path) -> tuple[RunDir, dict]:
    tmp = tmp_path_factory.mktemp("remix")
    corpus = write_corpus(tmp / "c.jsonl", DOCUMENTS)
    config = fake_config(corpus, reduce={"tokenizer": str(tiny_model), "min_chars": 1, "original_ratio": 0.5},
                         validate={"action": "drop"})
    run = RunDir(tmp / "run")
    plan_corpus(config, run)
    pull_shards(run.root)
    return run, plant(run)


def cli(*args) -> object:
    proc = run_cli(*map(str, args))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def card_row(card: str, heading: str, prompt: str) -> list[str]:
    """The cells of `prompt`'s row in the first table after `heading` in a dataset card."""
    table = card[card.index(heading):]
    row = next(line for line in table.splitlines() if line.startswith(f"| {prompt} |"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_reduce_config_prints_the_change_and_the_output_keeps_it(planted, tmp_path: Path) -> None:
    run, expected = planted
    config_before = run.config_path.read_bytes()
    remix = tmp_path / "remix.yaml"
    remix.write_text(STRICT + "reduce:\n  original_ratio: 0.0\ncard:\n  license: odc-by\n")
    out = tmp_path / "strict"
    proc = cli("reduce", run.root, "--config", remix, "--out", out)
    lines = proc.stdout.splitlines()
    changes = ["  card.license: '' -> odc-by", "  reduce.original_ratio: 0.5 -> 0.0",
               "  validate.min_faq_pairs: 2 -> 4"]
    assert lines[1:4] == changes, proc.stdout  # printed first, one per line, before any work
    assert lines[0].startswith(f"reduce settings from {remix}") and lines[4].startswith("wrote ")
    assert run.config_path.read_bytes() == config_before  # the run's own settings are left alone

    report = orjson.loads((out / "report.json").read_bytes())
    assert report["original_documents"] == 0 and report["validation"]["faq"]["accepted"] == 0
    assert report["validation"]["faq"]["rejected"] == {"faq_few_pairs": DOCUMENTS}
    assert report["reduce_settings"]["config"] == str(remix)
    kept = yaml.safe_load((out / "reduce-config.yaml").read_text())
    assert set(kept) == {"reduce", "validate", "card"} and kept["validate"]["min_faq_pairs"] == 4
    assert kept["reduce"]["original_ratio"] == 0.0 and kept["card"]["license"] == "odc-by"
    assert "reduce-config.yaml" in {f["path"] for f in report["files"]}  # so verify checks it
    said = cli("verify", out).stdout
    assert "made with the reduce settings in reduce-config.yaml" in said and "validate.min_faq_pairs: 2 -> 4" in said

    card = (out / "README.md").read_text()  # the card describes the mix made, and says what made it
    assert "## Reduce settings" in card and "`validate.min_faq_pairs: 2 -> 4`" in card and "`remix.yaml`" in card
    assert card_row(card, "failed checks", "faq")[2:4] == [str(DOCUMENTS), "0"]
    assert "license: odc-by" in card and str(tmp_path) not in card

    # The file an output keeps makes it again.
    again = tmp_path / "again"
    cli("reduce", run.root, "--config", out / "reduce-config.yaml", "--out", again)
    assert (again / "mix.bin").read_bytes() == (out / "mix.bin").read_bytes()


def test_reduce_config_refuses_what_changes_the_generation(planted, tmp_path: Path) -> None:
    run, _ = planted
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling: {temperature: 0.1}\nmodel: {max_input_chars: 10}\nreduce: {seed: 3}\n")
    out = tmp_path / "refused"
    proc = run_cli("reduce", str(run.root), "--config", str(bad), "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "changes what this run generated (model.max_input_chars, sampling.temperature)" in proc.stderr
    assert not out.exists()  # refused before anything was written
    bad.write_text("worker: {flush_interval_s: 3.0}\n")
    proc = run_cli("reduce", str(run.root), "--config", str(bad), "--out", str(out))
    assert proc.returncode == 2 and "worker.flush_interval_s, which a reduce does not use" in proc.stderr
    bad.write_text("reduce: {min_char: 3}\n")
    proc = run_cli("reduce", str(run.root), "--config", str(bad), "--out", str(out))
    assert proc.returncode == 2 and "unknown key 'reduce.min_char'" in proc.stderr and "line 1" in proc.stderr


def test_a_remix_of_weights_reuses_a_plain_reduces_parts(planted, tmp_path: Path) -> None:
    """A re-mix through --config keeps a plain reduce's spec key when only merge-side keys change."""
    run, _ = planted
    out = tmp_path / "out"
    cli("reduce", run.root, "--out", out)
    first = orjson.loads((out / "report.json").read_bytes())
    markers = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.done.json")}
    weights = tmp_path / "weights.yaml"
    weights.write_text("reduce: {original_ratio: 0.25}\n")
    proc = cli("reduce", run.root, "--config", weights, "--out", out)
    assert "reduce.original_ratio: 0.5 -> 0.25" in proc.stdout
    assert markers and {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.done.json")} == markers
    second = orjson.loads((out / "report.json").read_bytes())
    assert first["original_ratio_target"] == 0.5 and second["original_ratio_target"] == 0.25
    assert second["original_ratio"] < first["original_ratio"]  # re-chosen from the same parts


def test_launch_config_says_when_it_changes_the_reduce_settings(planted, tmp_path: Path) -> None:
    run, _ = planted
    saved = tmp_path / "saved.yaml"
    shutil.copy(run.config_path, saved)
    changed = yaml.safe_load(saved.read_text())
    changed["reduce"]["original_ratio"] = 0.0
    changed["validate"]["min_faq_pairs"] = 3
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    try:
        proc = run_cli("launch", str(run.root), "--config", str(tmp_path / "changed.yaml"))
        assert proc.returncode == 0, proc.stderr
        said = [line for line in proc.stderr.splitlines() if "reduce settings changed" in line]
        assert len(said) == 1, proc.stderr
        assert "reduce.original_ratio 0.5 -> 0.0" in said[0] and "validate.min_faq_pairs 2 -> 3" in said[0]
        assert "they apply at the next `hpcsynth reduce`" in said[0]
        assert run.config().reduce.original_ratio == 0.0  # adopted (not fingerprinted: nothing is redone)
        again = run_cli("launch", str(run.root), "--config", str(tmp_path / "changed.yaml"))
        assert "reduce settings changed" not in again.stderr  # the same settings again: nothing to say
    finally:
        assert run_cli("launch", str(run.root), "--config", str(saved)).returncode == 0
    assert run.config().reduce.original_ratio == 0.5


def test_a_what_if_validate_leaves_the_report_the_card_quotes(planted, tmp_path: Path) -> None:
    """Before, `validate RUN --config strict.yaml` overwrote RUN/validate/report.json, and the next card
    quoted "accepted 0" beside its own kept records."""
    run, expected = planted
    cli("validate", run.root)
    own = run.validate_report_path.read_bytes()
    strict = tmp_path / "strict.yaml"
    strict.write_text(STRICT)
    proc = cli("validate", run.root, "--config", strict)
    assert run.validate_report_path.read_bytes() == own
    whatif = next(run.validate_report_path.parent.glob("whatif-*.json"))
    assert f"written to {whatif}" in proc.stdout
    assert f"{run.validate_report_path} (the run's own settings" in proc.stdout
    assert orjson.loads(whatif.read_bytes())["prompts"]["faq"]["accepted"] == 0

    out = tmp_path / "plain"
    cli("reduce", run.root, "--out", out)
    report = orjson.loads((out / "report.json").read_bytes())
    card = (out / "README.md").read_text()
    kept = report["validation"]["faq"]["accepted"]
    assert kept == expected["faq"]["accepted"] > 0
    # The card's own count and the validate report it quotes agree: the run's settings, both.
    assert card_row(card, "failed checks", "faq")[3] == str(kept)
    assert "(RUN/validate/report.json)" in card and card_row(card, "distinct", "faq")[2] == str(kept)

    # A re-mix under the what-if's settings quotes the what-if's report: again the records it kept.
    out = tmp_path / "strict"
    cli("reduce", run.root, "--config", strict, "--out", out)
    card = (out / "README.md").read_text()
    assert f"(RUN/validate/{whatif.name})" in card
    assert card_row(card, "failed checks", "faq")[3] == "0" == card_row(card, "distinct", "faq")[2]

    # The run's own settings given as a file are no what-if: report.json it is.
    same = tmp_path / "same.yaml"
    same.write_text("validate:\n  min_faq_pairs: 2\n")
    assert "what-if" not in cli("validate", run.root, "--config", same).stdout
    assert len(list(run.validate_report_path.parent.glob("whatif-*.json"))) == 1
