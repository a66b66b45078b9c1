"""Bytes per token: how the planner turns a document's size into estimated tokens.

Measured once per plan, before any group starts (so every process uses the same number), on the first
MiB of usable text with the generator's own tokenizer when model.path holds a tokenizer.json; otherwise
a documented default. The number and where it came from go into the manifest and the summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hpcsynth.config import Config
from hpcsynth.corpus.readers import read_file
from hpcsynth.storage import Location

DEFAULT_BYTES_PER_TOKEN = 4.0  # English web text under ~50k-vocabulary BPE tokenizers: 4.2-4.6; rounded down
SAMPLE_BYTES = 1 << 20
MAX_SAMPLE_LINE = 64 << 20  # a longer line is skipped here as the plan itself rejects it


def bytes_per_token(config: Config, paths: Sequence[Location]) -> tuple[float, str]:
    if config.plan.bytes_per_token > 0:
        return config.plan.bytes_per_token, "plan.bytes_per_token"
    tokenizer = _tokenizer(config.model.path)
    if tokenizer is None:
        return DEFAULT_BYTES_PER_TOKEN, "default (no tokenizer.json at model.path)"
    texts = _sample(paths, config.plan.text_key)
    if not texts:
        return DEFAULT_BYTES_PER_TOKEN, "default (no text to measure)"
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    # Rounded so that the same sample gives the same shards whatever the float noise of the tokenizer build.
    return round(size / max(tokens, 1), 3), f"measured on {size:,} bytes with {config.model.path}"


def _tokenizer(model_path: str):
    path = Path(model_path) if model_path else None
    if path is None or not (path / "tokenizer.json").is_file():
        return None
    try:
        from tokenizers import Tokenizer  # heavy; only when there is a tokenizer to load
    except ImportError:
        return None
    try:
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception:  # a tokenizer we cannot read: the default is still a fine estimate
        return None


def _sample(paths: Sequence[Location], text_key: str) -> list[str]:
    texts, size = [], 0
    for path in paths:
        for _, record, _ in read_file(path, [text_key], max_line_bytes=MAX_SAMPLE_LINE):
            text = record.get(text_key) if record else None
            if isinstance(text, str) and text.strip():
                texts.append(text[:SAMPLE_BYTES])
                size += len(text)
                if size >= SAMPLE_BYTES:
                    return texts
    return texts
