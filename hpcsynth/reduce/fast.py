"""The fast tokenizer backend (gigatoken) and its parity gate.

gigatoken encodes a tokenizer.json 10-30x faster per core than `tokenizers`, but it is a separate
implementation: a normalizer or pre-tokenizer it handles differently would silently change the training
data. So it is used only when it encodes a sample of the run's own texts exactly as `tokenizers` does;
otherwise the reducer falls back to `tokenizers` and says so in one line. Each part checks its own first
documents again (parts.py), so a difference the sample missed costs speed, never correctness.
"""

from __future__ import annotations

from dataclasses import replace

from hpcsynth.errors import ConfigError
from hpcsynth.optional import require
from hpcsynth.reduce.tokenize import BACKENDS, DocumentTokenizer


def choose_backend(tok: DocumentTokenizer, requested: str, sample: list[str]) -> tuple[DocumentTokenizer, str]:
    """The tokenizer to reduce with, and a note for the user ("" when nothing needs saying)."""
    if requested not in BACKENDS:
        raise ConfigError(f"reduce.backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "tokenizers":
        return tok, ""
    if requested == "gigatoken":  # asked for by name: its absence is the user's to fix (auto falls back)
        require("gigatoken", extra="cpu", for_what="reduce.backend: gigatoken; or set reduce.backend: auto")
    fast = load_fast(tok)
    if fast is None:
        if requested == "gigatoken":
            raise ConfigError(f"reduce.backend is gigatoken but gigatoken cannot load {tok.path}; "
                              "set reduce.backend: auto")
        return tok, ""
    candidate = replace(tok, fast=fast, backend="gigatoken")
    mismatch = parity_mismatch(candidate, sample)
    if mismatch is not None:
        return tok, (f"note: gigatoken encodes {tok.path.name} differently from tokenizers (sample document "
                     f"{mismatch}); using tokenizers")
    return candidate, ""


_LOADED: dict[str, object] = {}


def load_fast(tok: DocumentTokenizer):
    """A gigatoken tokenizer for the same tokenizer.json, or None when gigatoken is absent or refuses it."""
    try:
        import gigatoken
    except ImportError:
        return None
    key = f"{tok.path}:{tok.path.stat().st_mtime_ns}"
    if key not in _LOADED:  # loading a large vocabulary takes ~0.4 s: once per process
        try:
            _LOADED[key] = gigatoken.Tokenizer(str(tok.path))
        except Exception:  # an unsupported model type or option: the gate treats it as "not available"
            _LOADED[key] = None
    return _LOADED[key]


def parity_mismatch(tok: DocumentTokenizer, sample: list[str]) -> int | None:
    """Index of the first sample text the fast backend encodes differently, or None if all match."""
    if not sample:
        return None
    try:
        fast = tok.encode_raw(sample)
    except Exception:  # the fast backend failing on a text is a mismatch, not a crash
        return 0
    reference = tok.encode_reference(sample)
    for index, (ours, theirs) in enumerate(zip(fast, reference)):
        if list(ours) != theirs:
            return index
    return None
