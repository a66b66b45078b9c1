"""`hpcsynth tune CONFIG --input SAMPLE`: find the engine settings that generate fastest; the work is hpcsynth.tune."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpcsynth.cli.study import count
from hpcsynth.errors import HpcsynthError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML config file, or a shipped config by name")
    parser.add_argument("--input", action="append", metavar="PATH_OR_GLOB", required=True,
                        help="a sample of your corpus (files, directories or globs, as plan takes): a few thousand "
                             "documents; repeatable")
    parser.add_argument("--budget", type=float, default=30.0, metavar="MINUTES",
                        help="time for all trials; a trial starts only while the time left covers a typical one")
    parser.add_argument("--out", type=Path, help="tune directory: trials, tune.json, winner.yaml, tuned.yaml "
                                                 "(default: CONFIG's name + -tune, here)")
    parser.add_argument("--try", dest="tries", action="append", metavar="KEY=V1,V2",
                        help="try these values of one config key instead of the defaults for the engine "
                             "(e.g. vllm.max_num_seqs=128,256,512); repeatable, walked in the order given")
    parser.add_argument("--requests", type=int, default=0,
                        help="requests per trial (default: 2048 for vllm, 1024 for endpoint, 64 otherwise)")
    parser.add_argument("--trial-timeout", type=float, default=0.0, metavar="SECONDS",
                        help="stop a trial after this long and class it a timeout (default: a quarter of the "
                             "budget, at least 2 minutes)")
    parser.add_argument("--documents", type=count, default=1_000_000,
                        help="documents the estimate prices at the winner's rate, e.g. 339e6")
    parser.add_argument("--executor", default="local", choices=["local", "slurm"],
                        help="slurm: the trials run as one job on a GPU node of --profile")
    parser.add_argument("--profile", type=Path, help="site profile YAML with a slurm: section (with --executor slurm)")
    parser.add_argument("--json", action="store_true", help="print tune.json and the estimate as one JSON object")


def tune_command(args: argparse.Namespace) -> int:
    import orjson

    from hpcsynth.cli.common import inert
    from hpcsynth.config import load_config
    from hpcsynth.pool import stops_on_term_and_hup
    from hpcsynth.tune import TuneOptions, prepare, read_tune, search
    from hpcsynth.tune.report import render_trials, tune_estimate

    out = args.out or Path(f"{Path(args.config).stem}-tune")
    say = (lambda line: None) if args.json else (lambda line: print(inert(line), file=sys.stderr, flush=True))
    options = TuneOptions(args.config, list(args.input), out, args.budget, args.trial_timeout, args.requests,
                          list(args.tries or []))
    slurm = None
    if args.executor == "slurm":
        from hpcsynth.execute.launch import load_profile

        base = load_config(args.config).slurm
        slurm = load_profile(args.profile, base) if args.profile else base
        options.gpus = slurm.gpus_per_task  # the knobs of the node the trials run on, not of this login node
    elif args.profile:
        raise HpcsynthError("--profile is for --executor slurm; drop it or add --executor slurm")
    from hpcsynth.tune.search import hold

    # `kill PID` stops the trial in flight as Ctrl-C does; a second tune into OUT is refused while this one runs.
    with stops_on_term_and_hup(), hold(out):
        prepare(options, say)
        if slurm is not None:
            from hpcsynth.tune.slurm import search_on_slurm

            say(f"tune: submitting the trials as one Slurm job (files under {out / 'slurm'})")
            search_on_slurm(out, slurm, args.budget * 60)
        else:
            search(out, say)
    tune = orjson.loads((out / "tune.json").read_bytes())
    config = load_config(out / "config.yaml")
    estimate = None
    if tune.get("winner"):
        estimate = tune_estimate(read_tune(out), out, config.prompts, args.documents, config.sampling.max_tokens)
    if args.json:
        sys.stdout.write(orjson.dumps({**tune, "estimate": estimate.to_json() if estimate else None}).decode() + "\n")
        return 0 if estimate else 1
    render_trials(tune)
    for note in tune.get("notes", []):
        print(inert(f"note: {note}"))
    if estimate is None:
        print(inert(f"no trial finished; each trial's log is in {out / 'trials'}"), file=sys.stderr)
        return 1
    from hpcsynth.study.view import render_estimate

    winner = tune["winner"]
    print(inert(f"winner: trial {winner['trial']}, {winner['tokens_per_s']:,.1f} tok/s; its settings are in "
                f"{out / 'winner.yaml'} (the whole config with them: {out / 'tuned.yaml'})"))
    render_estimate(estimate)
    print(inert(f"price a planned run at this rate: hpcsynth estimate RUN --tuned {out}"))
    return 0
