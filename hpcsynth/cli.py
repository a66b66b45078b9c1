"""The `hpcsynth` command: a thin layer over plan_corpus, launch_run, collect_status and reduce_run.

User mistakes arrive here as HpcsynthError and leave as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hpcsynth import __version__
from hpcsynth.errors import HpcsynthError

COMMANDS = {
    "plan": ("split a corpus into zstd JSONL shards and write the run's manifest",
             "hpcsynth plan configs/finephrase.yaml --run runs/fp --input 'corpus/*.jsonl.zst'"),
    "launch": ("run the workers of a planned run (only shards not yet done)",
               "hpcsynth launch runs/fp --executor slurm --profile configs/site-example.yaml"),
    "status": ("show a run's progress from its run directory (and one sacct call)",
               "hpcsynth status runs/fp --watch"),
    "cancel": ("cancel the Slurm jobs a run launched (finished work is kept)",
               "hpcsynth cancel runs/fp"),
    "reduce": ("validate outputs, mix in original text, tokenize into Megatron .bin/.idx",
               "hpcsynth reduce runs/fp --out data/fp --tokenizer models/smollm2/tokenizer.json"),
    "demo": ("run the whole pipeline on a tiny model, CPU only, no downloads",
             "hpcsynth demo /tmp/hpcsynth-demo"),
    "prompts": ("list the prompt library, or show one prompt on a document as the engine receives it",
                "hpcsynth prompts --config configs/finephrase.yaml --render faq --doc page.txt"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcsynth", description="Turn a web corpus into synthetic pretraining data, shard by shard.",
        epilog="example:\n  hpcsynth demo /tmp/hpcsynth-demo", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hpcsynth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str) -> argparse.ArgumentParser:
        summary, example = COMMANDS[name]
        return sub.add_parser(name, help=summary, description=summary, epilog=f"example:\n  {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    plan = command("plan")
    plan.add_argument("config", type=Path, help="YAML config file (see configs/)")
    plan.add_argument("--run", type=Path, required=True, help="run directory to create")
    plan.add_argument("--input", action="append", metavar="PATH_OR_GLOB",
                      help="corpus JSONL file(s), plain/.gz/.zst; repeatable; replaces plan.inputs")

    launch = command("launch")
    launch.add_argument("run", type=Path, help="a planned run directory")
    launch.add_argument("--executor", default="local", choices=["local", "slurm"], help="where workers run")
    launch.add_argument("--profile", type=Path, help="site profile YAML with a slurm: section (partition, gpus...)")
    launch.add_argument("--config", type=Path, help="a config to use instead of the run's own (must not change "
                                                   "outputs unless --force)")
    launch.add_argument("--force", action="store_true", help="adopt --config even if it changes outputs; "
                                                             "submit even while the run has active Slurm jobs")
    launch.add_argument("--retry-failed", action="store_true", help="also rerun shards marked failed")
    launch.add_argument("--workers", type=int, default=1,
                        help="local worker processes, one per GPU via CUDA_VISIBLE_DEVICES (default: 1; when "
                             "CUDA_VISIBLE_DEVICES lists several GPUs, all of them, as slurm.gpu_mode says)")

    status = command("status")
    status.add_argument("run", type=Path, help="a planned run directory")
    status.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    status.add_argument("--watch", action="store_true", help="refresh a live view until interrupted")
    status.add_argument("--interval", type=float, default=10.0, help="seconds between --watch refreshes")

    cancel = command("cancel")
    cancel.add_argument("run", type=Path, help="a launched run directory")

    reduce = command("reduce")
    reduce.add_argument("run", type=Path, help="a run whose shards are done")
    reduce.add_argument("--out", type=Path, help="output directory (default: RUN/reduce)")
    reduce.add_argument("--tokenizer", help="tokenizer.json or its directory (default: reduce.tokenizer, "
                                            "else the generator's own)")
    reduce.add_argument("--partial", action="store_true", help="reduce the done shards even if some are not")

    demo = command("demo")
    demo.add_argument("dir", nargs="?", type=Path, help="where to put the demo (default: a new temp dir)")
    demo.add_argument("--documents", type=int, default=64, help="corpus size (default: 64)")

    prompts = command("prompts")
    prompts.add_argument("--config", type=Path, help="config whose prompts_dir and model to use (default: "
                                                     "the built-in defaults)")
    prompts.add_argument("--render", metavar="NAME", help="show this prompt on --doc, chat template applied")
    prompts.add_argument("--doc", type=Path, help="a text file, or a JSONL corpus file (its first document)")
    prompts.add_argument("--tokenizer", help="model directory whose chat template and tokenizer to use "
                                             "(default: model.path)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return HANDLERS[args.command](args)
    except HpcsynthError as exc:
        print(f"hpcsynth: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # permissions, a full disk, a vanished directory: the user's to fix
        where = f": {exc.filename}" if exc.filename else ""
        print(f"hpcsynth: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hpcsynth: interrupted; committed work is kept, relaunch to continue", file=sys.stderr)
        return 130


def _plan(args: argparse.Namespace) -> int:
    from hpcsynth.config import load_config
    from hpcsynth.plan import plan_corpus
    from hpcsynth.rundir import RunDir

    plan = plan_corpus(load_config(args.config), RunDir(args.run), args.input)
    print(f"planned {plan.documents:,} documents into {plan.shards:,} shards in {plan.run.root} "
          f"({plan.rejected:,} rejected; fingerprint {plan.fingerprint[:12]})")
    return 0


def _launch(args: argparse.Namespace) -> int:
    from hpcsynth.execute.launch import launch_run
    from hpcsynth.rundir import RunDir

    report = launch_run(RunDir(args.run), args.executor, retry_failed=args.retry_failed, workers=args.workers,
                        config_path=args.config, force=args.force, profile=args.profile)
    if report.executor == "slurm":
        arrays = ", ".join(f"{a['job_id']} ({a['tasks']} tasks)" for a in report.arrays) or "nothing to submit"
        print(f"launch (slurm): {report.submitted_shards} shards pending, submitted {arrays}; "
              f"follow with: hpcsynth status {args.run} --watch")
        return 0
    print(f"launch ({report.executor}): {report.done}/{report.total} shards done, {len(report.failed)} failed")
    for shard, reason in report.failed[:10]:
        print(f"  shard {shard} failed: {reason}", file=sys.stderr)
    if report.failed:
        print(f"  rerun them with: hpcsynth launch {args.run} --retry-failed", file=sys.stderr)
    return 1 if report.failed else 0


def _status(args: argparse.Namespace) -> int:
    import orjson

    from hpcsynth.rundir import RunDir
    from hpcsynth.status import collect_status, render_status

    run = RunDir(args.run)
    if args.watch:
        from hpcsynth.status import watch_status

        watch_status(run, args.interval)
        return 0
    status = collect_status(run)
    if args.json:
        sys.stdout.write(orjson.dumps(status, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render_status(status)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from hpcsynth.rundir import RunDir
    from hpcsynth.execute.slurm import cancel

    run = RunDir(args.run)
    run.require_planned()
    ids = cancel(run)
    print(f"cancelled Slurm jobs {', '.join(ids)}" if ids else f"{args.run} has no Slurm jobs to cancel")
    return 0


def _reduce(args: argparse.Namespace) -> int:
    from hpcsynth.reduce import reduce_run
    from hpcsynth.rundir import RunDir

    report = reduce_run(RunDir(args.run), args.out, args.tokenizer, partial=args.partial).data
    print(f"wrote {report['sequences']:,} documents, {report['tokens']:,} tokens "
          f"({report['synthetic_tokens']:,} synthetic + {report['original_tokens']:,} original, ratio "
          f"{report['original_ratio']}) to {report['prefix']}.bin/.idx")
    if report["original_pool_exhausted"]:
        print(f"note: all {report['original_documents']:,} source documents were mixed in and the original "
              f"ratio is {report['original_ratio']}, below reduce.original_ratio="
              f"{report['original_ratio_target']}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from hpcsynth.demo import run_demo

    out = args.dir or Path(tempfile.mkdtemp(prefix="hpcsynth-demo-"))
    started = time.monotonic()
    result = run_demo(out, documents=args.documents)
    from hpcsynth.status import render_status

    render_status(result.status)
    report = result.reduce.data
    print(f"\nhpcsynth demo finished in {time.monotonic() - started:.0f}s")
    print(f"  run directory : {result.run.root}  (hpcsynth status {result.run.root})")
    print(f"  outputs       : {result.status['records_done']} records from {result.plan.documents} documents "
          f"x {result.status['prompts']} prompts")
    print(f"  training data : {report['prefix']}.bin/.idx  ({report['sequences']} documents, "
          f"{report['tokens']} tokens, {report['dtype']})")
    return 0 if not result.launch.failed else 1


def _prompts(args: argparse.Namespace) -> int:
    from hpcsynth.config import Config, load_config
    from hpcsynth.prompt_render import read_document, render_for_engine
    from hpcsynth.prompts import available_prompts, parse_prompt

    config = load_config(args.config) if args.config else Config()
    if args.render is None:
        if args.doc is not None:
            raise HpcsynthError("--doc needs --render NAME (which prompt to show on it)")
        print(f"{'name':<18} {'format':<9} {'version':<8} {'hash':<17} file")
        for name, path in available_prompts(config).items():
            p = parse_prompt(path)
            used = " (in the config)" if name in config.prompts else ""
            print(f"{p.name:<18} {p.format:<9} {p.version:<8} {p.template_hash:<17} {path}{used}")
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
    print(f"-- {prompt.name} v{prompt.version} ({prompt.format}, {prompt.template_hash}): {count}", file=sys.stderr)
    return 0


HANDLERS = {"plan": _plan, "launch": _launch, "status": _status, "cancel": _cancel, "reduce": _reduce,
            "demo": _demo, "prompts": _prompts}
