"""`hpcsynth estimate`: FinePhrase's arithmetic, hand-computed figures, the anchors, and bad input."""

from __future__ import annotations

import orjson
import pytest

from hpcsynth.errors import HpcsynthError
from hpcsynth.study.estimate import Inputs, find_rate, load_anchors, make_estimate

from conftest import Result, run_cli


def cli(*args: str) -> Result:
    return run_cli("estimate", *args)


def test_finephrase_486b_tokens_at_9200_is_14_7k_gpu_hours() -> None:
    # FinePhrase: 486B completion tokens at ~9,200 tok/s per H100 -> ~14.7K GPU-hours; ideal ~6 days on 100.
    est = make_estimate(Inputs(tokens=486e9, tokens_per_s=9200, gpus=100, price=2.0))
    totals = est.totals
    assert totals["gpu_hours"] == pytest.approx(486e9 / 9200 / 3600)  # 14,673.9
    assert round(totals["gpu_hours"] / 1000, 1) == 14.7
    assert totals["wall_hours"] / 24 == pytest.approx(6.11, abs=0.01)
    assert totals["cost"] == pytest.approx(29_347.83, abs=0.01)
    assert totals["cost_per_million_tokens"] == pytest.approx(29_347.83 / 486e3, rel=1e-6)


def test_the_published_anchor_gives_the_same_figure_without_a_rate() -> None:
    # No --tokens-per-second: the shipped table's SmolLM2-1.7B-Instruct on H100 is FinePhrase's 9,200.
    est = make_estimate(Inputs(tokens=486e9))
    assert est.rows[0].tokens_per_s == 9200 and "FinePhrase" in est.rows[0].rate_source
    assert round(est.totals["gpu_hours"]) == 14674
    # From documents: FinePhrase's ~339M documents x 4 prompts x ~359 tokens is its 486B.
    est = make_estimate(Inputs(documents=339_000_000))
    assert [r.prompt for r in est.rows] == ["faq", "math", "table", "tutorial"]
    assert est.totals["tokens"] == 339_000_000 * 4 * 359
    assert round(est.totals["gpu_hours"] / 1000, 1) == 14.7


def test_hand_computed_rows_with_efficiency_gpus_and_price() -> None:
    est = make_estimate(Inputs(documents=1000, prompts=("faq", "math"), output_tokens=500, tokens_per_s=100,
                               gpus=4, price=3.0, efficiency=0.5))
    # Each prompt: 1000 x 500 = 500,000 tokens at 100 x 0.5 tok/s = 10,000 s = 2.7778 GPU-hours.
    for row in est.rows:
        assert row.tokens == 500_000 and row.gpu_hours == pytest.approx(10_000 / 3600)
        assert row.wall_hours == pytest.approx(10_000 / 3600 / 4) and row.cost == pytest.approx(10_000 / 3600 * 3)
    assert est.totals["gpu_hours"] == pytest.approx(20_000 / 3600)
    assert est.totals["cost"] == pytest.approx(20_000 / 3600 * 3)
    assert not est.notes  # the "ideal" note is only for efficiency 1.0


def test_generators_compare_and_resolve_by_name_or_local_directory() -> None:
    anchors = load_anchors()
    assert find_rate("smollm2-1.7b", "H100", anchors)[0] == 9200
    assert find_rate("/models/SmolLM2-1.7B-Instruct/", "h100", anchors)[2] == "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    assert find_rate("SmolLM2-1.7B-Instruct", "H100-no-spec", anchors)[0] == 5300
    est = make_estimate(Inputs(tokens=1e9, generators=("gemma-3-270m", "Llama-3.3-70B")))
    small, large = est.rows
    # FinePhrase: 62.4M vs ~1.1M tokens per GPU-hour.
    assert small.gpu_hours == pytest.approx(1e9 / 62.4e6, rel=0.01)
    assert large.gpu_hours / small.gpu_hours == pytest.approx(62.4 / 1.1, rel=0.02)
    with pytest.raises(HpcsynthError, match="several published generators"):
        find_rate("gemma-3", "H100", anchors)
    with pytest.raises(HpcsynthError, match="--tokens-per-second"):
        find_rate("my-own-model", "H100", anchors)


def test_cli_json_and_table() -> None:
    proc = cli("--tokens", "486e9", "--tokens-per-second", "9200", "--gpus", "100", "--price", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    data = orjson.loads(proc.stdout)
    assert round(data["totals"]["gpu_hours"], 1) == 14673.9 and data["account"] is None
    proc = cli("--documents", "1000", "--prompts", "faq,math", "--gpus", "2", "--price", "1.5")
    assert proc.returncode == 0, proc.stderr
    assert "SmolLM2-1.7B-Instruct" in proc.stdout and "faq" in proc.stdout and "math" in proc.stdout
    assert "FinePhrase" in proc.stdout  # says where the figures come from


@pytest.mark.parametrize("args, says", [
    ((), "nothing to estimate"),
    (("--tokens", "1e9", "--gpus", "0"), "--gpus must be 1 or more"),
    (("--tokens", "1e9", "--efficiency", "1.5"), "--efficiency must be in (0, 1]"),
    (("--tokens", "1e9", "--price", "nan"), "--price must be a number"),
    (("--tokens", "-5"), "--tokens must be a number"),
    (("--tokens", "inf"), "--tokens must be a number"),
    (("--documents", "inf"), "invalid count value"),
    (("--documents", "1.5"), "invalid count value"),
    (("--documents", "10", "--prompts", ","), "names no prompt"),
    (("--documents", "10", "--generator", "nobody/unknown-7b"), "no published throughput"),
    (("no-such-run",), "does not exist"),
])
def test_bad_input_is_one_line(args: tuple[str, ...], says: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    if "invalid count" not in says:  # argparse's own errors come with the usage lines
        assert proc.stderr.count("\n") == 1


def test_documents_far_from_finephrases_length_are_pointed_out() -> None:
    near = make_estimate(Inputs(documents=100, prompts=("faq",), input_tokens=100 * 1200))
    far = make_estimate(Inputs(documents=100, prompts=("faq", "math"), input_tokens=2 * 100 * 150))
    assert not any("average" in n for n in near.notes)
    assert any("average ~150 tokens against FinePhrase's ~1,150" in n for n in far.notes)


def test_a_planned_run_is_priced_with_its_own_token_limit_and_its_instructions(tmp_path) -> None:
    """Before a run had measured anything, estimate priced 359 completion tokens a record (FinePhrase's
    published mean) where the run's sampling.max_tokens is 64, and counted only the documents on the
    prompt side, not each prompt's instruction."""
    from conftest import planned_fake_run
    from hpcsynth.rundir import RunDir

    run: RunDir = planned_fake_run(tmp_path, docs=20, shard_docs=5, sampling={"max_tokens": 64})
    result = run_cli("estimate", str(run.root), "--json", "--tokens-per-second", "1000")
    assert result.returncode == 0, result.stderr
    estimate = orjson.loads(result.stdout)
    rows = estimate["rows"]
    assert rows and all(r["tokens_per_record"] <= 64 for r in rows), rows
    assert all("sampling.max_tokens=64" in r["length_source"] for r in rows), rows
    manifest = run.manifest()
    documents_only = manifest["est_tokens"] * len(manifest["prompts"])
    assert estimate["input_tokens"] > documents_only * 1.05, "each prompt's instruction is counted too"
