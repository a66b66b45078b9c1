"""A reduce part's done marker (DIR/parts/part-NNNNNN.done.json) as a typed object.

parts.py writes it last, so a part with one is whole; spec.ReduceSpec.part_done reads it back with
`PartMarker.from_file`, which checks every field's type: a marker is data anyone with write access to
DIR can damage or forge, and the merge adds its counts up and indexes the mix sources with them. A wrong
type is one RunError line naming the file and the field (part_done takes it as "redo this part").
`to_dict()` gives the JSON parts.py writes, field for field in the same order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from hpcsynth.errors import RunError
from hpcsynth.files import read_json


@dataclass(frozen=True)
class MixCounts:
    """What a part holds of one mix source (mix/feed.py counts them, mix/plan.py adds them up)."""

    documents: int
    tokens: int
    cut: int
    dropped: int
    largest: int
    chars: int
    # The mix key of the first original not tokenized (None: all were); rest_*: what was not.
    limit: int | None
    rest_documents: int
    rest_chars: int
    # Documents dropped for holding benchmark text (reduce.decontaminate; validate/contamination.py).
    contaminated: int = 0


@dataclass(frozen=True)
class PartMarker:
    key: str  # the spec key the part was made under
    shards: list[int]
    documents: int
    tokens: int
    text_rows: int
    rejected_records: int
    max_token: int
    validation: dict[str, Any]  # counts by check (reduce/validate), added up by the report
    mix: list[MixCounts]  # one per spec.mix["sources"], in order
    backend: str
    backend_note: str = ""
    cpu_seconds: float = 0.0

    @classmethod
    def from_file(cls, path: Path) -> PartMarker:
        """The marker at `path`; RunError (one line, naming the file) when it is not JSON or a field has
        the wrong type; OSError when it cannot be read (a part not done yet has none)."""
        try:
            data = read_json(path)
        except ValueError as exc:
            raise RunError(f"reduce part marker {path} is not valid JSON ({exc})") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: object, path: Path | str) -> PartMarker:
        if not isinstance(data, dict):
            raise RunError(f"reduce part marker {path} holds a {type(data).__name__}, not an object")
        mix = data.get("mix")
        if not isinstance(mix, list):
            raise _forged(path, "mix", mix, "a list of counts per mix source")
        return cls(
            key=_typed(path, data, "key", str), shards=_counts(path, data, "shards"),
            documents=_count(path, data, "documents"), tokens=_count(path, data, "tokens"),
            text_rows=_count(path, data, "text_rows"), rejected_records=_count(path, data, "rejected_records"),
            max_token=_count(path, data, "max_token"), validation=_typed(path, data, "validation", dict, {}),
            mix=[_mix_counts(path, counts, s) for s, counts in enumerate(mix)],
            backend=_typed(path, data, "backend", str), backend_note=_typed(path, data, "backend_note", str, ""),
            cpu_seconds=float(_typed(path, data, "cpu_seconds", (int, float), 0.0)),
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for counts in data["mix"]:  # written only when some: a marker of a reduce without benchmarks is as before
            if not counts["contaminated"]:
                del counts["contaminated"]
        return data


def _mix_counts(path: Path | str, counts: object, source: int) -> MixCounts:
    where = f"mix[{source}]"
    if not isinstance(counts, dict):
        raise _forged(path, where, counts, "an object of counts")
    limit = None if counts.get("limit") is None else _count(path, counts, "limit", where)
    values = {f.name: _count(path, counts, f.name, where) for f in dataclasses.fields(MixCounts)
              if f.name != "limit" and (f.name in counts or f.default is dataclasses.MISSING)}
    return MixCounts(limit=limit, **values)


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count(path: Path | str, data: dict, field: str, where: str = "") -> int:
    value = data.get(field)
    if not _is_count(value):
        raise _forged(path, f"{where}.{field}" if where else field, value, "a count (an integer >= 0)")
    return value


def _counts(path: Path | str, data: dict, field: str) -> list[int]:
    value = data.get(field)
    if not isinstance(value, list) or not all(_is_count(v) for v in value):
        raise _forged(path, field, value, "a list of shard ids")
    return list(value)


def _typed(path: Path | str, data: dict, field: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if field not in data and default is not ...:
        return default
    value = data.get(field)
    if not isinstance(value, kind) or isinstance(value, bool):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise _forged(path, field, value, f"a {names}")
    return value


def _forged(path: Path | str, field: str, value: object, wanted: str) -> RunError:
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return RunError(f"reduce part marker {path}: {field} is {shown}, not {wanted}; delete the marker and run "
                    f"`hpcsynth reduce` again (it redoes that part)")
