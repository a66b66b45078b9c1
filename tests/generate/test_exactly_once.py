"""Exactly-once when state is damaged, the config changes mid-run, or workers share a Slurm job.

Each test names the promise it holds (docs/reliability.md lists them); each failed on the code before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import zstandard

from hpcsynth.files import atomic_write_json, read_json, read_jsonl_zst
from hpcsynth.generate.engines.fake import FakeEngine
from hpcsynth.generate.lease import Lease, LeaseLost, holder_gone, new_owner
from hpcsynth.generate.pull import pull_shards
from hpcsynth.generate.shard import ShardTask, shard_of
from hpcsynth.generate.worker import WorkerSession, run_shard
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir

from conftest import REPO, fake_config, planned_fake_run, run_cli, write_corpus


def planned_run(tmp_path: Path, name: str = "run", docs: int = 20, **sections) -> RunDir:
    return planned_fake_run(tmp_path, name, docs, shard_docs=5, **sections)


def outputs(run: RunDir) -> list[dict]:
    return [r for s in run.shard_ids() if run.output_path(s).exists() for r in read_jsonl_zst(run.output_path(s))]


def partial(run: RunDir, shard: int, records: int) -> None:
    """Leave `records` records of a shard in its progress log, as a killed worker would."""
    config = run.config()

    class Stops(FakeEngine):
        def generate(self, requests):
            for n, completion in enumerate(super().generate(requests)):
                if n == records:
                    raise RuntimeError("stopped (injected)")
                yield completion

    assert run_shard(run, shard, Stops(config), config, new_owner()).state == "failed"
    run.failed_path(shard).unlink()


# 1. A shard that cannot be opened fails alone, with its reason and file; the worker goes on.
def test_a_corrupt_input_shard_fails_alone_and_the_worker_goes_on(tmp_path: Path) -> None:
    run = planned_run(tmp_path)
    path = run.shard_path(1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut in half
    run.progress_path(2).mkdir(parents=True)  # an unexpected error on opening: blamed on its shard and file
    proc = run_cli("launch", str(run.root))
    assert proc.returncode == 1, proc.stderr
    reason = read_json(run.failed_path(1))["reason"]
    assert str(path) in reason and "differs from the manifest" in reason
    assert str(run.progress_path(2)) in read_json(run.failed_path(2))["reason"], "the file, not a descriptor number"
    assert all(run.is_done(s, run.fingerprint()) for s in (0, 3)), "the other shards were still generated"
    assert "shard 1 failed" in proc.stderr and "shard 2 failed" in proc.stderr
    seen = json.loads(run_cli("status", str(run.root), "--json").stdout)  # status lists them, with the fix
    assert [(f["shard"], str(path) in f["reason"]) for f in seen["failed_shards"]] == [(1, True), (2, False)]
    assert "restore it or plan the run again" in seen["failed_shards"][0]["reason"]
    text = run_cli("status", str(run.root), env={"COLUMNS": "400"}).stdout
    assert "failed 000001: input shard" in text and f"next: hpcsynth launch {run.root} --retry-failed" in text, text


def test_a_shard_that_failed_is_not_tried_again_by_the_other_workers_of_the_launch(tmp_path: Path) -> None:
    # A shard that crashes the engine ends the worker that meets it (its engine may be broken). Each
    # other worker used to open it again (deleting the failed marker) and crash in turn: one poison
    # shard ended every worker of the launch. Only --retry-failed tries a failed shard again.
    run = planned_run(tmp_path, docs=30)
    poison = next(iter(read_jsonl_zst(run.shard_path(2))))["text"].split("\n")[0]  # "Document 10 about topic 3."
    faults = json.dumps({"crash_on": poison, "delay_s": 0.01})
    proc = run_cli("launch", str(run.root), "--workers", "2", env={"HPCSYNTH_FAKE_FAULTS": faults}, timeout=300)
    assert proc.returncode == 1, proc.stderr
    attempts = [p.name for p in run.root.glob("logs/worker-local-*.log") if "shard 2 failed" in p.read_text()]
    assert len(attempts) == 1, f"shard 2 failed in {attempts}: tried again by another worker"
    assert "engine crashed" in read_json(run.failed_path(2))["reason"]
    assert [s for s in run.shard_ids() if not run.is_done(s, run.fingerprint())] == [2], "the others all done"


# 5. Input shards are verified against the manifest: a flipped bit that still decodes is caught too.
def test_input_shards_carry_zstd_checksums_and_are_checked_against_the_manifest(tmp_path: Path) -> None:
    run = planned_run(tmp_path)
    data = bytearray(run.shard_path(0).read_bytes())
    assert zstandard.get_frame_parameters(bytes(data)).has_checksum
    data[len(data) // 2] ^= 0x01
    run.shard_path(0).write_bytes(bytes(data))
    run.shard_path(2).unlink()
    results = {r.shard: r for r in pull_shards(run.root)}
    assert results[0].state == "failed" and "sha256 mismatch" in results[0].error
    assert results[2].state == "failed" and "is missing" in results[2].error
    assert results[1].state == results[3].state == "done"
    assert zstandard.get_frame_parameters(run.output_path(1).read_bytes()).has_checksum, "outputs too"


def test_a_manifest_row_without_its_checksum_fails_its_shard_alone_naming_the_row(tmp_path: Path) -> None:
    """Layout 2: every row carries its shard's sha256; a row without it is damaged, never an unchecked read."""
    from hpcsynth.rowfile import padded_rows

    run = planned_run(tmp_path)
    width = read_json(run.manifest_path)["rows"]["width"]
    rows = list(run.manifest_rows())
    del rows[0]["sha256"]
    run.manifest_rows_path.write_bytes(b"".join(padded_rows(rows, width)))
    results = {r.shard: r for r in pull_shards(run.root, [0, 1])}
    assert results[0].state == "failed" and results[1].state == "done"
    assert f"{run.manifest_rows_path}: row 0 is damaged (no sha256)" in results[0].error


# 2. Progress written under another fingerprint is set aside; outputs never mix configs.
def test_a_config_change_sets_old_progress_aside_and_never_mixes_configs(tmp_path: Path) -> None:
    run = planned_run(tmp_path, sampling={"max_tokens": 20})
    partial(run, 0, records=7)
    new = tmp_path / "new.yaml"
    data = yaml.safe_load(run.config_path.read_text())
    data["sampling"]["max_tokens"] = 12
    data["prompts"] = ["faq", "math"]  # fewer prompts: used to fail for ever
    new.write_text(yaml.safe_dump(data))
    proc = run_cli("launch", str(run.root), "--config", str(new), "--force")
    assert proc.returncode == 0, proc.stderr
    records = outputs(run)
    assert len(records) == 20 * 2
    assert {r["sampling"]["max_tokens"] for r in records} == {12}
    assert {r["prompt"] for r in records} == {"faq", "math"}
    aside = list(run.set_aside_dir.glob("000000.*.records.jsonl"))
    assert len(aside) == 1 and len(aside[0].read_bytes().splitlines()) == 1 + 7, "kept, with a findable name"


def test_a_worker_stops_when_the_config_changes_under_it(tmp_path: Path) -> None:
    run = planned_run(tmp_path, worker={"heartbeat_interval_s": 0.05})
    config = run.config()

    class ChangesConfig(FakeEngine):
        def generate(self, requests):
            for n, completion in enumerate(super().generate(requests)):
                if n == 5:  # another user adopts a new config while this worker runs
                    run.fingerprint_path.write_text("f" * 64 + "\n")
                yield completion

    results = WorkerSession(run, ChangesConfig(config), config, new_owner()).work(run.shard_ids())
    assert not any(r.state == "done" for r in results)
    assert not list(run.root.glob("done/*.json")) and not list(run.root.glob("work/*/lease.json"))


# 11. A hand-edited config.yaml is refused by every stage, naming the keys.
def test_a_hand_edited_config_is_refused_naming_the_keys(tmp_path: Path) -> None:
    run = planned_run(tmp_path)
    text = run.config_path.read_text()
    run.config_path.write_text(text.replace("max_tokens: 64", "max_tokens: 16"))
    for command in (["launch", str(run.root)], ["status", str(run.root)], ["reduce", str(run.root), "--partial"],
                    ["validate", str(run.root)], ["estimate", str(run.root)]):
        proc = run_cli(*command)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (command, proc.stderr)
        assert "(sampling.max_tokens changed since" in proc.stderr, "that key alone, not lists read back from JSON"
        assert "--config FILE" in proc.stderr, proc.stderr
    assert not list(run.root.glob("outputs/*")), "nothing was generated under the edited config"
    run.config_path.write_text(text)  # undone: works again
    assert run_cli("launch", str(run.root)).returncode == 0


# 3. Workers inside one Slurm job (srun -n N, salloc) share a job id but never steal each other's leases.
def test_workers_of_one_slurm_job_do_not_steal_leases(tmp_path: Path) -> None:
    run = planned_run(tmp_path, docs=30, worker={"heartbeat_interval_s": 0.05})
    counts = tmp_path / "generated.txt"
    faults = json.dumps({"delay_s": 0.01, "count_to": str(counts)})
    proc = run_cli("launch", str(run.root), "--workers", "2",
                   env={"SLURM_JOB_ID": "4242", "HPCSYNTH_FAKE_FAULTS": faults}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    logs = "".join(p.read_text() for p in run.root.glob("logs/*.log"))
    assert "lease lost" not in logs
    generated = counts.read_text().split()
    assert len(generated) == len(set(generated)) == 30 * 4, "every record generated exactly once"


def test_lease_liveness_by_process_and_array_task_incarnation(monkeypatch) -> None:
    me = new_owner()
    assert not holder_gone({"owner": me})
    host = me.split(":")[0]
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert holder_gone({"owner": f"{host}:{proc.pid}:123:abc"}), "a dead pid of this host"
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    assert holder_gone({"owner": f"{host}:{zombie.pid}:{started}:abc"}), "a killed process not yet reaped"
    zombie.wait()
    # A reused pid: alive, but started at another time than the holder.
    assert holder_gone({"owner": f"{host}:{os.getppid()}:1:abc"})
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    other = {"owner": "node9:5:1:x", "task": "77_3"}
    assert holder_gone({**other, "restart": "0"}), "an earlier incarnation of this array task"
    assert not holder_gone({**other, "restart": "1"}), "a sibling in the same incarnation (srun -n 2)"


def test_a_worker_that_loses_its_lease_stops_the_shard_and_never_commits(tmp_path: Path) -> None:
    run = planned_run(tmp_path, docs=5, worker={"heartbeat_interval_s": 0.02})
    config = run.config()
    fed: list[str] = []
    thief = Lease(run.lease_path(0), "elsewhere:1:1:thief", 300)

    class Slow(FakeEngine):
        def generate(self, requests):
            for request in requests:
                fed.append(request.record_id)
                if len(fed) == 3:
                    run.lease_path(0).unlink()
                    assert thief.acquire()
                    time.sleep(0.3)  # the heartbeat notices
                yield from super().generate([request])

    result = run_shard(run, 0, Slow(config), config, new_owner())
    assert result.state == "busy"
    assert len(fed) < 10, "stopped feeding the lost shard at once"
    assert not run.done_path(0).exists()
    assert thief.held(), "the winner's lease is intact"


# 12. A renewal cannot overwrite a lease another worker took over; racing takers yield one holder.
def test_renewal_never_overwrites_a_takeover(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    slow = Lease(path, "a:1:1:slow", timeout=0.2)
    assert slow.acquire()
    time.sleep(0.3)
    fresh = Lease(path, "b:2:2:fresh", timeout=0.2)
    assert fresh.acquire(), "stale after the timeout"
    with pytest.raises(LeaseLost):
        slow.renew()
    assert read_json(path)["owner"] == "b:2:2:fresh"
    slow.release()
    assert fresh.held()


def test_many_racing_takers_of_a_stale_lease_yield_one_holder(tmp_path: Path) -> None:
    for round_ in range(5):
        path = tmp_path / f"lease{round_}.json"
        atomic_write_json(path, {"owner": "elsewhere:1:1:x", "renewed": time.time() - 600})  # long stale
        script = ("import sys, time; from pathlib import Path; from hpcsynth.generate.lease import Lease, new_owner\n"
                  "time.sleep(max(0, float(sys.argv[2]) - time.time()))\n"
                  "print(Lease(Path(sys.argv[1]), new_owner(), 60).acquire(), flush=True)\n"
                  # Stay alive until every taker has answered (the test closes stdin then): a winner that
                  # exited would rightly be taken over by a slower taker.
                  "sys.stdin.read()")
        start = str(time.time() + 1.0)
        procs = [subprocess.Popen([sys.executable, "-c", script, str(path), start], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(6)]
        answers = [p.stdout.readline().strip() for p in procs]  # '' from a taker that died
        for p in procs:
            p.communicate(timeout=60)
        assert answers.count("True") == 1, answers


def test_shard_ids_are_parsed_at_any_count() -> None:
    assert shard_of("1000000-000001/faq") == 1000000 and shard_of("000042-000000/math") == 42


def test_the_heartbeat_thread_survives_a_failing_beat(tmp_path: Path) -> None:
    run = planned_run(tmp_path, docs=5, worker={"heartbeat_interval_s": 0.02})
    config = run.config()
    session = WorkerSession(run, FakeEngine(config, delay_s=0.02), config, new_owner())
    beats = {"n": 0}
    original = session._write_heartbeat

    def flaky(task):
        beats["n"] += 1
        if beats["n"] == 1:
            raise OSError(28, "No space left on device (injected)")
        original(task)

    session._write_heartbeat = flaky
    results = session.work([0])
    assert results[0].state == "done" and beats["n"] > 2, "beats went on after the failing one"


# 4. Damage in the middle of a progress log: intact records kept, damaged ones generated again.
@pytest.mark.parametrize("damage", ["nul-block", "broken-json", "garbage-line"])
def test_damage_inside_a_progress_log_regenerates_exactly_the_damaged_records(tmp_path: Path, damage: str,
                                                                            caplog) -> None:
    run = planned_run(tmp_path)
    partial(run, 0, records=12)
    log = run.progress_path(0)
    lines = log.read_bytes().split(b"\n")
    if damage == "nul-block":
        lines[4] = b"\x00" * len(lines[4])
    elif damage == "broken-json":
        lines[4] = lines[4].replace(b'"text":"', b'"text":', 1)
    else:
        lines.insert(4, b"\x89PNG not a record")
    log.write_bytes(b"\n".join(lines))
    config = run.config()
    counts = tmp_path / "generated.txt"
    with caplog.at_level("WARNING", logger="hpcsynth"):
        result = run_shard(run, 0, FakeEngine(config, count_to=str(counts)), config, new_owner())
    assert result.state == "done"
    assert "records.jsonl: 1 damaged line(s) dropped" in caplog.text, "counted and logged, naming the log"
    regenerated = counts.read_text().split()
    expected_new = 20 - 12 + (0 if damage == "garbage-line" else 1)
    assert len(regenerated) == expected_new, regenerated
    ids = [r["id"] for r in read_jsonl_zst(run.output_path(0))]
    assert len(ids) == len(set(ids)) == 20


# 6. A done marker whose output is missing or corrupt is noticed and the shard generated again.
@pytest.mark.parametrize("damage", ["missing", "flipped", "marker"])
def test_a_done_marker_with_a_bad_output_is_regenerated(tmp_path: Path, damage: str) -> None:
    run = planned_run(tmp_path)
    assert run_cli("launch", str(run.root)).returncode == 0
    before = outputs(run)
    output = run.output_path(2)
    if damage == "missing":
        output.unlink()
    elif damage == "flipped":
        data = bytearray(output.read_bytes())
        data[20] ^= 0x40
        output.write_bytes(bytes(data))
    else:
        run.done_path(2).write_text('{"shard": 2, "finger')
    # status sees a missing output (it lists outputs/) and says what launch will redo; a marker damaged in
    # place, or an output changed at its own size, only launch finds: status reads each marker once, from
    # the done index, and does not re-read 339,000 markers or checksum outputs at every refresh.
    if damage == "missing":
        seen = json.loads(run_cli("status", str(run.root), "--json").stdout)
        assert seen["shards"]["done"] == 3 and [r["shard"] for r in seen["redo_shards"]] == [2], seen["redo_shards"]
        text = run_cli("status", str(run.root), env={"COLUMNS": "400"}).stdout
        assert "1 done shard(s) to generate again" in text and f"hpcsynth launch {run.root}" in text, text
    proc = run_cli("launch", str(run.root))
    assert proc.returncode == 0, proc.stderr
    assert "shard 2 will be generated again" in proc.stderr
    assert outputs(run) == [dict(r, finished_at=a["finished_at"]) for r, a in zip(before, outputs(run))]
    assert list(run.set_aside_dir.glob("000002.*.done.json")), "the old marker is kept"


# 7. The done marker is checked again once the lease is held.
def test_done_is_checked_again_under_the_lease(tmp_path: Path, monkeypatch) -> None:
    run = planned_run(tmp_path)
    config = run.config()
    assert run_shard(run, 1, FakeEngine(config), config, new_owner()).state == "done"
    calls = {"n": 0}
    real = RunDir.is_done

    def racy(self, shard, digest, verify="size"):
        calls["n"] += 1
        return False if calls["n"] == 1 else real(self, shard, digest, verify)  # committed meanwhile

    monkeypatch.setattr(RunDir, "is_done", racy)
    from hpcsynth.prompts import load_prompts

    opened = ShardTask.open(run, 1, config, new_owner(), load_prompts(config), run.fingerprint())
    assert getattr(opened, "state", None) == "skipped"
    assert not run.lease_path(1).exists()


# Tracebacks where a user made a mistake: one line naming the file or key, and the fix.
@pytest.mark.parametrize("key,value,expect", [
    ("plan.zstd_level", 99, "'plan.zstd_level' must be between 1 and 22"),
    ("model.dtype", "float33", "'model.dtype' must be one of"),
    ("worker.device", "tpu", "'worker.device' must be auto, cpu, cuda"),
    ("reduce.eos_token", 5, "'reduce.eos_token' must be a string"),
])
def test_bad_config_values_are_one_line(tmp_path: Path, key: str, value, expect: str) -> None:
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    section, name = key.split(".")
    data.setdefault(section, {})[name] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    write_corpus(tmp_path / "c.jsonl", 3)
    proc = run_cli("plan", str(path), "--run", str(tmp_path / "r"), "--input", str(tmp_path / "c.jsonl"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and expect in proc.stderr, proc.stderr
    assert str(path) in proc.stderr


@pytest.mark.parametrize("victim", ["manifest", "config", "failed", "fingerprint"])
def test_damaged_run_files_are_one_line(tmp_path: Path, victim: str) -> None:
    run = planned_run(tmp_path)
    assert run_cli("launch", str(run.root)).returncode == 0
    saved = tmp_path / "saved.yaml"
    saved.write_text(run.config_path.read_text())
    committed = {s: run.done_path(s).read_bytes() for s in run.shard_ids()}
    if victim == "manifest":
        run.manifest_path.write_text('{"layout_version": 1, "sha')
    elif victim == "config":
        run.config_path.write_text("model: [unclosed\n")
    elif victim == "fingerprint":
        run.fingerprint_path.write_text("")
    else:
        run.done_path(0).unlink()
        run.failed_path(0).parent.mkdir(exist_ok=True)
        run.failed_path(0).write_text("{not json")
    for command in (["status", str(run.root)], ["launch", str(run.root)]):
        proc = run_cli(*command, env={"COLUMNS": "400"})
        if victim == "failed":  # status and launch agree: a failed shard, and why
            assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
            assert f"failed marker {run.failed_path(0)} is damaged" in proc.stdout + proc.stderr, proc.stdout
            continue
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (command, proc.stderr)
        assert "Traceback" not in proc.stderr
        fix = "plan the run again" if victim == "manifest" else f"hpcsynth launch {run.root} --config FILE --force"
        assert fix in proc.stderr, proc.stderr
    if victim in ("config", "fingerprint"):  # the fix the message gives works, and keeps what was done
        proc = run_cli("launch", str(run.root), "--config", str(saved), "--force")
        assert proc.returncode == 0, proc.stderr
        assert run_cli("status", str(run.root)).returncode == 0
        assert {s: run.done_path(s).read_bytes() for s in run.shard_ids()} == committed, "nothing generated again"


def test_engine_start_up_mistakes_are_one_line(tmp_path: Path, tiny_model: Path) -> None:
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])
    corpus = write_corpus(tmp_path / "c.jsonl", 4)
    bad_tokenizer = tmp_path / "bad-tokenizer-model"
    shutil.copytree(tiny_model, bad_tokenizer)
    (bad_tokenizer / "tokenizer_config.json").write_text('{"model_max_length": 2048, "eos_tok')
    for name, changes in (("cut-weights", {"path": str(broken)}), ("no-cuda", {"path": str(tiny_model)}),
                          ("bad-tokenizer", {"path": str(bad_tokenizer)})):
        data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
        data["model"].update(changes)
        if name == "no-cuda":
            data.setdefault("worker", {})["device"] = "cuda"
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        assert run_cli("plan", str(path), "--run", str(tmp_path / name), "--input", str(corpus)).returncode == 0
        proc = run_cli("launch", str(tmp_path / name), timeout=300)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert ("no CUDA device" if name == "no-cuda" else "cannot load model.path") in proc.stderr, proc.stderr


def test_a_prompt_edited_after_plan_is_refused_naming_it(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "faq.md").write_text((REPO / "prompts" / "faq.md").read_text())
    import dataclasses

    corpus = write_corpus(tmp_path / "corpus.jsonl", 10)
    config = dataclasses.replace(fake_config(corpus), prompts=("faq",), prompts_dir=str(prompts))
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run)
    (prompts / "faq.md").write_text((prompts / "faq.md").read_text().replace("{document}", "Text:\n{document}"))
    proc = run_cli("launch", str(run.root))
    assert proc.returncode == 2 and "prompt_templates.faq" in proc.stderr, proc.stderr
    assert not list(run.root.glob("outputs/*"))
