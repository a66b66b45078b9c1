"""A reduce of part of a run: some of its prompts, with some reduce: keys changed (an experiment grid's
cell and mix-in, hpcsynth/study/grid_reduce.py); or all of it under other reduce:, validate: and card:
sections (`reduce RUN --config FILE`, reduce/settings.py).

The view travels in the reduce's spec (run_info["view"]), so a part run by a pool process or a Slurm
array task applies the same one; its settings are part of the spec key, so parts made for one cell are
never taken for another's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hpcsynth.config import Config, config_from_dict, config_to_dict
from hpcsynth.errors import RunError


def apply_view(config: Config, view: dict[str, Any] | None, source: str = "the reduce spec") -> Config:
    """config with view["prompts"] as its prompts and view["reduce"] (["validate"], ["card"]) over those keys."""
    if not view:
        return config
    prompts = tuple(view.get("prompts") or config.prompts)
    unknown = sorted(set(prompts) - set(config.prompts))
    if unknown:
        raise RunError(f"{source}: prompt {unknown[0]!r} is not one of the run's ({', '.join(config.prompts)})")
    data = config_to_dict(config)
    # validate: and card: come from `reduce --config FILE` (reduce/settings.py), which sends every
    # reduce-side section whole: the parts of a re-mix apply the same settings as its prepare did.
    for section in ("reduce", "validate", "card"):
        data[section] = {**data[section], **(view.get(section) or {})}
    built = config_from_dict(data, source=source)
    return dataclasses.replace(config, prompts=prompts, reduce=built.reduce, validate=built.validate,
                               card=built.card)
