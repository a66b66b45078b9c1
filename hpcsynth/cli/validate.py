"""`hpcsynth validate`: run the checks over a run's outputs and show a quality table per prompt.

Display only; the work is quality.validate_run.
"""

from __future__ import annotations

import argparse
import dataclasses

from hpcsynth.errors import HpcsynthError


def validate_command(args: argparse.Namespace) -> int:
    from hpcsynth.config import load_config
    from hpcsynth.reduce.validate.quality import validate_run, write_report
    from hpcsynth.rundir import RunDir

    run = RunDir(args.run)
    config = run.config()
    source = ""
    if args.config:
        # Only the thresholds come from the other file: the run's outputs were made under its own config.
        other = load_config(args.config)
        config = dataclasses.replace(config, validate=other.validate)
        source = f"{args.config} (validate: section)"
    report = validate_run(run, config, source, write=False)
    if report["records"] == 0:
        raise HpcsynthError(f"{run.root}: the done shards hold no records to validate")
    print_table(report)
    # Written after the table: on a run directory we may only read, the table is still shown.
    write_report(run, report)
    return 0


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    n = report["diversity_n"]
    table = Table(title=f"validation of {report['run']} ({report['shards_checked']} shards, action: "
                        f"{report['action']})", title_justify="left")
    for name, justify in (("prompt", "left"), ("format", "left"), ("records", "right"), ("accepted", "right"),
                          ("failed checks", "left"), ("out/in", "right"), ("truncated", "right"),
                          (f"distinct-{n}", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for prompt, row in report["prompts"].items():
        # Both kinds, each labelled: with validate.action keep, a check's failures are flagged and kept, yet
        # a record with no text at all is still rejected; showing one kind hid the other (287 format
        # failures behind "empty 1").
        failed = [f"{check} {count:,} (rejected)" for check, count in row["rejected"].items()]
        failed += [f"{check} {count:,} (kept)" for check, count in row["flagged"].items()]
        table.add_row(prompt, row["format"], f"{row['records']:,}",
                      f"{row['accepted']:,} ({_pct(row['accepted_share'])})", "\n".join(failed) or "-",
                      _num(row["length_ratio"]), _pct(row["truncation_rate"]), _num(row["distinct_ngrams"]))
    console = Console(width=max(Console().width, 120))
    console.print(table)
    # Each record counts under at most one check, so the counts add up.
    flagged = sum(sum(r["flagged"].values()) for r in report["prompts"].values())
    rejected = report["records"] - report["accepted"]
    clean = report["accepted"] - flagged
    kept = f"; {flagged:,} failed a check and were kept (validate.action: keep)" if flagged else ""
    print(f"{clean:,} of {report['records']:,} records pass every check{kept}; {rejected:,} rejected; each check's "
          f"counts and three samples in {report['run']}/validate/report.json")
    if report["shards_skipped"]:
        print(f"note: {len(report['shards_skipped'])} shard(s) not done were left out")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
