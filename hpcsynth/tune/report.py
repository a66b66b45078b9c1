"""What a tune shows: the trials as a table, and the estimate its winner makes (also `estimate --tuned DIR`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hpcsynth.study.estimate import Estimate, Inputs, make_estimate


def tuned_inputs(inputs: Inputs, tune: dict[str, Any], where: Path) -> Inputs:
    """`inputs` with the tune's winning rate for its generators (a rate the user gave still wins) and its
    measured output lengths where the run measured none."""
    winner = tune["winner"]
    device = tune.get("device", "")
    source = (f"measured by hpcsynth tune in {where} (trial {winner['trial']}, steady state, "
              f"{device or 'unknown device'})")
    rates = {**inputs.measured_rates, **{g: (float(winner["tokens_per_s"]), source) for g in inputs.generators}}
    lengths = dict(inputs.measured_lengths)
    for prompt, length in (winner.get("output_tokens_per_record") or {}).items():
        if prompt not in lengths and isinstance(length, (int, float)) and length > 0:
            lengths[prompt] = (float(length), f"measured by hpcsynth tune in {where} (its sample)")
    return dataclasses.replace(inputs, measured_rates=rates, measured_lengths=lengths, unit=unit_of(device))


def unit_of(device: str) -> str:
    """What a tune's rate is per: a GPU, a CPU worker (the tiny model, the fake engine), or an endpoint's server."""
    return {"gpu": "GPU", "endpoint": "server"}.get(device, "worker")


def tune_estimate(tune: dict[str, Any], where: Path, prompts: tuple[str, ...], documents: int,
                  max_tokens: int) -> Estimate:
    """The cost of `documents` documents x the config's prompts at the winner's rate and lengths."""
    inputs = Inputs(documents=documents, prompts=prompts, generators=(str(tune.get("model") or "the model"),),
                    max_output_tokens=float(max_tokens))
    return make_estimate(tuned_inputs(inputs, tune, where))


def render_trials(tune: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    winner = (tune.get("winner") or {}).get("trial")
    unit = unit_of(str(tune.get("device")))
    table = Table(title=f"tune: {len(tune['trials'])} trial(s), {tune.get('requests', 0):,} requests each "
                        f"({tune.get('engine')}, {tune.get('device')})", box=None, padding=(0, 1, 0, 0),
                  title_justify="left")
    for column in ("#", "settings", "state", f"tok/s/{unit}", "start s", "prefix hit", "accepted", "KV peak",
                   "preempt"):
        table.add_column(column, justify="left" if column in ("settings", "state") else "right",
                         no_wrap=column != "settings")
    for trial in tune["trials"]:
        t = trial.get("telemetry") or {}
        ok = trial["state"] == "ok"
        settings = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in trial.get("settings", {}).items()) or "(as given)"
        state = trial["state"] + (" *" if trial["trial"] == winner else "")
        table.add_row(str(trial["trial"]), settings, state,
                      f"{trial['tokens_per_s']:,.1f}" if ok else "-", f"{trial['load_s']:.1f}" if ok else "-",
                      _share(t.get("prefix_cache_hit_rate")), _share(t.get("spec_acceptance_rate")),
                      _share(t.get("kv_cache_peak")), f"{t['preemptions']:,.0f}" if "preemptions" in t else "-")
    console.print(table)
    for trial in tune["trials"]:
        if trial["state"] not in ("ok", "skipped"):
            console.print(f"  trial {trial['trial']} {trial['state']}: {trial.get('error', '')}", markup=False,
                          highlight=False)


def _share(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else "-"
