"""`repair_run`: attempts 1..N, each planned as sub-runs (subrun.py) and worked by launch_run.

For attempt K: scan K-1 (refused.py) finds the records still refused by a check of repair.checks; each
prompt's are planned into RUN/repair/attempt-K/PROMPT/ unless that sub-run already holds exactly them;
then launch_run works every sub-run not yet done. Attempt K+1 starts only once every sub-run of K is done:
it validates K's outputs. A last scan counts what attempt N recovered, and report.py writes the yield.

Resuming is reading the filesystem again: a sub-run planned with the same refused set is kept (a killed
repair's committed shards and progress logs stay, and launch_run goes on from them, so each record of an
attempt is committed once); one whose set changed is planned again only while none of its shards is done.
A finished attempt's set cannot change unless the run's outputs or the validation settings did: that is
refused, naming the attempt. Under --executor slurm an attempt is submitted and `repair` returns; run it
again once the jobs end to validate it and go on. One repair at a time per run (RUN/repair/.lock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcsynth.config import Config
from hpcsynth.errors import HpcsynthError, RunError
from hpcsynth.locks import acquire_lock
from hpcsynth.reduce.repaired import repair_header
from hpcsynth.reduce.select import prompt_formats
from hpcsynth.repair.refused import Scan, cached_scan, scan_attempt, scan_key
from hpcsynth.repair.subrun import SubRunWriter, subrun_config, subrun_fingerprint
from hpcsynth.rundir import RunDir

MAX_ATTEMPTS = 16  # as repair.attempts' range (config/sections.py)


@dataclass
class RepairResult:
    attempts: int  # attempts asked for
    finished: int  # attempts whose every sub-run is done
    waiting: list[str] = field(default_factory=list)  # sub-runs submitted to Slurm or still running there
    failed: list[str] = field(default_factory=list)  # "attempt-K/PROMPT: shard N failed: why"
    report: dict[str, Any] = field(default_factory=dict)  # what RUN/repair/report.json holds


def repair_config(run: RunDir, config_path: Path | None) -> Config:
    """The run's config; with --config FILE, that file's repair:, validate: and reduce: keys laid over it
    (they decide which records count as refused and how they are generated again)."""
    config = run.config()
    if config_path is None:
        return config
    from hpcsynth.reduce.settings import overlay

    other = overlay(config, config_path, sections=("repair", "validate", "reduce"))
    return dataclasses.replace(config, repair=other.repair, validate=other.validate, reduce=other.reduce)


def repair_run(run: RunDir, attempts: int | None = None, config_path: Path | None = None, executor: str = "local",
               profile: Path | None = None, workers: int = 1,
               say: Callable[[str], None] = lambda line: None) -> RepairResult:
    from hpcsynth.execute.launch import EXECUTORS
    from hpcsynth.repair.report import build_report, write_report

    run.require_planned()
    config = repair_config(run, config_path)
    wanted = config.repair.attempts if attempts is None else attempts
    if not 1 <= wanted <= MAX_ATTEMPTS:
        raise HpcsynthError(f"--attempts must be between 1 and {MAX_ATTEMPTS}, got {wanted}")
    if executor not in EXECUTORS:
        raise HpcsynthError(f"--executor {executor!r} is not available; choose one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise HpcsynthError(f"--workers must be 1 or more, got {workers}")
    _check_done(run)  # every shard done: the refused set of a run still running would move under the repair
    formats = prompt_formats(run.manifest())
    result = RepairResult(wanted, 0)
    run.repair_dir.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(run.repair_dir / ".lock", "`hpcsynth repair`", writing=run.repair_dir)
    try:
        for attempt in range(1, wanted + 1):
            scan = plan_attempt(run, attempt, config, formats, say)
            if not any(p["candidates"] for p in scan.by_prompt.values()):
                say(f"attempt {attempt}: nothing left to repair")
                result.finished = attempt - 1
                break
            if not work_attempt(run, attempt, executor, workers, profile, result, say):
                break
            result.finished = attempt
        if result.finished == wanted:
            _scan(run, wanted, config, formats)  # what attempt N recovered
        result.report = build_report(run, config)
        write_report(run, result.report)
    finally:
        lock.release()
    return result


def _check_done(run: RunDir) -> None:
    digest = run.fingerprint()
    planned = run.shard_ids()
    missing = [shard for shard in planned if not run.is_done(shard, digest)]
    if missing:
        raise RunError(f"{len(missing):,} of {len(planned):,} shards of {run.root} are not done (the first: "
                       f"{missing[0]}); repair needs every shard done: finish the run with `hpcsynth launch "
                       f"{run.root}`, then repair it")


def _scan(run: RunDir, attempt: int, config: Config, formats: dict[str, str]) -> Scan:
    return cached_scan(run, attempt, scan_key(run, attempt, config, formats)) or \
        scan_attempt(run, attempt, config, formats)


def plan_attempt(run: RunDir, attempt: int, config: Config, formats: dict[str, str],
                 say: Callable[[str], None]) -> Scan:
    """Scan attempt K-1 and make attempt K's sub-runs hold exactly its candidates; returns the scan."""
    key = scan_key(run, attempt - 1, config, formats)
    scan = cached_scan(run, attempt - 1, key)
    if scan is not None and not any(_needs_plan(run, attempt, p, scan, config) for p in config.prompts):
        return scan  # nothing changed since the last repair: no validation, no planning
    writers: dict[str, SubRunWriter] = {}

    def writer_for(prompt: str) -> SubRunWriter:
        if prompt not in writers:
            sub = RunDir(run.repair_run_dir(attempt, prompt))
            writers[prompt] = SubRunWriter(sub, subrun_config(config, prompt, attempt), attempt,
                                           float(run.manifest().get("bytes_per_token", 4.0)))
        return writers[prompt]

    try:
        scan = scan_attempt(run, attempt - 1, config, formats, writer_for)
        for prompt in config.prompts:
            writer = writers.get(prompt)
            if _needs_plan(run, attempt, prompt, scan, config):
                _replace(run, attempt, prompt, writer, key, say)
            elif writer is not None:
                writer.discard()
            writers.pop(prompt, None)
    finally:
        for writer in writers.values():
            writer.discard()
    return scan


def _needs_plan(run: RunDir, attempt: int, prompt: str, scan: Scan, config: Config) -> bool:
    """Whether attempt K's sub-run of `prompt` must be (re)planned for the scan's candidates; RunError when it
    would have to be but already holds done shards (its refused set changed under finished work)."""
    sub = RunDir(run.repair_run_dir(attempt, prompt))
    counts = scan.by_prompt.get(prompt) or {"candidates": 0}
    header = repair_header(sub) if sub.manifest_path.is_file() else None
    if header is None and sub.done_ids():
        raise RunError(f"{sub.root} has done shards but no readable repair manifest; move it away (its outputs are "
                       f"kept there) and run repair again")
    if header is None:
        return bool(counts["candidates"]) or sub.root.exists()
    done = bool(sub.done_ids())
    if counts["candidates"] and header.get("refused_sha256") == counts.get("candidates_sha256"):
        try:
            same = sub.fingerprint() == subrun_fingerprint(subrun_config(config, prompt, attempt))
        except RunError:
            same = False
        return not same and not done  # new repair settings: planned again while nothing of it is done
    if done:
        raise RunError(f"{sub.root}: attempt {attempt} of prompt {prompt!r} was planned for {header.get('records')} "
                       f"refused record(s) and has done shards, but {counts['candidates']} are refused now: the "
                       f"run's outputs or the validation settings (validate:, reduce.min_chars, drop_truncated, "
                       f"repair.checks) changed since; repair with the settings it started with (--config), or "
                       f"remove {run.repair_dir} to start the repair over")
    return True


def _replace(run: RunDir, attempt: int, prompt: str, writer: SubRunWriter | None, key: str,
             say: Callable[[str], None]) -> None:
    sub = RunDir(run.repair_run_dir(attempt, prompt))
    if writer is None or not writer.records:
        if writer is not None:
            writer.discard()
        if sub.root.exists():  # planned before for records that pass now, and nothing of it done
            shutil.rmtree(sub.root)
        return
    again = sub.manifest_path.is_file()
    writer.commit(key)
    say(f"attempt {attempt}: {'planned again' if again else 'planned'} {writer.records:,} record(s) of {prompt} "
        f"in {sub.root}")


def work_attempt(run: RunDir, attempt: int, executor: str, workers: int, profile: Path | None,
                 result: RepairResult, say: Callable[[str], None]) -> bool:
    """launch_run on every sub-run of attempt K not yet done; True once all of them are done."""
    from hpcsynth.execute.launch import launch_run

    complete = True
    for number, prompt, sub in run.repair_runs():
        if number != attempt or _done(sub):
            continue
        name = f"attempt-{attempt}/{prompt}"
        if executor == "slurm":
            from hpcsynth.execute.slurm_jobs import active_jobs

            if not active_jobs(sub):
                report = launch_run(sub, "slurm", profile=profile)
                say(f"{name}: submitted {', '.join(a['job_id'] for a in report.arrays) or 'nothing'}")
            result.waiting.append(name)
            complete = False
            continue
        say(f"{name}: generating {sub.manifest()['documents']:,} record(s) again")
        with _own_log_handlers():
            report = launch_run(sub, "local", workers=workers, retry_failed=True)  # a failed shard: retried
        result.failed += [f"{name}: shard {shard} failed: {why}" for shard, why in report.failed]
        result.failed += [f"{name}: {line}" for line in report.worker_errors]
        complete = complete and _done(sub)
    return complete


def _done(sub: RunDir) -> bool:
    digest = sub.fingerprint()
    return all(sub.is_done(shard, digest) for shard in sub.shard_ids())


@contextlib.contextmanager
def _own_log_handlers() -> Iterator[None]:
    """Each sub-run's worker logs to its own RUN/repair/.../logs/: the file handler launch adds goes after it."""
    logger = logging.getLogger("hpcsynth")
    before = list(logger.handlers)
    try:
        yield
    finally:
        for handler in set(logger.handlers) - set(before):
            handler.close()
        logger.handlers = before


__all__ = ["RepairResult", "plan_attempt", "repair_config", "repair_run", "work_attempt"]
