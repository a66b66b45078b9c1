"""Every path of docs/run-directory.md, planted with a symlink to a secret, a FIFO, a link to /dev/zero and
a sparse 4 GB file, against every command that reads a run: no secret is printed or copied, no command
hangs (10 s), memory stays bounded, and a refusal is one line.

The paths come from the doc's own tree, so a path added there without a case here fails
test_every_documented_path_is_planted. Each command reads run files through files.open_regular (no link
followed, no FIFO waited on, regular files only, bounded when read whole) or an equally guarded reader.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
from pathlib import Path

import pytest

from conftest import REPO, fake_config, run_cli, write_corpus

SECRET = "TOPSECRET-9f3b1c"
KINDS = ("symlink", "fifo", "zero", "sparse")
COMMANDS = (("status",), ("status", "--json"), ("estimate",), ("launch", "--progress", "0"), ("validate",),
            ("repair",), ("reduce",), ("verify",), ("cancel",))


def documented_paths() -> list[str]:
    """The tree of docs/run-directory.md as paths relative to RUN (reduce/... for the reduce output)."""
    text = (REPO / "docs" / "run-directory.md").read_text()
    tree = text.split("```", 2)[1]
    paths, stack = [], []
    for line in tree.splitlines():
        found = re.match(r"^([│ ]*)[├└]── (.*)", line)
        if not found:
            continue
        depth = len(found[1]) // 4
        names = [n.strip() for n in re.split(r"\s{2,}", found[2])[0].split(",") if n.strip()]
        stack = stack[:depth]
        for name in names:
            paths.append("/".join([*stack, name]))
        stack.append(names[0].rstrip("/"))
    return paths + EXTRA


# Named in the doc's text rather than its tree.
EXTRA = ["reduce-jobs.json.lock"]


def pattern(documented: str) -> re.Pattern:
    """A documented path as a regex over real ones: ID, NAME, HOST.PID, ... stand for any name part."""
    out = ""
    names = ("ID", "NNNNNN", "NNNNN", "MMMMM", "NAME", "HOST", "PID", "TOKEN", "JOB", "STAMP", "HASH", "PROMPT", "K")
    for piece in re.split(r"(ID|NNNNNN|NNNNN|MMMMM|NAME|HOST|PID|TOKEN|JOB|STAMP|HASH|PROMPT|K|\*)", documented):
        out += "[^/]+?" if piece in names or piece == "*" else re.escape(piece)
    return re.compile(out + (".*" if documented.endswith("/") else ""))


def files_of(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A run that has been through every stage, with every file the doc names."""
    from hpcsynth.plan import plan_corpus
    from hpcsynth.rundir import RunDir
    from hpcsynth.tinymodel import build_tokenizer

    tmp = tmp_path_factory.mktemp("planted")
    build_tokenizer(tmp / "tok")
    corpus = write_corpus(tmp / "corpus.jsonl", 6)
    # Records cut at sampling.max_tokens ~45% of the time, refused as truncated: `repair` has work to do.
    config = fake_config(corpus, plan={"shard_docs": 3}, sampling={"max_tokens": 30},
                         reduce={"tokenizer": str(tmp / "tok"), "min_chars": 1, "drop_truncated": True},
                         validate={"action": "keep"})
    run = RunDir(tmp / "run")
    plan_corpus(config, run)
    for args in (("launch", run.root, "--progress", "0"), ("validate", run.root), ("repair", run.root),
                 ("reduce", run.root), ("status", run.root)):
        result = run_cli(*args)
        assert result.returncode == 0, (args, result.stderr)
    strict = tmp / "strict.yaml"
    strict.write_text("validate:\n  min_faq_pairs: 9\n")
    assert run_cli("validate", run.root, "--config", strict).returncode == 0  # validate/whatif-HASH.json
    root = run.root
    # What a run gathers that this one did not make: a Slurm launch and reduce, a shard in progress, a
    # failed and a set-aside one, a local launch's record, a forced re-plan's kept outputs, locks.
    host = socket.gethostname()
    files = {
        "launches/1.json": {"jobs": [{"job_id": "4242", "tasks": 1}]},
        "reduce-jobs.json": {"jobs": [{"dataset": "reduce", "array": "4243", "merge": "4244"}]},
        "work/000001/lease.json": {"owner": f"{host}:1:1:x", "renewed": 1.0, "check": 0},
        "work/000001/heartbeat.json": {"records_done": 1, "records_expected": 4, "updated": 1.0},
        "failed/000001.json": {"shard": 1, "reason": "boom", "log": str(root / "logs" / "worker-local.log")},
        f"local/{host}.1.json": {"host": host, "pid": 1, "start": "1", "started": 1.0, "gpus": [], "workers": []},
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(data))
    (root / "work" / "000001" / "records.jsonl").write_text('{"fingerprint": "x"}\n')
    if not (root / "reduce" / "rejects.jsonl").exists():  # validate.action keep refuses nothing
        (root / "reduce" / "rejects.jsonl").write_text('{"id": "x", "check": "empty", "reason": "empty"}\n')
    (root / "rejects").mkdir(exist_ok=True)
    (root / "rejects" / "000000.jsonl").write_text('{"id": "x", "reason": "refused"}\n')
    for name in ("set-aside/000000.1.1.done.json", "replaced/20260101T000000/000000.jsonl.zst",
                 "slurm/4242/4242_0_0_log.out", "reduce/slurm/4243/4243_0_0_log.out", ".plan.lock",
                 "local/.lock", "reduce-jobs.json.lock", "reduce/parts/lock", ".plan-tmp-1/x", "repair/.lock",
                 "reduce-s3/bucket_out-0123abcd/report.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x\n")
    (tmp / "secret.txt").write_text(SECRET + "\n")
    return root


def test_every_documented_path_is_planted(base: Path) -> None:
    present = files_of(base)
    missing = [doc for doc in documented_paths() if not any(pattern(doc).fullmatch(f) for f in present)]
    assert not missing, f"documented run paths with no file in this test's run (add them to `base`): {missing}"


@pytest.mark.parametrize("documented", documented_paths())
def test_a_planted_run_file_is_refused_safely(base: Path, tmp_path: Path, documented: str) -> None:
    present = [f for f in files_of(base) if pattern(documented).fullmatch(f)]
    target = present[0]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for kind in KINDS:
        run = tmp_path / kind
        shutil.copytree(base, run, symlinks=True)
        planted = run / target
        planted.unlink()
        if kind == "symlink":
            planted.symlink_to(base.parent / "secret.txt")
        elif kind == "fifo":
            os.mkfifo(planted)
        elif kind == "zero":
            planted.symlink_to("/dev/zero")
        else:
            with open(planted, "wb") as handle:
                handle.truncate(4 << 30)
        for command in COMMANDS:
            argv = [command[0], str(run / "reduce") if command[0] == "verify" else str(run), *command[1:]]
            result = run_cli(*argv, timeout=10)  # a FIFO waited on, or a giant read whole, fails here
            said = result.stdout + result.stderr
            where = f"{target} as {kind}: hpcsynth {' '.join(command)}"
            assert SECRET not in said, where
            assert "Traceback" not in said, f"{where}: {result.stderr[-2000:]}"
            assert result.returncode in (0, 1, 2), f"{where}: exit {result.returncode}"
            if result.returncode == 2:
                assert result.stderr.count("\n") == 1, f"{where}: {result.stderr}"
        if kind == "symlink":  # nor copied into anything a command wrote
            leaked = [f for f in files_of(run) if SECRET.encode() in (run / f).read_bytes()]
            assert not leaked, f"{target}: the secret was copied into {leaked}"
        shutil.rmtree(run)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB
    assert grown < 1 << 20, f"{target}: peak memory grew by {grown >> 10} MB"
