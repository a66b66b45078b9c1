"""The synthetic text itself as a Parquet dataset, with a README dataset card (as FinePhrase published).

One Parquet file per reduce part, written by the part step; the merge links them under
DIR/text/train-NNNNN-of-MMMMM.parquet, and the dataset card (reduce/card.py) writes DIR/text/README.md,
whose YAML header tells `datasets.load_dataset("parquet", data_dir=...)` and the Hub where the files are. Columns are the same in
every file (a dataset whose files disagree on their schema does not load): provenance the planner
attached to a record (`meta`) is kept as a JSON string, null when absent.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

from hpcsynth.errors import ConfigError
from hpcsynth.files import current_umask

COLUMNS = ("id", "text", "prompt", "source_id", "model", "template_hash", "finish_reason",
           "completion_tokens", "seed", "meta")


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError("the text export needs pyarrow (pip install pyarrow), or set reduce.text_export: "
                          "false") from None


def write_text_part(path: Path, records: list[dict[str, Any]]) -> None:
    """Atomically write records as one Parquet file with COLUMNS."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for record in records:
        for name in COLUMNS[:-1]:
            columns[name].append(record.get(name))
        meta = record.get("meta")
        columns["meta"].append(orjson.dumps(meta).decode() if meta is not None else None)
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("prompt", pa.string()),
                        ("source_id", pa.string()), ("model", pa.string()), ("template_hash", pa.string()),
                        ("finish_reason", pa.string()), ("completion_tokens", pa.int64()),
                        ("seed", pa.int64()), ("meta", pa.string())])
    columns["source_id"] = [None if v is None else str(v) for v in columns["source_id"]]
    table = pa.table(columns, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide the export from the team
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
