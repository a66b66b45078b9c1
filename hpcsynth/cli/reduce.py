"""`hpcsynth reduce`: progress while the parts run, then a summary a user can act on.

Display only; the work is reduce_run (local) or the Slurm array + merge (hpcsynth/reduce/slurm.py).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hpcsynth.errors import HpcsynthError

if TYPE_CHECKING:
    from rich.progress import TaskID

    from hpcsynth.reduce.spec import KeepParts

    from hpcsynth.reduce.marker import PartMarker


def reduce_command(args: argparse.Namespace) -> int:
    from hpcsynth.reduce.cleanup import drop_empty
    from hpcsynth.reduce.lock import reduce_lock
    from hpcsynth.reduce.reducer import merge_only, prepare_reduce, run_parts_local
    from hpcsynth.rundir import RunDir

    if args.jobs < 1:
        raise HpcsynthError(f"--jobs must be 1 or more, got {args.jobs}")
    run = RunDir(args.run)
    bucket = _staged(run, args)
    if args.clean_parts:
        return _clean_parts(run, args)
    remix = _remix(run, args)
    if args.executor == "slurm":
        return _reduce_on_slurm(run, args, remix, bucket or "")
    if args.profile:
        raise HpcsynthError("--profile is for --executor slurm; drop it or add --executor slurm")
    out = args.out or run.default_reduce_dir
    with reduce_lock(out):
        _no_slurm_reduce_into(run, Path(out))
        spec = prepare_reduce(run, args.out, args.tokenizer, args.partial, keep_parts=_keep(args), remix=remix)
        pending = [i for i in spec.part_indices() if spec.part_done(i) is None]
        with _Progress(len(pending)) as progress:
            run_parts_local(spec, args.jobs, progress.part_done)
            report = merge_only(spec.out_dir, progress.merged).data
    drop_empty(Path(out) / "parts")  # its lock is gone now: an empty folder goes too
    print_summary(report)
    if bucket is not None:
        _upload(Path(out), bucket)
    return 0


def _staged(run, args: argparse.Namespace) -> str | None:
    """`--out s3://...`: the reduce writes into RUN/reduce-s3/NAME (args.out is set to it) and uploads from
    there; returns the URL, or None for a local --out."""
    from hpcsynth.storage import check_scheme, is_remote

    if args.out is None:
        return None
    check_scheme(str(args.out), "--out")
    if not is_remote(args.out):
        return None
    from hpcsynth.storage.s3 import filesystem

    filesystem()  # without s3fs, one line with the install hint before any work
    url = str(args.out)
    from hpcsynth.storage.upload import check_prefix

    check_prefix(url, run.fingerprint())  # another run's output there: one line before any work
    args.out = run.staged_reduce_dir(url)
    return url


def _upload(out: Path, url: str) -> None:
    """The staged output to the bucket, the report last; what was already there whole is skipped."""
    from hpcsynth.reduce.cleanup import megabytes
    from hpcsynth.storage.upload import upload_dir

    sent = upload_dir(out, url)
    kept = f"; {sent.skipped} already there, whole" if sent.skipped else ""
    print(f"uploaded {sent.files} file(s), {megabytes(sent.bytes)}, to {url}{kept} (staged in {out}); "
          f"check it with: hpcsynth verify {shlex.quote(url)}")


def _no_slurm_reduce_into(run, out: Path) -> None:
    """A Slurm reduce's jobs write DIR without its lock (their submitter let it go): while Slurm still holds
    them, no other reduce starts into DIR (one squeue call; nothing where Slurm is not installed)."""
    from hpcsynth.execute.slurm_jobs import active_reduce_jobs

    active = active_reduce_jobs(run.reduce_jobs_path, out.name)
    if active:
        raise HpcsynthError(f"{out} is being written by the Slurm reduce jobs {', '.join(active)} (still queued or "
                            f"running); wait for {out}/report.json, or stop them with `hpcsynth cancel {run.root}`")


def _keep(args: argparse.Namespace) -> KeepParts:
    """What the merge leaves in DIR/parts (hpcsynth/reduce/cleanup.py)."""
    return "all" if args.keep_parts else "run"


def _remix(run, args: argparse.Namespace):
    """`--config FILE`: its reduce-side settings over the run's, the change printed before any work."""
    if not args.config:
        return None
    from hpcsynth.reduce.settings import change_line, remix

    found = remix(run.config(), args.config)
    if found.changes:
        print(f"reduce settings from {args.config} (the run's config.yaml is left as it is):")
        for change in found.changes:
            print(f"  {change_line(change)}")
    else:
        print(f"reduce settings from {args.config}: the same as the run's config")
    return found


def _clean_parts(run, args: argparse.Namespace) -> int:
    from hpcsynth.reduce.cleanup import clean_parts, drop_empty, megabytes
    from hpcsynth.reduce.lock import reduce_lock

    if args.config or args.keep_parts or args.executor != "local":
        raise HpcsynthError("--clean-parts only removes the parts of a finished reduce; run it alone (with --out "
                            "DIR if the reduce had one)")
    out = Path(args.out or run.default_reduce_dir)
    if not (out / "parts").is_dir():
        print(f"{out} has no parts to remove")
        return 0
    with reduce_lock(out):
        _no_slurm_reduce_into(run, out)
        freed = clean_parts(out)
    drop_empty(out / "parts")
    print(f"removed {megabytes(freed)} of parts from {out / 'parts'}; the output is untouched (a later reduce "
          f"into {out} tokenizes again)")
    return 0


def _reduce_on_slurm(run, args: argparse.Namespace, remix=None, bucket: str = "") -> int:
    from hpcsynth.execute.launch import load_profile
    from hpcsynth.execute.slurm import check_slurm_path
    from hpcsynth.execute.slurm_jobs import record_reduce
    from hpcsynth.reduce.lock import reduce_lock
    from hpcsynth.reduce.reducer import prepare_reduce
    from hpcsynth.reduce.slurm import submit_reduce

    out = Path(args.out) if args.out else run.default_reduce_dir
    # Before prepare_reduce writes anything there (submit_reduce checks again, for the grid's reduces).
    check_slurm_path(out, "reduce output directory", "pass --out a directory without them")
    config = run.config()
    slurm = load_profile(args.profile, config.slurm) if args.profile else config.slurm
    # Under the reduce lock, as a local reduce: preparing drops DIR's parts of other settings and rewrites
    # DIR/parts/spec.json, which a local reduce running into DIR reads part by part, and a local reduce
    # started meanwhile would do the same under the jobs being submitted.
    with reduce_lock(out):
        _no_slurm_reduce_into(run, out)
        spec = prepare_reduce(run, args.out, args.tokenizer, args.partial, keep_parts=_keep(args), remix=remix)
        jobs = submit_reduce(spec, slurm, upload_to=bucket)
        record_reduce(run.reduce_jobs_path, spec.out_dir.name, jobs)  # for `hpcsynth cancel RUN`
    where = (f"it is staged in {spec.out_dir}, and the merge job uploads it to {bucket}, report{spec.suffix}.json "
             f"last; then: hpcsynth verify {shlex.quote(bucket)}" if bucket else
             f"the report appears at {spec.out_dir}/report{spec.suffix}.json; then: hpcsynth verify {spec.out_dir}")
    print(f"reduce (slurm): {jobs['parts']} parts pending in array {jobs['array'] or '-'}, merge job "
          f"{jobs['merge']}; {where}")
    if spec.corpus_parts and spec.keep_parts == "run":
        print(f"  the merge job removes the mix-in corpora's parts once the report is written (--keep-parts keeps "
              f"them); until then every part stays, for a rerun to go on from")
    return 0


def print_summary(report: dict) -> None:
    out = f"{report['prefix']}"
    kind = {"megatron": ".bin/.idx", "datatrove": ".ds", "numpy": ".npy"}[report["format"]]
    partial = " (PARTIAL: not every shard is in)" if report["partial"] else ""
    corpus = f" + {report['corpus_tokens']:,} corpus" if report.get("corpus_tokens") else ""
    print(f"wrote {report['sequences']:,} documents, {report['tokens']:,} tokens{partial} "
          f"({report['synthetic_tokens']:,} synthetic + {report['original_tokens']:,} original{corpus}) to {out}{kind}")
    from hpcsynth.reduce.mix.manifest import mix_lines

    for line in mix_lines(report["mix"]):
        print(line)
    print(f"  tokenizer {report['tokenizer']} ({report['backend']}), EOS {report['eos_token']!r} = "
          f"{report['eos_id']} ({report['eos_source']}), {report['dtype']}")
    if report.get("text_export"):
        print(f"  text: {report['text_export']['rows']:,} records as Parquet in "
              f"{report['prefix'].rsplit('/', 1)[0]}/{report['text_export']['dir']}/ (with a dataset card)")
    print(f"  trainer: {_trainer_hint(report)}")
    _print_validation(report)
    _print_decontamination(report)
    _print_parts(report)
    if report.get("backend_note"):
        print(report["backend_note"], file=sys.stderr)
    for note in report["mix"]["policy"]["notes"]:  # a shrunk total, a repeated source, a share off target
        print(note, file=sys.stderr)


def _print_validation(report: dict) -> None:
    """One line per prompt that lost (or, under validate.action: keep, flagged) records, by check."""
    kind = "flagged" if report.get("validate_action") == "keep" else "rejected"
    for prompt, counts in report.get("validation", {}).items():
        failed = counts.get(kind) or {}
        if failed:
            total = counts["accepted"] + sum(counts.get("rejected", {}).values())
            checks = ", ".join(f"{check} {n:,}" for check, n in sorted(failed.items(), key=lambda kv: -kv[1]))
            print(f"  {prompt}: {sum(failed.values()):,} of {total:,} {kind} ({checks})")
    if report.get("rejects"):
        print(f"  rejects with their reasons: {report['prefix'].rsplit('/', 1)[0]}/{report['rejects']}; "
              f"samples per check: hpcsynth validate {shlex.quote(report['run'])}")


def _print_decontamination(report: dict) -> None:
    """reduce.decontaminate: the benchmarks, then per prompt the records refused by cause (under any
    validate.action), per source the documents dropped."""
    found = report.get("decontamination")
    if not found:
        return
    names = ", ".join(b["name"] for b in found["benchmarks"])
    print(f"  decontamination: {found['ngram']}-grams of {names}")
    for prompt, counts in found["synthetic"].items():
        if counts["refused"]:
            print(f"    {prompt}: {counts['refused']:,} records refused ({counts['copied']:,} copied from the source "
                  f"document, {counts['written']:,} written by the generator)")
    for source, count in found["documents"].items():
        if count:
            print(f"    {source}: {count:,} documents dropped")
    if not any(c["refused"] for c in found["synthetic"].values()) and not any(found["documents"].values()):
        print("    nothing held benchmark text")


def _print_parts(report: dict) -> None:
    """What DIR/parts holds now, and what the merge removed (hpcsynth/reduce/cleanup.py)."""
    from hpcsynth.reduce.cleanup import megabytes

    disk = report.get("parts_on_disk")
    if not disk:
        return
    out = report["prefix"].rsplit("/", 1)[0]
    folder = f"{out}/{disk['dir']}"
    clean = (f"`hpcsynth reduce {shlex.quote(report['run'])}"
             f"{'' if out == report['run'].rstrip('/') + '/reduce' else ' --out ' + shlex.quote(out)} --clean-parts`")
    if disk["keep"] == "all":
        print(f"  parts: {megabytes(disk['bytes'])} kept in {folder} (--keep-parts): a reduce into this folder that "
              f"changes only mix weights, totals or the format merges from them; {clean} removes them")
        return
    removed = (f"{megabytes(disk['removed_bytes'])} of {disk['removed_parts']} mix-in corpus part(s) removed "
               f"(--keep-parts keeps them), " if disk["removed_parts"] else "")
    print(f"  parts: {removed}{megabytes(disk['bytes'])} of the run's kept in {folder} for a re-mix of weights; "
          f"{clean} removes them")


def _trainer_hint(report: dict) -> str:
    prefixes = " ".join(report["prefixes"])
    if report["format"] == "megatron":
        return f"Megatron-LM --data-path {prefixes} (or --split; EOS ends every document)"
    if report["format"] == "datatrove":
        size = 2 if report["dtype"] == "uint16" else 4
        return f"DatatroveFolderDataset('{report['prefix'].rsplit('/', 1)[0]}', seq_len, token_size={size})"
    return f"np.load('{report['prefix']}.npy', mmap_mode='r') (nanoGPT / OLMo-core style windows)"


class _Progress:
    """Rich bars on stderr, silent when it is not a terminal: the parts as they are tokenized (their total
    tokens are not known before), then the merge over the tokens the mix will write."""

    def __init__(self, parts: int) -> None:
        self.parts = parts
        self.merge_task: TaskID | None = None

    def __enter__(self) -> "_Progress":
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        self.tokens = 0
        self.done = 0
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                                 TimeElapsedColumn(), console=console, disable=not console.is_terminal,
                                 transient=True)
        self.progress.__enter__()
        self.task = self.progress.add_task("reduce: tokenize", total=self.parts, detail=f"0/{self.parts} parts")
        return self

    def part_done(self, marker: PartMarker) -> None:
        self.tokens += marker.tokens
        self.done += 1
        self.progress.update(self.task, advance=1,
                             detail=f"{self.done}/{self.parts} parts, {self.tokens:,} tokens tokenized")

    def merged(self, written: int, total: int) -> None:
        if self.merge_task is None:
            self.merge_task = self.progress.add_task("reduce: merge   ", total=total, detail="")
        self.progress.update(self.merge_task, completed=written, total=max(total, written),
                             detail=f"{written:,} / {total:,} tokens written")

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)
