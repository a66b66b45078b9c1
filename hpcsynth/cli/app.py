"""The `hpcsynth` command: a thin layer over plan_corpus, launch_run, collect_status and reduce_run.

User mistakes arrive here as HpcsynthError and leave as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import threading
import sys
import time
from pathlib import Path

from collections.abc import Iterator
from typing import Any

from hpcsynth import __version__
from hpcsynth.cli.common import (check_plan_model, grid_of, inert, plan_config, plan_profile,  # noqa: F401 (inert: tests)
                                 print_plan_warnings, with_plan_flags)
from hpcsynth.cli.grid import GRID_HANDLERS
from hpcsynth.errors import HpcsynthError
from hpcsynth.storage import path_or_url

COMMANDS = {
    "plan": ("split a corpus into zstd JSONL shards and write the run's manifest",
             "hpcsynth plan finephrase --run runs/fp --input 'corpus/*.jsonl.zst'"),
    "launch": ("run the workers of a planned run (only shards not yet done); stop them with Ctrl-C, `kill PID` or "
               "`hpcsynth cancel RUN`, and launch again to go on from what they committed",
               "hpcsynth launch runs/fp --executor slurm --profile site-dev"),
    "status": ("show a run's progress from its run directory (and one sacct call)",
               "hpcsynth status runs/fp --watch"),
    "cancel": ("stop a run's local workers (this host) and its repair, and cancel its Slurm launches, repairs and "
               "reduces (finished work is kept)",
               "hpcsynth cancel runs/fp"),
    "reduce": ("validate outputs, mix in original text, tokenize into Megatron .bin/.idx; re-mix the same outputs "
               "with --config MIX.yaml; DIR/parts/ (what a resume and a re-mix reuse) goes with --clean-parts",
               "hpcsynth reduce runs/fp --out data/fp --tokenizer models/smollm2/tokenizer.json"),
    "demo": ("run the whole pipeline on a tiny model, CPU only, no downloads",
             "hpcsynth demo /tmp/hpcsynth-demo"),
    "config": ("print a shipped config or site profile, as a starting point for your own",
               "hpcsynth config finephrase > mine.yaml"),
    "verify": ("reopen what reduce wrote and check counts, token ranges and checksums",
               "hpcsynth verify runs/fp/reduce"),
    "prompts": ("list the prompt library, or show one prompt on a document as the engine receives it",
                "hpcsynth prompts --config configs/finephrase.yaml --render faq --doc page.txt"),
    "validate": ("check a run's outputs by their prompt's format, without tokenizing: a quality report per prompt",
                 "hpcsynth validate runs/fp --config stricter.yaml"),
    "repair": ("generate again the records validation refused, in sub-runs with a seed of their own per attempt; "
               "reduce then takes each record's first passing attempt", "hpcsynth repair runs/fp --attempts 2"),
    "estimate": ("what a run will cost (GPU-hours, wall time, $), per generator and prompt; and so far, for a run "
                 "that has worked", "hpcsynth estimate --tokens 486e9 --tokens-per-second 9200 --gpus 100 --price 2.5"),
    "tune": ("short trials of the engine settings (batch, token budget, memory, speculation...) on a sample of your "
             "corpus: a table, the winner as a config fragment, and the estimate at its rate",
             "hpcsynth tune finephrase --input 'sample/*.parquet' --budget 60 --out tune-fp"),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and every option's default shown (switches and unset options have none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcsynth", description="Turn a web corpus into synthetic pretraining data, shard by shard.",
        epilog="example:\n  hpcsynth demo /tmp/hpcsynth-demo", formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"hpcsynth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str) -> argparse.ArgumentParser:
        summary, example = COMMANDS[name]
        return sub.add_parser(name, help=summary, description=summary, epilog=f"example:\n  {example}",
                              formatter_class=HelpFormatter)

    plan = command("plan")
    plan.add_argument("config", type=Path, help="YAML config file, or a shipped config by name (finephrase, demo; "
                                                "see `hpcsynth config`)")
    plan.add_argument("--run", type=Path, required=True, help="run directory to create")
    plan.add_argument("--input", action="append", metavar="PATH_OR_GLOB",
                      help="corpus files, directories or globs: JSONL (plain/.gz/.zst) or Parquet; repeatable; "
                           "replaces plan.inputs; s3://BUCKET/PREFIX/*.parquet reads a bucket (the [s3] extra; "
                           "AWS_* credentials); RUN itself stays on a local or shared filesystem")
    plan.add_argument("--jobs", type=int, default=0,
                      help="processes planning input files at once (default: the CPUs Slurm or the OS gives us); "
                           "the shards are the same for any value")
    plan.add_argument("--force", action="store_true",
                      help="replace an existing plan of RUN made with another config or inputs")
    plan.add_argument("--executor", default="local", choices=["local", "slurm"],
                      help="slurm: plan the input files as CPU array tasks (RUN on a shared filesystem)")
    plan.add_argument("--profile", type=Path, help="site profile YAML with a slurm: section (partition, account...)")
    plan.add_argument("--skip-bad-files", action="store_true",
                      help="plan without input files that cannot be read whole (cut .gz/.zst, corrupt Parquet, "
                           "no text column), listed as lost files, their bytes counted against "
                           "plan.max_reject_rate (sets plan.skip_bad_files: true); by default they fail the plan")

    launch = command("launch")
    launch.add_argument("run", type=Path, help="a planned run directory")
    launch.add_argument("--executor", default="local", choices=["local", "slurm"], help="where workers run")
    launch.add_argument("--profile", type=Path, help="site profile YAML with a slurm: section (partition, gpus...), "
                                                    "or a shipped one by name (site-dev, site-example)")
    launch.add_argument("--config", type=Path, help="a config to use instead of the run's own (must not change "
                                                   "outputs unless --force)")
    launch.add_argument("--force", action="store_true", help="adopt --config even if it changes outputs; "
                                                             "submit even while the run has active Slurm jobs; go on "
                                                             "from the shards when an input object in a bucket "
                                                             "changed since the plan")
    launch.add_argument("--retry-failed", action="store_true", help="also rerun shards marked failed")
    launch.add_argument("--verify", choices=["sha256", "size"], default="sha256",
                        help="how done outputs are checked before relaunching: sha256 reads every "
                             "output once, size is a stat per shard (default: sha256)")
    launch.add_argument("--progress", type=float, metavar="SECONDS",
                        help="local runs: print records, tokens, shards, rate and ETA this often on stderr (default: "
                             "every 2 s in place at a terminal, a line every 30 s when piped; 0: never)")
    launch.add_argument("--add-workers", action="store_true",
                        help="start more workers beside a launch still running (local: on GPUs it does not use; "
                             "slurm: submit while the run's jobs are queued or running)")
    launch.add_argument("--workers", type=int, default=1,
                        help="local worker processes, one per GPU via CUDA_VISIBLE_DEVICES; with 1 and several GPUs "
                             "listed there, all of them, as slurm.gpu_mode says (default: 1)")

    status = command("status")
    status.add_argument("run", type=Path, help="a planned run directory")
    status.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    status.add_argument("--watch", action="store_true", help="refresh a live view until interrupted")
    status.add_argument("--interval", type=float, default=10.0, help="seconds between --watch refreshes")
    status.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw progress over time, throughput "
                                                                      "and time per worker as a PNG")

    cancel = command("cancel")
    cancel.add_argument("run", type=Path, help="a launched run directory")

    reduce = command("reduce")
    reduce.add_argument("run", type=Path, help="a run whose shards are done")
    reduce.add_argument("--out", type=path_or_url, help="output directory, or s3://BUCKET/PREFIX (written in "
                        "RUN/reduce-s3/ first, then uploaded; needs the [s3] extra) (default: RUN/reduce)")
    reduce.add_argument("--tokenizer", help="tokenizer.json or its directory (default: reduce.tokenizer, "
                                            "else the generator's own)")
    reduce.add_argument("--partial", action="store_true", help="reduce the done shards even if some are not "
                        "(output named NAME-partial)")
    reduce.add_argument("--jobs", type=int, default=1, help="local processes tokenizing parts at once (default: 1)")
    reduce.add_argument("--executor", default="local", choices=["local", "slurm"],
                        help="slurm: a CPU job array over the parts, then a merge job (default: local)")
    reduce.add_argument("--profile", type=Path, help="site profile YAML with a slurm: section (with --executor slurm)")
    reduce.add_argument("--train-args", action="store_true", help="grid runs: only write RUN/datasets/TRAIN.md "
                        "from the datasets reduced so far (after a reduce --executor slurm)")
    reduce.add_argument("--config", type=Path, help="re-mix under this file's reduce:, validate: and card: keys (laid "
                        "over the run's config; keys that change what was generated are refused); the changes are "
                        "printed first, RUN/config.yaml is left as it is, DIR/reduce-config.yaml records them")
    reduce.add_argument("--keep-parts", action="store_true", help="keep every tokenized part in DIR/parts after the "
                        "merge; by default the mix-in corpora's parts are removed (the run's stay for a re-mix)")
    reduce.add_argument("--clean-parts", action="store_true", help="only remove DIR/parts of a finished reduce "
                        "(the output stays; a later reduce into DIR tokenizes again)")

    verify = command("verify")
    verify.add_argument("dir", type=path_or_url, help="a reduce output directory (default reduce output: RUN/reduce), "
                        "or the s3://BUCKET/PREFIX a reduce uploaded to (downloaded to TMPDIR, then checked)")

    demo = command("demo")
    demo.add_argument("dir", nargs="?", type=Path, help="where to put the demo (default: a new temp dir)")
    demo.add_argument("--documents", type=int, default=64, help="corpus size (default: 64)")

    config = command("config")
    config.add_argument("name", nargs="?", help="a shipped config or site profile; without it, list them")

    prompts = command("prompts")
    prompts.add_argument("--config", type=Path, help="config whose prompts_dir and model to use (default: "
                                                     "the built-in defaults)")
    prompts.add_argument("--render", metavar="NAME", help="show this prompt on --doc, chat template applied")
    prompts.add_argument("--doc", type=Path, help="a text file, or a JSONL corpus file (its first document)")
    prompts.add_argument("--tokenizer", help="model directory whose chat template and tokenizer to use "
                                             "(default: model.path)")

    validate = command("validate")
    validate.add_argument("run", type=Path, help="a run with done shards")
    validate.add_argument("--config", type=Path, help="a what-if: this file's validate: keys (and reduce.min_chars, "
                          "drop_truncated) over the run's own; its report goes to RUN/validate/whatif-HASH.json, "
                          "never to RUN/validate/report.json, which the dataset card quotes")

    from hpcsynth.cli.repair import add_arguments as add_repair_arguments

    add_repair_arguments(command("repair"))

    from hpcsynth.cli.study import add_arguments as add_estimate_arguments

    add_estimate_arguments(command("estimate"))

    from hpcsynth.cli.tune import add_arguments as add_tune_arguments

    add_tune_arguments(command("tune"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        grid = grid_target(args)
        if grid is not None:  # the one place that asks "is this a grid?"
            return GRID_HANDLERS[args.command](args, grid)
        return HANDLERS[args.command](args)
    except HpcsynthError as exc:
        print(f"hpcsynth: error: {inert(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # permissions, a full disk, a vanished directory: the user's to fix
        if exc.errno == errno.ENOSPC:  # writes and fsyncs through a descriptor name no file: say where
            print(inert(f"hpcsynth: error: no space left on the filesystem of {writes_to(args)}; free space "
                        f"there and run the same command again ({AFTER_INTERRUPT.get(args.command, '')})"
                        ).replace(" ()", ""), file=sys.stderr)
            return 2
        where = f": {exc.filename}" if exc.filename else ""
        print(inert(f"hpcsynth: error: {exc.strerror or exc}{where}"), file=sys.stderr)
        return 2
    except MemoryError:  # one line, not a traceback that itself may fail to allocate
        print("hpcsynth: error: out of memory; if a corpus file is involved, lower plan.max_line_bytes or check "
              "the file is what it claims to be (a small .gz/.zst can decompress to gigabytes)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hpcsynth: interrupted; {AFTER_INTERRUPT.get(args.command, 'nothing was left half done')}",
              file=sys.stderr)
        return 130


def _plan(args: argparse.Namespace) -> int:
    from hpcsynth.plan import plan_corpus
    from hpcsynth.plan.summary import progress_bar, render_summary
    from hpcsynth.rundir import RunDir

    config = with_plan_flags(args, plan_config(args))
    check_plan_model(config, str(args.config), args.executor)
    slurm = plan_profile(args, config)
    map_groups = None
    if slurm is not None:
        from hpcsynth.execute.plan_array import slurm_map_groups

        map_groups = slurm_map_groups(args.run, slurm)
    with progress_bar("planning") as progress:
        plan = plan_corpus(config, RunDir(args.run), args.input, jobs=args.jobs, force=args.force,
                           progress=progress, map_groups=map_groups)
    if plan.unchanged:
        print(f"{plan.run.root} is already planned with this config and these inputs: {plan.documents:,} "
              f"documents in {plan.shards:,} shards; nothing to do")
        return 0
    render_summary(plan.summary, str(plan.run.root))
    print_plan_warnings(plan.summary)
    lost = len(plan.summary.get("lost_files", []))
    print(f"planned {plan.documents:,} documents into {plan.shards:,} shards in {plan.run.root} "
          f"({plan.rejected:,} rejected{f', {lost:,} lost file(s)' if lost else ''}, see "
          f"{plan.run.root / 'plan' / 'rejects.jsonl'}; fingerprint {plan.fingerprint[:12]})")
    return 0


def _launch(args: argparse.Namespace) -> int:
    from hpcsynth.execute.launch import launch_run
    from hpcsynth.rundir import RunDir

    interval = args.progress if args.progress is not None else (2.0 if sys.stderr.isatty() else 30.0)
    with launch_progress(RunDir(args.run), interval if args.executor == "local" else 0):
        report = launch_run(RunDir(args.run), args.executor, retry_failed=args.retry_failed, workers=args.workers,
                            config_path=args.config, force=args.force, profile=args.profile, verify=args.verify,
                            add_workers=args.add_workers)
    for shard, problem in report.repaired[:10]:
        print(f"  shard {shard} will be generated again: {problem}", file=sys.stderr)
    if report.executor == "slurm":
        arrays = ", ".join(f"{a['job_id']} ({a['tasks']} tasks)" for a in report.arrays) or "nothing to submit"
        print(f"launch (slurm): {report.submitted_shards} shards pending, submitted {arrays}; "
              f"follow with: hpcsynth status {args.run} --watch")
        return 0
    print(f"launch ({report.executor}): {report.done}/{report.total} shards done, {len(report.failed)} failed")
    for shard, reason in report.failed[:10]:
        print(f"  shard {shard} failed: {inert(str(reason))}", file=sys.stderr)
    if report.failed:
        print(f"  rerun them with: hpcsynth launch {args.run} --retry-failed", file=sys.stderr)
    if report.worker_errors:
        print(f"  {len(report.worker_errors)} of {args.workers} worker(s) failed; first: {report.worker_errors[0]}",
              file=sys.stderr)
    return 1 if report.failed or report.worker_errors else 0


@contextlib.contextmanager
def launch_progress(run: Any, interval: float) -> Iterator[None]:
    """While a local launch runs: records, tokens, shards, rate and ETA every `interval` seconds, on stderr
    (one line rewritten in place at a terminal, a line each time when piped to a file, a batch log or
    tee). Read from the run directory as status reads it: the done index and the heartbeats."""
    if interval <= 0:
        yield
        return
    stop = threading.Event()
    tty = sys.stderr.isatty()

    def show() -> None:
        from hpcsynth.status.collect import collect_status

        while not stop.wait(interval):
            try:
                st = collect_status(run, slurm=False)
            except Exception:  # noqa: BLE001 - a run mid-change: the next tick shows it
                continue
            eta = f", ETA {st.eta_s / 60:,.1f} min" if st.eta_s else ""
            line = (f"launch: {st.shards.done}/{st.shards.total} shards, {st.records_done:,}/"
                    f"{st.records_expected:,} records, {st.tokens_done:,} tokens, {st.tokens_per_s:,.0f} tok/s{eta}")
            print(f"\r{line}\x1b[K" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    thread = threading.Thread(target=show, daemon=True, name="hpcsynth-launch-progress")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        if tty:
            print(file=sys.stderr)


def _status(args: argparse.Namespace) -> int:
    import orjson

    from hpcsynth.rundir import RunDir
    from hpcsynth.status.collect import collect_status
    from hpcsynth.status.view import render_status

    if args.plot:  # before a watch of hours, not after it
        from hpcsynth.study.charts import check_plot_path

        check_plot_path(args.plot)
    run = RunDir(args.run)
    if args.watch:
        from hpcsynth.status.view import watch_status

        status = watch_status(run, args.interval)
        if args.plot:  # the run as the watch ended
            from hpcsynth.study.charts import plot_status

            plot_status(status, args.plot)
            print(f"chart: {args.plot}")
        return 0
    status = collect_status(run)
    if args.plot:
        from hpcsynth.study.charts import plot_status

        plot_status(status, args.plot)
    if args.json:
        sys.stdout.write(orjson.dumps(status.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render_status(status)
        if args.plot:
            print(f"chart: {args.plot}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from hpcsynth.execute.slurm_jobs import cancel, cancel_jobs, recorded_reduce_ids
    from hpcsynth.rundir import RunDir

    from hpcsynth.execute.local_runs import cancel_local
    from hpcsynth.repair.cancel import cancel_repair

    run = RunDir(args.run)
    run.require_planned()
    stopped, elsewhere = cancel_local(run)  # local launches of this host: by host, pid and start time
    repair = cancel_repair(run)  # `hpcsynth repair` first (it launches no more), then its sub-runs' launches
    ids = cancel(run) + cancel_jobs(recorded_reduce_ids(run.reduce_jobs_path))  # launches, then reduces
    repair_ids = cancel_jobs(repair.job_ids)  # the repair sub-runs' Slurm launches
    for line in stopped + repair.stopped:
        print(inert(line))  # a sub-run's name is a directory's, whatever was planted there
    if ids or repair_ids:
        print(f"cancelled Slurm jobs {', '.join(ids + repair_ids)}")
    for line in elsewhere + repair.problems:
        print(inert(line), file=sys.stderr)
    if not (stopped or repair.stopped or ids or repair_ids or elsewhere or repair.problems):
        print(f"{args.run} has no local workers or Slurm jobs to cancel")
    if stopped or ids:
        print(f"finished shards are kept; `hpcsynth launch {args.run}` goes on from them")
    if repair.stopped or repair_ids:
        print(f"the repair's committed shards are kept; `hpcsynth repair {args.run}` goes on from them")
    return 1 if elsewhere or repair.problems else 0


def _reduce(args: argparse.Namespace) -> int:
    from hpcsynth.cli.reduce import reduce_command

    if args.train_args:
        raise HpcsynthError(f"--train-args is for grid runs; {args.run} is a plain run (its report.json names its files)")
    return reduce_command(args)


def _verify(args: argparse.Namespace) -> int:
    from hpcsynth.reduce.verify import verify_output

    reports, problems = verify_output(args.dir)
    for problem in problems:
        print(f"{args.dir}: {problem}")
    if problems:
        print(f"verify: {len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    for kind, report in reports:  # a folder may hold a partial reduce beside the full one: each by name
        print(f"verify: {args.dir} is whole: the {kind} reduce ({report.get('prefix', '?')}): "
              f"{report['sequences']:,} sequences, {report['tokens']:,} tokens in {len(report['files'])} files, "
              f"every checksum matches")
        made = report.get("reduce_settings") or {}
        if made.get("file"):  # which settings made this mix (hpcsynth/reduce/settings.py)
            from hpcsynth.reduce.settings import change_line

            source = (f"from {made['config']}" if made.get("config") else "the grid's mix-in over the run's config"
                      if made.get("grid") else "the run's own config")
            changed = f"; changed: {', '.join(map(change_line, made['changed']))}" if made.get("changed") else ""
            print(f"  made with the reduce settings in {made['file']} ({source}{changed})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from hpcsynth.cli.demo import run_demo

    out = args.dir or Path(tempfile.mkdtemp(prefix="hpcsynth-demo-"))
    started = time.monotonic()
    result = run_demo(out, documents=args.documents)
    report = result.reduce.data
    import shlex

    root = result.run.root
    model = root.parent / "model"
    print(f"\nhpcsynth demo finished in {time.monotonic() - started:.0f}s")
    print(f"  run directory : {root}  (see it: hpcsynth status {shlex.quote(str(root))})")
    print(f"  records       : {result.status.records_done} from {result.plan.documents} documents x "
          f"{result.status.prompts} prompts in {root / 'outputs'}/*.jsonl.zst")
    print(f"                  read one: zstd -dc {shlex.quote(str(root / 'outputs' / '000000.jsonl.zst'))} | head -n 1")
    print(f"  training data : {report['prefix']}.bin/.idx  ({report['sequences']} documents, "
          f"{report['tokens']} tokens, {report['dtype']})")
    print("  the text is gibberish by design: the tiny model has random weights; every file has the real format")
    print("  a first project of your own, on this tiny model (swap in a real one later):")
    print(f"    hpcsynth config demo > mine.yaml   # then set  model: {{path: {model}}}")
    print("    hpcsynth plan mine.yaml --run my-run --input 'my-corpus/*.jsonl'")
    print("    hpcsynth launch my-run && hpcsynth status my-run && hpcsynth reduce my-run")
    return 0 if not result.launch.failed else 1


def _config(args: argparse.Namespace) -> int:
    from hpcsynth.errors import ConfigError
    from hpcsynth.resources import shipped_configs

    configs, profiles = shipped_configs(), shipped_configs(profiles=True)
    if not args.name:
        print("run configs   : " + ", ".join(configs))
        print("site profiles : " + ", ".join(profiles))
        print("print one with `hpcsynth config NAME > mine.yaml`, edit it, then "
              "`hpcsynth plan mine.yaml --run RUN --input 'corpus/*.jsonl'`")
        return 0
    path = {**configs, **profiles}.get(args.name.removesuffix(".yaml"))
    if path is None:
        raise ConfigError(f"no shipped config named {args.name!r}; choose one of "
                          f"{', '.join([*configs, *profiles])}")
    sys.stdout.write(path.read_text(encoding="utf-8"))
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from hpcsynth.config import Config, load_config
    from hpcsynth.generate.render import read_document, render_for_engine
    from hpcsynth.prompts import available_prompts, parse_prompt

    config = load_config(args.config) if args.config else Config()
    if args.render is None:
        if args.doc is not None:
            raise HpcsynthError("--doc needs --render NAME (which prompt to show on it)")
        print(f"{'name':<18} {'format':<9} {'version':<8} {'hash':<17} file")
        for name, path in available_prompts(config).items():
            p = parse_prompt(path)
            used = " (in the config)" if name in config.prompts else ""
            # Header fields are anyone's text (a shared prompts_dir): shown inert, no escape sequence reaches
            # the terminal.
            print(inert(f"{p.name:<18} {p.format:<9} {p.version:<8} {p.template_hash:<17} {path}{used}"))
        return 0
    if args.doc is None:
        raise HpcsynthError("--render needs --doc FILE (the document to show the prompt on)")
    found = available_prompts(config)
    if args.render not in found:
        raise HpcsynthError(f"no prompt named {args.render!r}; available: {', '.join(found)}")
    prompt = parse_prompt(found[args.render])
    rendered = render_for_engine(prompt, read_document(args.doc, config.plan.text_key), config, args.tokenizer or "")
    sys.stdout.write(rendered.text + ("" if rendered.text.endswith("\n") else "\n"))
    count = f"{rendered.tokens:,} prompt tokens by {rendered.tokenizer}" if rendered.tokens else rendered.tokenizer
    print(inert(f"-- {prompt.name} v{prompt.version} ({prompt.format}, {prompt.template_hash}): {count}"),
          file=sys.stderr)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from hpcsynth.cli.validate import validate_command

    return validate_command(args)


def _repair(args: argparse.Namespace) -> int:
    from hpcsynth.cli.repair import repair_command

    return repair_command(args)


def _estimate(args: argparse.Namespace) -> int:
    from hpcsynth.cli.study import estimate_command

    return estimate_command(args)


def _tune(args: argparse.Namespace) -> int:
    from hpcsynth.cli.tune import tune_command

    return tune_command(args)


# What Ctrl-C leaves behind, and what to run next, per command.
AFTER_INTERRUPT = {
    "plan": "a plan is moved into place whole, so the run is as it was; plan again to plan it",
    "launch": "committed shards are kept and records on disk are not generated again; launch again to go on "
              "(local workers stop with their launcher; a Slurm job goes on: `hpcsynth cancel RUN` stops it)",
    "reduce": "finished parts are kept; run the same reduce again to go on from them",
    "validate": "nothing was written; validate again",
    "repair": "committed shards of its sub-runs are kept; run the same repair again to go on from them",
    "demo": "pass a new directory to start the demo again",
    "tune": "the trial in flight was stopped; tune.json holds the trials finished; run the same tune again to go on "
            "from them",
}


def writes_to(args: argparse.Namespace) -> str:
    """Where a command writes: the folder a full disk is about."""
    if args.command == "reduce" and getattr(args, "out", None):
        return str(args.out)
    if args.command == "reduce":
        return f"{args.run}/reduce"
    for name in ("run", "dir"):
        if getattr(args, name, None):
            return str(getattr(args, name))
    return "the current directory"


def grid_target(args: argparse.Namespace) -> Any:
    """What a grid command acts on (the grid's config for plan, RUN's grid.json for the others), or None
    for a plain run or a command with no grid form."""
    if args.command not in GRID_HANDLERS:
        return None
    if args.command == "plan":
        from hpcsynth.config.grid import is_grid

        config = plan_config(args)
        return config if is_grid(config) else None
    return grid_of(args.run)


HANDLERS = {"plan": _plan, "launch": _launch, "status": _status, "cancel": _cancel, "reduce": _reduce,
            "demo": _demo, "config": _config, "verify": _verify, "prompts": _prompts, "validate": _validate,
            "estimate": _estimate, "repair": _repair, "tune": _tune}
