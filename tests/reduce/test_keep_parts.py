"""When a reduce's tokenized parts go (issue #20): the mix-in corpora's parts once the merge has written the
output, unless --keep-parts; every part while a reduce is unfinished; every part of a finished reduce with
--clean-parts. The summary says how much is kept and how much was removed.

A run of 20 documents mixes in a corpus of two files of 1,500 documents at a small weight: the corpus
parts hold every corpus document tokenized, the mix takes a few dozen of them."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from conftest import fake_config, run_cli, write_corpus
from hpcsynth.generate.pull import pull_shards
from hpcsynth.plan import plan_corpus
from hpcsynth.reduce.cleanup import megabytes, own_bytes
from hpcsynth.rundir import RunDir


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_model: Path) -> RunDir:
    tmp = tmp_path_factory.mktemp("keep-parts")
    for name in ("a", "b"):
        write_corpus(tmp / "web" / f"{name}.jsonl", 1500, prefix=f"web-{name}")
    mix = {"sources": [{"name": "run_originals", "weight": 0.5}, {"name": "web", "path": str(tmp / "web"),
                                                                    "weight": 0.25}]}
    config = fake_config(write_corpus(tmp / "c.jsonl", 20),
                         reduce={"tokenizer": str(tiny_model), "min_chars": 1, "part_shards": 1},
                         validate={"action": "keep"})
    from hpcsynth.config import config_from_dict, config_to_dict

    data = config_to_dict(config)
    data["reduce"]["mix"] = {**data["reduce"]["mix"], **mix}
    run = RunDir(tmp / "run")
    plan_corpus(config_from_dict(data), run)
    pull_shards(run.root)
    return run


def cli(*args) -> object:
    proc = run_cli(*map(str, args))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def part_files(out: Path) -> tuple[dict[str, list[Path]], int]:
    """DIR/parts' files by kind of part ("run", "corpus"), from its spec; and the bytes they hold."""
    spec = orjson.loads((out / "parts" / "spec.json").read_bytes())
    corpus = {entry[0] for entry in spec["corpus_parts"]}
    found: dict[str, list[Path]] = {"run": [], "corpus": []}
    for path in (out / "parts").glob("part-0*"):
        found["corpus" if int(path.name[5:11]) in corpus else "run"].append(path)
    held = [p for p in (out / "parts").iterdir() if p.name != "lock"]
    return found, own_bytes(held)


def test_the_merge_removes_the_corpus_parts_unless_kept(mixed: RunDir, tmp_path: Path) -> None:
    kept, default = tmp_path / "kept", tmp_path / "default"
    said_kept = cli("reduce", mixed.root, "--out", kept, "--keep-parts").stdout
    files, kept_bytes = part_files(kept)
    corpus_bytes = own_bytes(files["corpus"])
    assert len({p.name[:11] for p in files["corpus"]}) == 2 and corpus_bytes > 10 * own_bytes(files["run"])
    report = orjson.loads((kept / "report.json").read_bytes())
    assert report["parts_on_disk"] == {"dir": "parts", "keep": "all", "bytes": kept_bytes, "removed_bytes": 0,
                                       "removed_parts": 0}
    assert f"parts: {megabytes(kept_bytes)} kept in {kept}/parts (--keep-parts)" in said_kept
    assert "--clean-parts` removes them" in said_kept

    said = cli("reduce", mixed.root, "--out", default).stdout
    files, left = part_files(default)
    assert not files["corpus"] and files["run"]  # the run's parts stay for a re-mix of weights
    report = orjson.loads((default / "report.json").read_bytes())
    assert report["parts_on_disk"]["bytes"] == left and report["parts_on_disk"]["removed_parts"] == 2
    # The same parts as the kept reduce's, but for a done marker's CPU seconds and spec.json's DIR.
    assert report["parts_on_disk"]["removed_bytes"] == pytest.approx(corpus_bytes, abs=64)
    assert left == pytest.approx(kept_bytes - corpus_bytes, abs=64)
    assert (f"parts: {megabytes(report['parts_on_disk']['removed_bytes'])} of 2 mix-in corpus part(s) removed "
            f"(--keep-parts keeps them), {megabytes(left)} of the run's kept in {default}/parts") in said
    # The same output either way; verify needs no part.
    for name in ("mix.bin", "mix.idx", "mix.docs.jsonl", "mix.json"):
        assert (default / name).read_bytes() == (kept / name).read_bytes(), name
    assert "is whole" in cli("verify", default).stdout

    # Again: only the removed corpus parts are tokenized again; the run's are reused.
    markers = {p.name: p.stat().st_mtime_ns for p in (default / "parts").glob("*.done.json")}
    cli("reduce", mixed.root, "--out", default)
    assert {p.name: p.stat().st_mtime_ns for p in (default / "parts").glob("*.done.json")} == markers
    assert (default / "mix.bin").read_bytes() == (kept / "mix.bin").read_bytes()


def test_a_failed_merge_keeps_every_part_and_clean_parts_waits_for_a_finished_one(mixed: RunDir,
                                                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    greedy = tmp_path / "greedy.yaml"  # more of the corpus than it has, and too_few: error
    greedy.write_text(f"reduce:\n  mix:\n    too_few: error\n    sources: [{{name: run_originals, weight: 0.5}}, "
                      f"{{name: web, path: '{mixed.root.parent / 'web'}', weight: 1000}}]\n")
    proc = run_cli("reduce", str(mixed.root), "--config", str(greedy), "--out", str(out))
    assert proc.returncode == 2 and "reduce.mix: web has " in proc.stderr
    files, held = part_files(out)
    assert len({p.name[:11] for p in files["corpus"]}) == 2 and not (out / "report.json").exists()
    run_markers = {p.name: p.stat().st_mtime_ns for p in files["run"] if p.name.endswith(".done.json")}
    refused = run_cli("reduce", str(mixed.root), "--out", str(out), "--clean-parts")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "has not merged yet" in refused.stderr
    assert part_files(out)[1] == held

    greedy.write_text(greedy.read_text().replace("too_few: error", "too_few: shrink"))
    cli("reduce", mixed.root, "--config", greedy, "--out", out)  # merges from the parts the failed one made
    assert {name: (out / "parts" / name).stat().st_mtime_ns for name in run_markers} == run_markers
    assert not part_files(out)[0]["corpus"]  # and now that it merged, the corpus parts went

    said = cli("reduce", mixed.root, "--out", out, "--clean-parts").stdout
    assert said.startswith("removed ") and "of parts from" in said and not (out / "parts").exists()
    assert "is whole" in cli("verify", out).stdout
    assert "has no parts to remove" in cli("reduce", mixed.root, "--out", out, "--clean-parts").stdout


def test_the_slurm_merge_job_follows_the_same_rule(mixed: RunDir, tmp_path: Path) -> None:
    """`reduce --executor slurm`'s merge job is merge_parts in a job of its own: it removes what the local
    reduce removes, once its report is written (the array tasks never remove)."""
    from hpcsynth.reduce.reducer import prepare_reduce
    from hpcsynth.reduce.slurm import merge_job, reduce_parts

    spec = prepare_reduce(mixed, tmp_path / "out", None, False, keep_parts="run")
    reduce_parts(str(spec.out_dir), spec.part_indices())  # what the array tasks do
    files, _ = part_files(spec.out_dir)
    assert files["corpus"] and files["run"]
    merge_job(str(spec.out_dir))
    files, _ = part_files(spec.out_dir)
    assert not files["corpus"] and files["run"] and (spec.out_dir / "report.json").is_file()


@pytest.mark.slurm
def test_slurm_reduce_removes_the_corpus_parts_after_its_merge(mixed: RunDir, tmp_path: Path, cluster) -> None:
    import time

    from slurm_cluster import hpcsynth_on

    out = tmp_path / "slurm"
    profile = tmp_path / "site.yaml"
    profile.write_text("slurm: {array_tasks: 3, partition: debug, gpus_per_task: 0, cpus_per_task: 1, mem_gb: 1, "
                       "time_min: 20}\n")
    said = hpcsynth_on(cluster, "reduce", str(mixed.root), "--out", str(out), "--executor", "slurm",
                       "--profile", str(profile)).stdout
    assert "the merge job removes the mix-in corpora's parts once the report is written" in said
    deadline = time.monotonic() + 240
    while not (out / "report.json").exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert (out / "report.json").exists(), "\n".join(p.read_text()[-800:] for p in out.glob("slurm/*/*.out"))
    deadline = time.monotonic() + 30  # the report is written just before the removal
    while part_files(out)[0]["corpus"] and time.monotonic() < deadline:
        time.sleep(0.5)
    files, _ = part_files(out)
    assert not files["corpus"] and files["run"]
    assert orjson.loads((out / "report.json").read_bytes())["parts_on_disk"]["removed_parts"] == 2
