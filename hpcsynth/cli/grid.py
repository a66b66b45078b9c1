"""`hpcsynth plan|launch|status|reduce` on a grid run: what each prints; the work is in grid_*.py.

cli.py hands a command here when the config declares a grid (plan) or RUN holds grid.json (the others).
"""

from __future__ import annotations

import argparse
import sys

from hpcsynth.cli.common import check_plan_model, inert, plan_profile, print_plan_warnings, with_plan_flags
from hpcsynth.errors import HpcsynthError


def plan_grid_command(args: argparse.Namespace, config) -> int:
    from hpcsynth.plan.summary import progress_bar, render_summary
    from hpcsynth.rundir import RunDir
    from hpcsynth.config.grid import expand_grid
    from hpcsynth.study.grid_plan import plan_grid

    config = with_plan_flags(args, config)
    slurm = plan_profile(args, config)
    for generator in expand_grid(config, str(args.config)).generators:  # each one's model, before any shard
        check_plan_model(generator.config, f"{args.config} (generator {generator.name!r})", args.executor)
    with progress_bar("planning") as progress:
        result = plan_grid(config, RunDir(args.run), args.input, jobs=args.jobs, force=args.force,
                           progress=progress, slurm=slurm)
    plan = result.plan
    if not plan.unchanged:
        render_summary(plan.summary, str(plan.run.root))
        print_plan_warnings(plan.summary)
    print(f"planned {plan.documents:,} documents into {plan.shards:,} shards in {plan.run.root}"
          + (" (unchanged)" if plan.unchanged else "") + f"; grid: {len(result.generators)} generator(s) x "
          f"{len(config.prompts)} prompt(s) x {len(config.grid.mixins) or 1} mix-in(s)")
    for name, state in result.generators.items():
        print(f"  generators/{name}: {state} (fingerprint {result.fingerprints[name][:12]})")
    print(f"next: hpcsynth launch {args.run}")
    return 0


def launch_grid_command(args: argparse.Namespace, grid: dict) -> int:
    from hpcsynth.rundir import RunDir
    from hpcsynth.study.grid_run import launch_grid

    if args.config is not None:
        raise HpcsynthError(f"{args.run} is a grid run: change its config by planning it again (`hpcsynth plan "
                            f"CONFIG --run {args.run}`, --force to replace a generator's settings)")
    results = launch_grid(RunDir(args.run), grid, args.executor, retry_failed=args.retry_failed,
                          workers=args.workers, force=args.force, profile=args.profile, verify=args.verify,
                          add_workers=args.add_workers)
    bad, retry = 0, False  # --retry-failed reruns failed shards; a generator's error line carries its own fix
    for result in results:
        report = result.report
        if result.error:
            bad += 1
            print(f"  {result.name}: {inert(result.error)}", file=sys.stderr)
        elif report.executor == "slurm":
            arrays = ", ".join(f"{a['job_id']} ({a['tasks']} tasks)" for a in report.arrays) or "nothing to submit"
            print(f"  {result.name} (slurm): {report.submitted_shards} shards pending, submitted {arrays}")
        else:
            bad += bool(report.failed or report.worker_errors)
            retry = retry or bool(report.failed)
            print(f"  {result.name} ({report.executor}): {report.done}/{report.total} shards done, "
                  f"{len(report.failed)} failed")
            for shard, reason in report.failed[:5]:
                print(f"    shard {shard} failed: {inert(str(reason))}", file=sys.stderr)
            for error in report.worker_errors[:1]:
                print(f"    worker failed: {inert(error)}", file=sys.stderr)
    print(f"launch: {len(results)} generator(s); follow with: hpcsynth status {args.run}"
          + (f"; rerun failures with: hpcsynth launch {args.run} --retry-failed" if retry else ""))
    return 1 if bad else 0


def status_grid_command(args: argparse.Namespace, grid: dict) -> int:
    import orjson

    if args.plot:  # before a watch of hours, not after it
        from hpcsynth.study.charts import check_plot_path

        check_plot_path(args.plot)

    from hpcsynth.rundir import RunDir
    from hpcsynth.study.grid_run import collect_grid_status, render_grid_status, watch_grid_status

    run = RunDir(args.run)
    if args.watch:
        status = watch_grid_status(run, grid, args.interval)
    else:
        status = collect_grid_status(run, grid)
    if getattr(args, "plot", None):
        from hpcsynth.study.charts import plot_grid_status

        plot_grid_status(status, args.plot)
    if args.json and not args.watch:
        sys.stdout.write(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif not args.watch:
        render_grid_status(status)
    if getattr(args, "plot", None) and not args.json:
        print(f"chart: {args.plot}")
    return 0


def reduce_grid_command(args: argparse.Namespace, grid: dict) -> int:
    from hpcsynth.rundir import RunDir
    from hpcsynth.study.grid_reduce import collect_finished, datasets_dir, reduce_grid, write_train_args

    run = RunDir(args.run)
    if args.out is not None:
        raise HpcsynthError(f"{args.run} is a grid run: its datasets go to {datasets_dir(run)}/GEN-PROMPT-MIXIN/; "
                            f"drop --out")
    if args.jobs < 1:
        raise HpcsynthError(f"--jobs must be 1 or more, got {args.jobs}")
    given = [flag for flag, value in (("--config", args.config), ("--keep-parts", args.keep_parts),
                                      ("--clean-parts", args.clean_parts)) if value]
    if given:  # a grid's mixes are its config's grid.mixins, and its datasets keep their parts
        raise HpcsynthError(f"{args.run} is a grid run: {given[0]} is for one run's reduce; change a grid's mixes "
                            f"in its config's grid.mixins and plan it again (its datasets keep every part)")
    if args.executor == "slurm":
        return _reduce_grid_on_slurm(run, grid, args)
    if args.profile:
        raise HpcsynthError("--profile is for --executor slurm; drop it or add --executor slurm")
    if args.train_args:
        entries = collect_finished(run, grid)
        if not entries:
            raise HpcsynthError(f"no dataset of {args.run} is reduced yet; run `hpcsynth reduce {args.run}`")
        path = write_train_args(run, entries)
        print(f"wrote {path} for {len(entries)} of {len(grid['datasets'])} datasets")
        return 0

    def done(name: str, report: dict) -> None:
        print(f"  {name}: {report['sequences']:,} documents, {report['tokens']:,} tokens "
              f"({report['synthetic_tokens']:,} synthetic + {report['original_tokens']:,} original"
              + (f" + {report['corpus_tokens']:,} corpus" if report.get("corpus_tokens") else "") + ")"
              + (" PARTIAL" if report["partial"] else ""))

    entries = reduce_grid(run, grid, args.tokenizer, args.partial, args.jobs, on_dataset=done)
    print(f"reduce: {len(entries)} datasets in {datasets_dir(run)}; the trainer's arguments for each: "
          f"{datasets_dir(run) / 'TRAIN.md'}")
    return 0


def _reduce_grid_on_slurm(run, grid: dict, args: argparse.Namespace) -> int:
    from hpcsynth.execute.launch import load_profile
    from hpcsynth.study.grid_reduce import datasets_dir, submit_grid_reduce

    config = run.config()
    slurm = load_profile(args.profile, config.slurm) if args.profile else config.slurm
    for entry in submit_grid_reduce(run, grid, slurm, args.tokenizer, args.partial):
        print(f"  {entry['name']}: array {entry['jobs']['array'] or '-'}, merge job {entry['jobs']['merge']}")
    print(f"reduce (slurm): {len(grid['datasets'])} datasets submitted; when the merges are done, "
          f"`hpcsynth reduce {args.run} --train-args` writes {datasets_dir(run)}/TRAIN.md")
    return 0


def cancel_grid_command(args: argparse.Namespace, grid: dict) -> int:
    from hpcsynth.execute.slurm_jobs import cancel, cancel_jobs
    from hpcsynth.rundir import RunDir
    from hpcsynth.study.grid import grid_generator_runs
    from hpcsynth.study.grid_reduce import reduce_job_ids

    run = RunDir(args.run)
    run.require_planned()
    ids = [i for _, sub in grid_generator_runs(run, grid) if sub.manifest_path.is_file() for i in cancel(sub)]
    ids += cancel_jobs(reduce_job_ids(run))  # a reduce submitted with --executor slurm
    print(f"cancelled Slurm jobs {', '.join(ids)}" if ids else f"{args.run} has no Slurm jobs to cancel")
    return 0


def validate_grid_command(args: argparse.Namespace, grid: dict) -> int:
    names = ", ".join(g["name"] for g in grid["generators"])
    raise HpcsynthError(f"{args.run} is a grid run: validate one generator's run, `hpcsynth validate "
                        f"{args.run}/generators/NAME` ({names}); each dataset's report.json has its checks")


# The commands that have a grid form; cli/app.py dispatches here once, when grid_target finds a grid.
GRID_HANDLERS = {"plan": plan_grid_command, "launch": launch_grid_command, "status": status_grid_command,
                 "cancel": cancel_grid_command, "reduce": reduce_grid_command, "validate": validate_grid_command}
