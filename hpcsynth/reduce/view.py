"""A reduce of part of a run: some of its prompts, with some reduce: keys changed (an experiment grid's
cell and mix-in, hpcsynth/study/grid_reduce.py).

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
    """config with view["prompts"] as its prompts and view["reduce"] over its reduce: keys."""
    if not view:
        return config
    prompts = tuple(view.get("prompts") or config.prompts)
    unknown = sorted(set(prompts) - set(config.prompts))
    if unknown:
        raise RunError(f"{source}: prompt {unknown[0]!r} is not one of the run's ({', '.join(config.prompts)})")
    data = config_to_dict(config)
    data["reduce"] = {**data["reduce"], **(view.get("reduce") or {})}
    reduced = config_from_dict(data, source=source).reduce
    return dataclasses.replace(config, prompts=prompts, reduce=reduced)
