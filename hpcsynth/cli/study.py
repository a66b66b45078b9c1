"""`hpcsynth estimate [RUN]`: the cost before (estimate) and, for a run that has worked, so far (account)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from hpcsynth.errors import HpcsynthError


def count(text: str) -> int:
    """A whole number written plainly or as 339e6; argparse turns the ValueError into a one-line usage error."""
    value = float(text)
    if not math.isfinite(value) or value != int(value):
        raise ValueError(text)
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", type=Path, help="a planned run: its documents, prompts and generator, "
                                                         "and what it has measured so far")
    parser.add_argument("--documents", type=count, help="documents to rephrase, e.g. 339e6 (instead of a run's plan)")
    parser.add_argument("--tokens", type=float, help="total completion tokens, e.g. 486e9 (instead of documents x "
                                                     "prompts x tokens per record)")
    parser.add_argument("--prompts", help="comma-separated prompt names (default: the run's, else faq,math,table,"
                                          "tutorial)")
    parser.add_argument("--generator", action="append", metavar="MODEL",
                        help="generator to price from the published throughput table; repeat to compare "
                             "(default: the run's model, else SmolLM2-1.7B-Instruct)")
    parser.add_argument("--tokens-per-second", type=float, default=0.0,
                        help="completion tokens per second per GPU (default: measured by the run, else published)")
    parser.add_argument("--output-tokens", type=float, default=0.0,
                        help="completion tokens per record (default: measured by the run, else published)")
    parser.add_argument("--gpu", default="H100", help="GPU of the published throughput table")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs working at once, for the wall time")
    parser.add_argument("--price", type=float, default=0.0, help="dollars per GPU-hour")
    parser.add_argument("--efficiency", type=float, default=1.0,
                        help="share of the ideal rate a campaign keeps (FinePhrase's kept ~0.43)")
    parser.add_argument("--tuned", type=Path, metavar="TUNE_DIR",
                        help="price at the winning rate of `hpcsynth tune` (its --out directory), and its measured "
                             "output lengths where the run measured none; --tokens-per-second still wins")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw the cost breakdown as a PNG")


def estimate_command(args: argparse.Namespace) -> int:
    from hpcsynth.study.estimate import Inputs, make_estimate

    if args.plot:
        from hpcsynth.study.charts import check_plot_path

        check_plot_path(args.plot)
    given = {"tokens_per_s": args.tokens_per_second, "output_tokens": args.output_tokens, "gpu": args.gpu,
             "gpus": args.gpus, "price": args.price, "efficiency": args.efficiency}
    if args.documents is not None:
        given["documents"] = args.documents
    if args.tokens is not None:
        given["tokens"] = args.tokens
    if args.prompts is not None:
        prompts = tuple(p.strip() for p in args.prompts.split(",") if p.strip())
        if not prompts:
            raise HpcsynthError(f"--prompts {args.prompts!r} names no prompt; e.g. --prompts faq,math")
        given["prompts"] = prompts
    if args.generator:
        given["generators"] = tuple(args.generator)
    account = None
    if args.run is not None:
        from hpcsynth.rundir import RunDir
        from hpcsynth.status.account import account_run
        from hpcsynth.study.grid import read_grid_file
        from hpcsynth.study.measure import inputs_from_run

        run = RunDir(args.run)
        grid = read_grid_file(run)
        if grid is not None and not args.generator:  # a grid: every (generator, prompt) cell
            from hpcsynth.study.grid_estimate import GridAccountOnly, estimate_grid

            try:
                estimate, account = estimate_grid(run, grid, given, args.price)
            except GridAccountOnly as exc:
                return _account_only(exc.account, str(exc), args)
            return _show(estimate, account, args)
        from hpcsynth.status.collect import collect_run

        launched = run.tasks_dir.is_dir() or run.launches_dir.is_dir()  # launched: it has an account
        collected = collect_run(run, slurm=launched)  # one read of the run for the estimate and the account
        inputs = inputs_from_run(run, collected, **given)
        if launched:
            account = account_run(run, args.price, collected)
            account.update(_repair_account(run, args.price))
    else:
        inputs = Inputs(**given)
    if args.tuned is not None:
        from hpcsynth.tune import read_tune
        from hpcsynth.tune.report import tuned_inputs

        inputs = tuned_inputs(inputs, read_tune(args.tuned), args.tuned)
    try:
        estimate = make_estimate(inputs)
    except HpcsynthError as exc:
        if account is None:
            raise
        # A run whose generator has no published rate and has measured none yet: its account still stands.
        return _account_only(account, str(exc), args)
    return _show(estimate, account, args)


def _repair_account(run, price: float) -> dict:
    """{"repair": what `hpcsynth repair`'s sub-runs cost} apart from the run's own account; {} without repair."""
    from hpcsynth.status.repair import repair_progress, repair_totals

    subs = repair_progress(run)
    if not subs:
        return {}
    totals = repair_totals(subs)
    return {"repair": {**totals, "sub_runs": len(subs), "attempts": len({s["attempt"] for s in subs}),
                       "cost": round(totals["gpu_seconds"] / 3600 * price, 2)}}


def _show(estimate, account: dict | None, args: argparse.Namespace) -> int:
    import orjson

    if args.plot:
        from hpcsynth.study.charts import plot_estimate

        plot_estimate(estimate, account, args.plot)

    if account is not None:
        from hpcsynth.study.estimate import remaining

        account = {**account, "remaining": remaining(estimate, account["tokens_committed"])}
    if args.json:
        data = {**estimate.to_json(), "account": account, "plot": str(args.plot) if args.plot else None}
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    from hpcsynth.study.view import render_estimate

    render_estimate(estimate, account)
    if args.plot:
        print(f"chart: {args.plot}")
    return 0


def _account_only(account: dict, why: str, args: argparse.Namespace) -> int:
    import orjson

    if args.plot:
        raise HpcsynthError(f"no estimate to draw: {why}")
    if args.json:
        data = {"rows": [], "estimate_error": why, "account": account}
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    from rich.console import Console

    from hpcsynth.study.view import render_account

    console = Console()
    console.print(f"no estimate: {why}", markup=False)
    render_account(account, console)
    return 0
