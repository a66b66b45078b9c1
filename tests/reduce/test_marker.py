"""A reduce part's done marker read back as PartMarker: every field typed, a forged one is one line naming
the file, and the JSON written is the JSON read."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from hpcsynth.errors import RunError
from hpcsynth.reduce.marker import MixCounts, PartMarker

COUNTS = {"documents": 3, "tokens": 40, "cut": 0, "dropped": 1, "largest": 20, "chars": 200, "limit": None,
          "rest_documents": 0, "rest_chars": 0}
MARKER = {"key": "k1", "shards": [0, 1], "documents": 3, "tokens": 40, "text_rows": 3, "rejected_records": 1,
          "max_token": 99, "validation": {"accepted": 3}, "mix": [COUNTS, {**COUNTS, "limit": 7}],
          "backend": "tokenizers", "backend_note": "", "cpu_seconds": 0.5}


def test_marker_round_trips_its_json(tmp_path: Path) -> None:
    path = tmp_path / "part-000000.done.json"
    path.write_bytes(orjson.dumps(MARKER))
    marker = PartMarker.from_file(path)
    assert marker.mix[1] == MixCounts(**{**COUNTS, "limit": 7}) and marker.shards == [0, 1]
    assert orjson.dumps(marker.to_dict()) == orjson.dumps(MARKER)  # same keys, same order


@pytest.mark.parametrize("field, value, said", [
    ("documents", "many", "documents is 'many', not a count"),
    ("tokens", -1, "tokens is -1, not a count"),
    ("max_token", True, "max_token is True, not a count"),
    ("backend", 3, "backend is 3, not a str"),
    ("validation", [1], "validation is [1], not a dict"),
    ("shards", [0, "x"], "shards is [0, 'x'], not a list of shard ids"),
    ("mix", "x", "mix is 'x', not a list of counts per mix source"),
    ("mix", [COUNTS, {**COUNTS, "tokens": 1.5}], "mix[1].tokens is 1.5, not a count"),
    ("mix", [{**COUNTS, "limit": "far"}], "mix[0].limit is 'far', not a count"),
])
def test_a_forged_field_is_one_line_naming_the_file(tmp_path: Path, field: str, value: object, said: str) -> None:
    path = tmp_path / "part-000003.done.json"
    path.write_bytes(orjson.dumps({**MARKER, field: value}))
    with pytest.raises(RunError) as caught:
        PartMarker.from_file(path)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and str(path) in message and said in message, message


@pytest.mark.parametrize("data", [b"[1, 2]", b'{"key": "k1"', b"null"])
def test_a_marker_that_is_not_an_object_is_one_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "part-000000.done.json"
    path.write_bytes(data)
    with pytest.raises(RunError, match=r"part-000000\.done\.json") as caught:
        PartMarker.from_file(path)
    assert len(str(caught.value).splitlines()) == 1


def test_optional_fields_default_when_absent(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(orjson.dumps({k: v for k, v in MARKER.items() if k not in ("backend_note", "cpu_seconds")}))
    marker = PartMarker.from_file(path)
    assert marker.backend_note == "" and marker.cpu_seconds == 0.0
