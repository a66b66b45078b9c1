"""What a plan did, in numbers (RUN/plan/summary.json) and on the terminal (rich), with its progress bar."""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def summarize(manifest: dict[str, Any], rows: list[dict[str, Any]], totals: dict[str, Any], ratio_source: str,
              jobs: int, groups: int) -> dict[str, Any]:
    """manifest: the header the plan wrote; rows: its shard rows."""
    sizes = sorted(row["est_tokens"] for row in rows)
    spread = {}
    if sizes:
        spread = {"min": sizes[0], "p50": int(statistics.median(sizes)), "max": sizes[-1],
                  "mean": round(sum(sizes) / len(sizes))}
    routing = manifest.get("routing")
    return {
        "documents": manifest["documents"], "sources": manifest["sources"], "est_tokens": manifest["est_tokens"],
        "shards": len(sizes), "shard_est_tokens": spread, "bytes_per_token": manifest["bytes_per_token"],
        "bytes_per_token_source": ratio_source, "records_read": totals["read"], "rejected": totals["rejected"],
        "rejected_by_reason": totals["reasons"], "filtered_by_rule": totals["filtered"],
        "inputs": len(manifest["inputs"]), "input_groups": groups, "jobs": jobs,
        "lost_files": totals["lost_files"], "lost_bytes": totals["lost_bytes"], "input_bytes": totals["input_bytes"],
        "warnings": totals["warnings"],
        **({"routing": {k: routing[k] for k in ("pairs", "unrouted", "by_prompt")}} if routing else {}),
    }


def render_summary(summary: dict[str, Any], run: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"plan of {run}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    spread = summary["shard_est_tokens"]
    table.add_row("documents", f"{summary['documents']:,} (from {summary['sources']:,} sources)")
    table.add_row("estimated tokens", f"{summary['est_tokens']:,} at {summary['bytes_per_token']} bytes/token")
    table.add_row("shards", f"{summary['shards']:,}")
    if spread:
        table.add_row("tokens per shard", f"min {spread['min']:,} / median {spread['p50']:,} / max {spread['max']:,}")
    table.add_row("records read", f"{summary['records_read']:,} from {summary['inputs']:,} input files")
    table.add_row("rejected", f"{summary['rejected']:,}")
    for reason, count in summary["rejected_by_reason"].items():
        table.add_row(f"  {reason}", f"{count:,}")
    lost = summary.get("lost_files", [])
    if lost:  # only under plan.skip_bad_files: otherwise a lost file fails the plan
        kept = sum(entry["documents"] for entry in lost)
        table.add_row("lost files", f"{len(lost):,} ({summary['lost_bytes']:,} of {summary['input_bytes']:,} input "
                                    f"bytes; {kept:,} documents read before the failure kept)")
        for entry in lost:
            table.add_row(f"  {entry['source']}", entry["reason"])
    for rule, count in summary["filtered_by_rule"].items():
        table.add_row(f"filtered by {rule}", f"{count:,}")
    routing = summary.get("routing")
    if routing:  # prompts: [{name, when}]: which prompts each document goes to, decided here
        table.add_row("routed pairs", f"{routing['pairs']:,} (document x prompt)")
        for name, counts in routing["by_prompt"].items():
            table.add_row(f"  {name}", f"{counts['documents']:,} documents")
        table.add_row("routed to no prompt", f"{routing['unrouted']:,} (kept as originals for the mix)")
    table.add_row("time", f"{summary.get('seconds', 0):.1f} s with {summary['jobs']} job(s)")
    Console().print(table)


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A bar over input bytes on a terminal; nothing in logs and pipes."""
    if not sys.stderr.isatty() and not any(os.environ.get(v) for v in ("FORCE_COLOR", "TTY_INTERACTIVE",
                                                                         "TTY_COMPATIBLE")):
        yield lambda done, total: None  # rich would say the same, after ~45 ms of imports before the plan
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda done, total: None
        return
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
        yield update
