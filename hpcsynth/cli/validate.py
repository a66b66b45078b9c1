"""`hpcsynth validate`: run the checks over a run's outputs and show a quality table per prompt.

Display only; the work is quality.validate_run.
"""

from __future__ import annotations

import argparse
import dataclasses

from hpcsynth.errors import HpcsynthError


def validate_command(args: argparse.Namespace) -> int:
    from hpcsynth.reduce.settings import overlay
    from hpcsynth.reduce.validate.quality import validate_run, validation_settings, whatif_path, write_report
    from hpcsynth.rundir import RunDir

    run = RunDir(args.run)
    config = run.config()
    source, path = "", run.validate_report_path
    if args.config:
        # Only the checks' settings come from the other file, laid over the run's as `reduce --config` lays
        # them: the run's outputs were made under its own config.
        other = overlay(config, args.config, sections=("validate", "reduce"))
        other = dataclasses.replace(config, validate=other.validate, reduce=other.reduce)
        if validation_settings(other) != validation_settings(config):
            # A what-if: RUN/validate/report.json is what the dataset card quotes, under the run's settings.
            source, path = f"{args.config} (validate: section)", whatif_path(run, validation_settings(other))
        config = other
    report = validate_run(run, config, source, write=False)
    if report["records"] == 0:
        raise HpcsynthError(f"{run.root}: the done shards hold no records to validate")
    print_table(report, str(path))
    from hpcsynth.cli.repair import repair_summary

    repaired, lines = repair_summary(run)  # the yield before and after `hpcsynth repair`, when it ran
    for line in lines:
        print(line)
    if repaired:
        report["repair"] = repaired
    # Written after the table: on a run directory we may only read, the table is still shown.
    write_report(run, report, path)
    if path != run.validate_report_path:
        print(f"a what-if under {args.config}'s settings: written to {path}; {run.validate_report_path} (the run's "
              f"own settings, which the dataset card quotes) is left as it was")
    return 0


def print_table(report: dict, path: str | None = None) -> None:
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
        failed = [f"{check} {count:,} (rejected){_causes(row) if check == 'contaminated' else ''}"
                  for check, count in row["rejected"].items()]
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
          f"counts and three samples in {path or report['run'] + '/validate/report.json'}")
    found = report.get("decontamination")
    if found:
        names = ", ".join(b["name"] for b in found["benchmarks"])
        held = sum(r["rejected"].get("contaminated", 0) for r in report["prompts"].values())
        print(f"decontamination: {held:,} records hold a {found['ngram']}-gram of {names} "
              f"({found['ngrams']:,} n-grams); refused whatever validate.action says")
    if report["shards_skipped"]:
        print(f"note: {len(report['shards_skipped'])} shard(s) not done were left out")


def _causes(row: dict) -> str:
    """Under `contaminated`: how many records copied the benchmark text from their source, how many wrote it."""
    found = row.get("contamination") or {}
    return f"\n  {found.get('copied', 0):,} copied, {found.get('written', 0):,} written" if found else ""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
