"""What stays in DIR/parts once a reduce's output is written, and `reduce --clean-parts`.

Parts (parts.py) are tokenized candidates: every document a mix source could give, not only those the
mix took. They serve twice: an interrupted reduce (Ctrl-C, a killed Slurm task, a mix refused by
too_few: error) goes on from its finished parts, and a later reduce into the same DIR that changes only
what the merge decides (mix weights, total_tokens, too_few, max_repeat, original_ratio, format, name,
max_file_mb; the spec key leaves them out) merges again from every part without tokenizing. Any other
change (validate:, min_chars, seed, the sources' files, the tokenizer...) redoes every part, so older
parts are removed then (reducer._drop_stale_parts).

The rule, applied by the merge after report.json is written (never before: a failed merge keeps every
part), wherever it runs (the local reduce, Slurm's merge job):
  keep_parts "run"  (`hpcsynth reduce`'s default): the mix-in corpora's parts are removed. Each holds a whole
                    corpus file tokenized, however little of it the mix takes (27.5 MB of parts beside a
                    94 KB mix that took 16 of a corpus's 20,000 documents); a re-mix tokenizes them again. The
                    run's own parts (its synthetic records and originals, about the output's size; the
                    originals only as many as the mix could take) stay, for a cheap re-mix.
  keep_parts "all"  (`--keep-parts`, and the Python API's and a grid's reduce): every part stays.
`reduce --clean-parts` removes every part of a finished reduce. A part may also be deleted by hand
whenever no reduce into DIR runs: the next reduce redoes what is missing.
Sizes count a file once: the text export's Parquet files are hard links of the parts' (removing the
part's name frees nothing, and keeping it costs nothing).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from hpcsynth.errors import RunError
from hpcsynth.reduce.lock import is_lock_file
from hpcsynth.reduce.report import report_path
from hpcsynth.reduce.spec import ReduceSpec


def settle_parts(spec: ReduceSpec) -> tuple[dict[str, Any], list[Path]]:
    """(what report.json says of DIR/parts, the files the merge removes once report.json is written)."""
    drop: list[Path] = []
    if spec.keep_parts == "run":
        for index in spec.part_indices():
            if spec.corpus_part(index) is not None:
                # The done marker first: a removal cut short leaves files no marker vouches for (redone).
                drop += sorted(spec.parts_dir.glob(f"part-{index:06d}.*"),
                               key=lambda p: not p.name.endswith(".done.json"))
    held = [p for p in spec.parts_dir.iterdir() if not is_lock_file(p.name)] if spec.parts_dir.is_dir() else []
    removed = own_bytes(drop)
    return {"dir": "parts", "keep": spec.keep_parts, "bytes": own_bytes(held) - removed,
            "removed_bytes": removed, "removed_parts": sum(p.name.endswith(".done.json") for p in drop)}, drop


def remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def clean_parts(out_dir: Path) -> int:
    """Remove every part of DIR's finished reduce (the caller holds the reduce lock); the bytes freed.
    Refused while DIR/parts is the progress of an unfinished reduce: one started after the last report."""
    out_dir = Path(out_dir)
    parts = out_dir / "parts"
    held = [p for p in parts.iterdir() if not is_lock_file(p.name)] if parts.is_dir() else []
    if not held:
        return 0
    reports = [p for p in (report_path(out_dir, False), report_path(out_dir, True)) if p.is_file()]
    spec = parts / "spec.json"
    newest = max((p.stat().st_mtime_ns for p in reports), default=None)
    if newest is None or (spec.is_file() and spec.stat().st_mtime_ns > newest):
        raise RunError(f"{parts} holds the finished parts of a reduce into {out_dir} that has not merged yet "
                       f"(no report.json newer than its parts/spec.json): run that reduce again to finish it "
                       f"from them, or delete {parts} yourself to give its progress up")
    freed = own_bytes(held)
    remove(sorted(held, key=lambda p: not p.name.endswith(".done.json")))
    return freed


def drop_empty(parts: Path) -> None:
    """DIR/parts itself, once nothing is left in it (after its lock is released)."""
    with contextlib.suppress(OSError):
        parts.rmdir()


def own_bytes(paths: list[Path]) -> int:
    """Bytes these files hold alone: a file with another hard link (the text export's) frees nothing."""
    total = 0
    for path in paths:
        try:
            info = path.lstat()
        except OSError:
            continue
        if info.st_nlink == 1:
            total += info.st_size
    return total


def megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB" if count >= 50_000 else f"{count / 1e3:,.1f} KB"
