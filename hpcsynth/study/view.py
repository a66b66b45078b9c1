"""How an estimate and an account look on a terminal (rich); `--json` prints the same figures whole."""

from __future__ import annotations

from typing import Any

from hpcsynth.study.estimate import Estimate


def render_estimate(estimate: Estimate, account: dict[str, Any] | None = None, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    unit = estimate.unit
    table = Table(title=f"estimate on {estimate.gpus:,} {unit}(s) (tok/s per {unit})"
                        + (f" at ${estimate.price:,.2f}/{unit}-hour" if estimate.price else ""),
                  box=None, padding=(0, 1, 0, 0), title_justify="left")
    for column in ("generator", "prompt", "tok/rec", "tokens", "tok/s", f"{unit}-h", "wall", "cost"):
        table.add_column(column, justify="left" if column in ("generator", "prompt") else "right",
                         no_wrap=True)
    table.columns[0].min_width = max(len(short(r.generator)) for r in estimate.rows)
    table.columns[1].min_width = max(len(r.prompt) for r in estimate.rows)
    previous = None
    for row in estimate.rows:
        # A generator's name once, on its first row: the rows under it are its prompts.
        name, previous = ("" if row.generator == previous else short(row.generator)), row.generator
        table.add_row(name, row.prompt, f"{row.tokens_per_record:,.0f}" if row.tokens_per_record
                      else "-", si(row.tokens), f"{row.tokens_per_s:,.0f}", figure(row.gpu_hours),
                      duration(row.wall_hours), f"${figure(row.cost)}" if estimate.price else "-")
    totals = estimate.totals
    table.add_row("total", "", "", si(totals["tokens"]), "", figure(totals["gpu_hours"]),
                  duration(totals["wall_hours"]), f"${figure(totals['cost'])}" if estimate.price else "-",
                  style="bold")
    console.print(table)
    if estimate.price and totals["tokens"]:
        console.print(f"${totals['cost_per_million_tokens']:,.4f} per million completion tokens")
    if estimate.input_tokens:
        console.print(f"input: ~{si(estimate.input_tokens)} prompt-side tokens (plan's estimate: documents x "
                      f"prompts, with each prompt's instruction); the rates above already include their prefill")
    console.print("where the figures come from:", style="dim")
    for names, source in sources(estimate):
        console.print(f"  {names}: {source}", style="dim", markup=False)
    for note in estimate.notes:
        console.print(f"  {note}", style="dim", markup=False)
    if account:
        render_account(account, console)


def render_account(account: dict[str, Any], console) -> None:
    from rich.table import Table

    unit = account["unit"]
    table = Table(title=f"so far: {hours_text(account['hours']['hours'])} of {unit} time"
                        + (f", ${account['cost']:,.2f}" if account["price_per_hour"] else ""),
                  box=None, padding=(0, 1, 0, 0), title_justify="left")
    for column in ("", f"{unit} time", "share", "how it is known"):
        table.add_column(column, justify="right" if column.endswith(("time", "share")) else "left",
                         no_wrap=column != "how it is known")
    total = account["hours"]["hours"] or 1.0
    rows = [("useful generation", account["useful"])] + [(name.replace("_", " "), fig) for name, fig in
                                                         account["wasted"].items()]
    for name, fig in rows:
        table.add_row(name, hours_text(fig["hours"]), f"{fig['hours'] / total:.0%}", fig["how"], style="dim" if
                      not fig["hours"] else None)
    console.print(table)
    per_million = account["cost_per_million_tokens"]
    console.print(f"{si(account['tokens_committed'])} tokens committed, {si(account['tokens_generated'])} generated; "
                  f"{account['tokens_per_s_generating']:,.0f} tok/s per {unit} while generating, "
                  f"{account['tokens_per_s_effective']:,.0f} over the whole bill"
                  + (f"; ${per_million:,.4f} per million tokens" if per_million is not None and account["price_per_hour"]
                     else ""), markup=False)
    repair = account.get("repair")
    if repair:  # `hpcsynth repair`'s sub-runs, apart from the figures above (the run's own workers)
        spent = (f"{hours_text(repair['gpu_seconds'] / 3600)} of GPU time" if repair["gpu_seconds"] else
                 f"{hours_text(repair['cpu_seconds'] / 3600)} of CPU worker time")
        console.print(f"repair: {repair['records']:,} records generated again in {repair['attempts']} attempt(s) "
                      f"({repair['sub_runs']} sub-runs), {si(repair['completion_tokens'])} tokens, {spent}"
                      + (f", ${repair['cost']:,.2f}" if repair["cost"] else "") + " (not in the figures above)",
                      markup=False)
    left = account.get("remaining")
    if left and left["share"] > 0:
        console.print(f"to go, by the estimate: {left['share']:.0%} of its tokens, {hours_text(left['gpu_hours'])} of "
                      f"{unit} time, {duration(left['wall_hours'])} wall" + (f", ${left['cost']:,.0f}" if left["cost"]
                                                                            else ""), markup=False)


def sources(estimate: Estimate) -> list[tuple[str, str]]:
    """(what, where its figure comes from), one line per distinct source: lengths by prompt, rates by generator."""
    grouped: dict[str, list[str]] = {}
    for row in estimate.rows:
        if row.tokens_per_record:
            grouped.setdefault(f"tokens per record ~ {row.length_source}", []).append(row.prompt)
        grouped.setdefault(f"tok/s ~ {row.rate_source}", []).append(short(row.generator))
    return [(", ".join(dict.fromkeys(names)), source) for source, names in grouped.items()]


def short(generator: str) -> str:
    return generator.rstrip("/").rsplit("/", 1)[-1] or generator


def si(value: float) -> str:
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:,.1f}{suffix}"
    return f"{value:,.0f}"


def figure(value: float) -> str:
    """One decimal for campaigns (14,673.9), three significant digits for a test run (0.00123)."""
    return f"{value:,.1f}" if value >= 10 or value == 0 else f"{value:.3g}"


def hours_text(hours: float) -> str:
    """Hours for a column that holds both a campaign (thousands of hours) and a test run (seconds)."""
    if hours >= 1:
        return f"{hours:,.2f} h"
    if hours * 60 >= 1:
        return f"{hours * 60:.1f} min"
    return f"{hours * 3600:.1f} s"


def duration(hours: float) -> str:
    if hours >= 48:
        return f"{hours / 24:,.1f} days"
    if hours >= 1:
        return f"{hours:,.1f} h"
    return f"{hours * 60:,.1f} min"
