"""`hpcsynth repair RUN`: generate again the records validation refused; the work is hpcsynth.repair."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="a run whose shards are done")
    parser.add_argument("--attempts", type=int, help="attempts 1..N, each generating what the one before left "
                                                     "refused (default: repair.attempts, 1)")
    parser.add_argument("--config", type=Path, help="a file whose repair:, validate: and reduce: keys are laid over "
                                                    "the run's (which checks to repair, repair.sampling)")
    parser.add_argument("--executor", default="local", choices=["local", "slurm"],
                        help="where the sub-runs' workers run; slurm submits one attempt and returns: run repair "
                             "again once its jobs end")
    parser.add_argument("--profile", type=Path, help="site profile YAML with a slurm: section (with --executor slurm)")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes, one per GPU (default: 1)")


def repair_command(args: argparse.Namespace) -> int:
    from hpcsynth.cli.common import inert
    from hpcsynth.pool import stops_on_term_and_hup
    from hpcsynth.repair import repair_run
    from hpcsynth.repair.report import report_lines
    from hpcsynth.rundir import RunDir

    run = RunDir(args.run)
    # `kill PID` and `hpcsynth cancel RUN` (which finds it by RUN/repair/.lock) stop it as Ctrl-C does, while it
    # validates and plans too: its lock and staging folders go, and its sub-run's workers end with it.
    with stops_on_term_and_hup():
        result = repair_run(run, args.attempts, args.config, args.executor, args.profile, args.workers,
                            say=lambda line: print(inert(line), flush=True))
    for line in result.failed[:10]:
        print(inert(f"  {line}"), file=sys.stderr)
    print(f"repair: {result.finished} of {result.attempts} attempt(s) done; report in {run.repair_report_path}")
    for line in report_lines(result.report):
        print(inert(line))
    if result.waiting:
        print(f"  waiting for {', '.join(result.waiting)} on Slurm; run `hpcsynth repair {args.run}"
              f"{f' --attempts {result.attempts}' if args.attempts else ''}` again once its jobs end "
              f"(`hpcsynth status {args.run}` shows them)")
        return 0
    if result.failed:
        print(f"  run `hpcsynth repair {args.run}` again to go on: it keeps what was committed and tries the failed "
              f"shards again", file=sys.stderr)
        return 1
    print(f"  the next `hpcsynth reduce {args.run}` takes each refused record's first passing attempt")
    return 0


def repair_summary(run) -> tuple[dict | None, list[str]]:  # type: ignore[no-untyped-def]
    """For `hpcsynth validate`: the yield of the last `hpcsynth repair` (RUN/repair/report.json) per prompt and
    its cost, and the lines that show it; (None, []) for a run never repaired."""
    from hpcsynth.repair.report import report_lines
    from hpcsynth.status.repair import repair_report

    report = repair_report(run)
    if report is None or not isinstance(report.get("prompts"), dict):
        return None, []
    try:
        lines = report_lines(report)
    except (KeyError, TypeError, ValueError):  # a hand-edited or foreign report: not ours to show
        return None, []
    summary = {"attempts_finished": report.get("attempts_finished"), "prompts": report["prompts"],
               "cost": report.get("cost"), "file": str(run.repair_report_path)}
    return summary, [f"repair (as of the last `hpcsynth repair`, {run.repair_report_path}): refused before, recovered "
                     f"by each attempt, still refused"] + lines
