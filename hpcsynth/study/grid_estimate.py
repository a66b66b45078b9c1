"""`hpcsynth estimate GRID`: the estimate per (generator, prompt) cell of an experiment grid, and its account.

Each generator's run (RUN/generators/NAME) is estimated as a plain run is (its own measured lengths and
rate, else the published ones for its model); rows carry the generator's grid name. A generator with no
rate anywhere is left out with a note, so that one new model does not hide the others' figures.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hpcsynth.errors import HpcsynthError
from hpcsynth.rundir import RunDir
from hpcsynth.status.account import account_run, combine_accounts
from hpcsynth.status.collect import collect_run
from hpcsynth.study.estimate import Estimate, make_estimate
from hpcsynth.study.grid import grid_generator_runs, require_generator_run
from hpcsynth.study.measure import inputs_from_run


def estimate_grid(run: RunDir, grid: dict[str, Any], given: dict[str, Any],
                  price: float) -> tuple[Estimate, dict[str, Any] | None]:
    rows, notes, units, accounts = [], [], set(), {}
    first_error: HpcsynthError | None = None
    last: Estimate | None = None
    for name, sub in grid_generator_runs(run, grid):
        try:
            require_generator_run(run, name)
        except HpcsynthError as exc:
            first_error = first_error or exc
            notes.append(f"{name}: no estimate ({exc})")
            continue
        launched = sub.tasks_dir.is_dir() or sub.launches_dir.is_dir()
        try:
            collected = collect_run(sub, slurm=launched)  # one read of the run for the estimate and the account
            if launched:
                accounts[name] = account_run(sub, price, collected)
            part = make_estimate(inputs_from_run(sub, collected, **given))
        except HpcsynthError as exc:
            first_error = first_error or exc
            notes.append(f"{name}: no estimate ({exc})")
            continue
        last = part
        rows += [dataclasses.replace(row, generator=name) for row in part.rows]
        notes += [n for n in part.notes if n not in notes]
        units.add(part.unit)
    if not rows:
        if accounts and first_error is not None:
            raise GridAccountOnly(str(first_error), combine_accounts(accounts))
        raise first_error or HpcsynthError(f"{run.root}: the grid has no generator")
    unit = "GPU" if "GPU" in units else units.pop()
    assert last is not None  # rows come from a part: the loop set last with them
    estimate = Estimate(rows, last.gpus, last.price, last.efficiency, last.input_tokens, unit, notes)
    return estimate, combine_accounts(accounts) if accounts else None


class GridAccountOnly(HpcsynthError):
    """No generator of the grid could be estimated, but the grid has worked: its account stands alone."""

    def __init__(self, why: str, account: dict[str, Any]) -> None:
        super().__init__(why)
        self.account = account
