"""The dataset card of each reduce output: Hub front matter that parses, and every source, prompt hash,
token count, quality figure and cost the run has."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml

from conftest import fake_config, write_corpus
from hpcsynth.generate.pull import pull_shards
from hpcsynth.plan import plan_corpus
from hpcsynth.reduce import reduce_run
from hpcsynth.reduce.card import write_cards
from hpcsynth.reduce.spec import read_spec
from hpcsynth.reduce.validate.quality import validate_run
from hpcsynth.rundir import RunDir

HUB_SIZES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B",
             "10B<n<100B", "100B<n<1T", "n>1T"}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


@pytest.fixture(scope="module")
def reduced(tmp_path_factory, tiny_model: Path):
    tmp = tmp_path_factory.mktemp("card")
    corpus = write_corpus(tmp / "corpus.jsonl", 12)
    config = fake_config(corpus, reduce={"tokenizer": str(tiny_model), "min_chars": 1},
                         card={"license": "odc-by", "language": ("en", "de"),
                               "source_licenses": {"wikipedia": "cc-by-sa-4.0"}, "gpu_hour_price": 2.5})
    run = RunDir(tmp / "run")
    plan_corpus(config, run)
    pull_shards(run.root)
    validate_run(run, run.config())  # RUN/validate/report.json: its measures go on the card too
    report = reduce_run(run).data
    return run, report


def test_card_front_matter_is_what_the_hub_reads(reduced) -> None:
    run, report = reduced
    out = run.default_reduce_dir
    for path, data_files in ((out / "README.md", "text/train-*.parquet"), (out / "text" / "README.md", "train-*.parquet")):
        meta = front_matter(path.read_text())
        assert meta["license"] == "odc-by" and meta["language"] == ["en", "de"]
        assert meta["task_categories"] == ["text-generation"] and "synthetic" in meta["tags"]
        assert meta["size_categories"] == ["n<1K"] and set(meta["size_categories"]) <= HUB_SIZES
        assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}]
    datasets = pytest.importorskip("datasets")
    # The front matter's configs are what `datasets` follows from the output directory to the Parquet text.
    rows = datasets.load_dataset(str(out), split="train")
    # The text export keeps every validated record; the token files hold what the exact mix chose of them.
    assert rows.num_rows == report["text_export"]["rows"] >= report["synthetic_documents"] > 0


def test_card_names_every_source_prompt_hash_and_token_count(reduced) -> None:
    run, report = reduced
    card = (run.default_reduce_dir / "README.md").read_text()
    manifest = run.manifest()
    for prompt in manifest["prompts"]:
        assert f"| {prompt['name']} | {prompt['format']} | {prompt['version']} | `{prompt['template_hash']}` |" in card
    assert "| the corpus: `corpus.jsonl` | web documents | 12 | odc-by |" in card
    assert str(run.root) not in card  # no site path: the input by its name
    assert f"| synthetic (rephrasings) | {report['synthetic_documents']:,} | {report['synthetic_tokens']:,} |" in card
    assert f"| original (mixed in) | {report['original_documents']:,} | {report['original_tokens']:,} |" in card
    assert f"| total | {report['sequences']:,} | {report['tokens']:,} |" in card
    for source, tokens in report["tokens_by_source"].items():
        assert f"| {source} | {tokens:,} |" in card
    assert "| generator | `fake-model` |" in card and "max_tokens 64" in card and report["fingerprint"] in card
    # Quality: the reduce's checks per prompt, and the validate report's measures.
    assert "## Quality" in card and "| faq | faq | 12 | 12 |" in card and "output/input length" in card
    # Cost: the run's account, priced at card.gpu_hour_price, each figure saying how it is known.
    assert "## Cost" in card and "CPU worker-hours" in card and "measured: the workers' clocks" in card
    assert "inferred:" in card and "per million" in card


def test_card_renders_the_mix_and_each_sources_licence(reduced) -> None:
    run, report = reduced
    out = run.default_reduce_dir
    mix = {"seed": 7, "total_tokens": 123456, "sources": [
        {"name": "faq", "kind": "synthetic", "path": "runs/fp", "prompt": "faq", "weight": 0.5,
         "target_share": 0.5, "achieved_share": 0.4987, "tokens": 61_500, "documents": 900, "repeat": 1.0,
         "cut_documents": 0, "dropped_documents": 3},
        {"name": "wikipedia", "kind": "original", "path": "data/wiki", "weight": 0.5, "target_share": 0.5,
         "achieved_share": 0.5013, "tokens": 61_956, "documents": 1200, "repeat": 2.0, "cut_documents": 1,
         "dropped_documents": 0, "a_new_field": "shown too"},
        {"name": "evil | name\n---\nlicense: mit", "kind": "original", "tokens": 1, "documents": 1}]}
    (out / "mix.json").write_bytes(orjson.dumps(mix))
    try:
        write_cards(read_spec(out), {**report, "mix": None})  # None: the card reads mix.json
        card = (out / "README.md").read_text()
    finally:
        (out / "mix.json").unlink()
    assert front_matter(card)["license"] == "odc-by"  # a hostile source name breaks neither YAML nor table
    assert "| faq | synthetic | 900 | odc-by |" in card and "| wikipedia | original | 1,200 | cc-by-sa-4.0 |" in card
    assert "From `mix.json`: seed 7, total_tokens 123,456." in card
    for key in ("achieved_share", "cut_documents", "dropped_documents", "a_new_field"):
        assert f" {key} |" in card
    assert "| 0.4987 |" in card and "| shown too |" in card
    table = [line for line in card.splitlines() if line.startswith("| evil")]
    assert len(table) == 2 and all("\\|" in line for line in table)  # one row in each table, pipe escaped


def test_a_failing_account_does_not_fail_the_card(reduced, monkeypatch) -> None:
    import hpcsynth.status.account as account

    run, report = reduced

    def broken(*args, **kwargs):
        raise OSError("sacct: connection refused")

    monkeypatch.setattr(account, "account_run", broken)
    out = run.default_reduce_dir
    write_cards(read_spec(out), report)
    assert "## Cost\n\nNot available: OSError: sacct: connection refused." in (out / "README.md").read_text()


@pytest.mark.parametrize("key, value, says", [
    ("license", "odc by", "'card.license' must be an id"),
    ("language", ["en\nlicense: mit"], "'card.language[0]' must be an id"),
    ("gpu_hour_price", -1, "'card.gpu_hour_price' must be 0"),
    ("licence", "mit", "unknown key 'card.licence'"),
])
def test_bad_card_settings_are_one_clear_line(key: str, value, says: str) -> None:
    from hpcsynth.config import config_from_dict
    from hpcsynth.errors import ConfigError

    with pytest.raises(ConfigError, match=r".*" + says.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict({"card": {key: value}})


@pytest.mark.parametrize("content", [b"[1, 2]", b'{"sources": "all of them"}', b'{"seed": 1, "sources": [', b"\xff\xfe"])
def test_a_damaged_mix_json_falls_back_to_the_ratio(reduced, content: bytes) -> None:
    run, report = reduced
    out = run.default_reduce_dir
    (out / "mix.json").write_bytes(content)
    try:
        write_cards(read_spec(out), {**report, "mix": None})  # None: the card reads mix.json
    finally:
        (out / "mix.json").unlink()
    card = (out / "README.md").read_text()
    assert "## The mix\n\nOriginal documents of each shard were mixed in at" in card
    assert "| the corpus: `corpus.jsonl` |" in card and front_matter(card)["license"] == "odc-by"


def test_the_hub_library_reads_the_card(reduced) -> None:
    hub = pytest.importorskip("huggingface_hub")
    run, _ = reduced
    data = hub.DatasetCard.load(run.default_reduce_dir / "README.md").data.to_dict()
    assert data["license"] == "odc-by" and data["size_categories"] == ["n<1K"]
    assert data["configs"][0]["data_files"][0]["path"] == "text/train-*.parquet"
