"""What every command handler shares: one-line output, the grid test, the plan's config and profile."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hpcsynth.errors import HpcsynthError


def inert(text: str) -> str:
    """One line with no control characters: messages quote paths and markers that anyone may have named,
    and a newline or an escape sequence in them must not break the line or reach the terminal."""
    return "".join("?" if (ord(c) < 32 and c != "\t") or 127 <= ord(c) < 160 else c for c in text)


def grid_of(path: Path) -> dict | None:
    """The run's grid.json when RUN is a grid run, else None (a plain run)."""
    from hpcsynth.rundir import RunDir
    from hpcsynth.study.grid import read_grid_file

    return read_grid_file(RunDir(path))


def plan_config(args: argparse.Namespace) -> Any:
    """The config `plan` plans with, its model checked before any shard is written (a directory this login
    node does not see is left to launch, which knows where the workers run)."""
    from hpcsynth.config import load_config
    from hpcsynth.generate.engines import check_model

    if args.jobs < 0:
        raise HpcsynthError(f"--jobs must be 1 or more (0: one per CPU), got {args.jobs}")
    config = load_config(args.config)
    check_model(config, str(args.config), here=False)
    return config


def with_plan_flags(args: argparse.Namespace, config: Any) -> Any:
    """The config with plan's flags laid over it (--skip-bad-files sets plan.skip_bad_files)."""
    if not getattr(args, "skip_bad_files", False):
        return config
    import dataclasses

    return dataclasses.replace(config, plan=dataclasses.replace(config.plan, skip_bad_files=True))


def check_plan_model(config: Any, source: str, executor: str) -> None:
    """A local model directory missing on this machine fails plan, not launch; a Slurm plan only warns: the
    compute nodes may see a directory the login node does not (launch checks it where the workers run)."""
    from hpcsynth.errors import ConfigError
    from hpcsynth.generate.engines import check_model

    try:
        check_model(config, source, here=True)
    except ConfigError as exc:
        if executor != "slurm":
            raise ConfigError(f"{exc}; nothing was planned (a directory only the compute nodes see: plan with "
                              f"--executor slurm, which leaves the check to launch)") from None
        print(f"hpcsynth: warning: {inert(str(exc))}; launch checks it again where the workers run", file=sys.stderr)


def print_plan_warnings(summary: dict) -> None:
    """Files lost (plan --skip-bad-files) and filter fields some documents lack: on stderr, after the table."""
    for entry in summary.get("lost_files", []):
        print(inert(f"hpcsynth: warning: lost file {entry['source']} ({entry['bytes']:,} bytes, {entry['documents']:,} "
                    f"documents read before the failure kept): {entry['reason']}"), file=sys.stderr)
    for warning in summary.get("warnings", []):
        print(f"hpcsynth: warning: {inert(warning)}", file=sys.stderr)


def plan_profile(args: argparse.Namespace, config: Any) -> Any:
    """The Slurm settings of `plan --executor slurm` (None for a local plan)."""
    if args.executor != "slurm":
        return None
    from hpcsynth.execute.launch import load_profile

    return load_profile(args.profile, config.slurm) if args.profile else config.slurm
