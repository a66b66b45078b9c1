"""The reducer's tokenizer: a Hugging Face tokenizer.json, encoded by `tokenizers` or a fast backend.

A training document is BOS (when the tokenizer's own post-processor puts one before a text, as
Llama-2's does), the text's ids, then EOS once: Megatron's and flat readers insert no separators. EOS
is the tokenizer's end-of-text token, looked up by name, not the chat model's end-of-turn: a ChatML
generator (SmolLM2) names `<|im_end|>` as eos_token in its tokenizer_config, which would end every
training document with an end-of-turn marker. Where EOS came from is reported.

The fast backend (gigatoken) is used only after a parity gate: it must encode a sample exactly as
`tokenizers` does, or the reducer falls back to `tokenizers` with a one-line note.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from hpcsynth.errors import ConfigError
from hpcsynth.optional import require

# End-of-text tokens, most common first. End-of-turn tokens (<|im_end|>, <|eot_id|>) are not here.
END_OF_TEXT = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|end|>")
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|eot|>")
BACKENDS = ("auto", "tokenizers", "gigatoken")


@dataclass
class DocumentTokenizer:
    path: Path
    tokenizer: Any  # tokenizers.Tokenizer
    eos_id: int
    eos_token: str
    eos_source: str  # why this EOS: "reduce.eos_token", "end-of-text by name", "tokenizer_config.json"
    vocab_size: int
    bos_ids: list[int] = field(default_factory=list)
    backend: str = "tokenizers"
    fast: Any = None  # a gigatoken.Tokenizer once the parity gate passed

    def encode_raw(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, no special tokens, by the chosen backend."""
        if self.fast is not None:
            return self.fast.encode_batch_list(texts, parallel=False)
        return self.encode_reference(texts)

    def encode_reference(self, texts: list[str]) -> list[list[int]]:
        """Ids by `tokenizers` itself: the reference the fast backend must match."""
        return [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def documents(self, texts: list[str]) -> list[np.ndarray]:
        """Training documents: BOS (if the tokenizer has one), the text, EOS."""
        dtype = np.uint32
        head = np.asarray(self.bos_ids, dtype=dtype)
        tail = np.asarray([self.eos_id], dtype=dtype)
        pieces = self._fast_arrays(texts) if self.fast is not None else None
        if pieces is None:
            pieces = [np.asarray(ids, dtype=dtype) for ids in self.encode_raw(texts)]
        return [np.concatenate((head, piece, tail)) for piece in pieces]

    def _fast_arrays(self, texts: list[str]) -> list[np.ndarray] | None:
        # gigatoken's batch result is one flat uint32 buffer plus offsets: slicing it costs nothing,
        # where Python lists of ints cost as much as the encoding itself.
        batch = self.fast.encode_batch(texts, parallel=False)
        try:
            offsets = batch.layout.offsets.data
            flat = batch.layout.content.data
        except AttributeError:  # another layout: take the plain lists
            return None
        return [flat[offsets[i]:offsets[i + 1]] for i in range(len(texts))]

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": str(self.path), "eos_token": self.eos_token, "eos_id": self.eos_id,
                "eos_source": self.eos_source, "bos_ids": self.bos_ids, "vocab_size": self.vocab_size,
                "backend": self.backend}


def load_tokenizer(path: str | Path, eos_token: str = "", key: str = "reduce.tokenizer") -> DocumentTokenizer:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    require("tokenizers", extra="cpu", for_what="reduce's tokenizer")
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{key}: no tokenizer.json at {path}; give a tokenizer.json file or a directory "
                          f"holding one (--tokenizer PATH)")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # the tokenizers library raises plain Exceptions for bad files
        raise ConfigError(f"{file}: not a readable tokenizer.json ({exc})") from None
    eos, source = _choose_eos(tokenizer, file.parent, eos_token)
    eos_id = tokenizer.token_to_id(eos)
    if eos_id is None:
        raise ConfigError(f"reduce.eos_token {eos!r} is not in the vocabulary of {file}; pick one of its "
                          f"special tokens, e.g. {', '.join(_specials(tokenizer)[:5]) or '<|endoftext|>'}")
    return DocumentTokenizer(file, tokenizer, eos_id, eos, source, tokenizer.get_vocab_size(with_added_tokens=True),
                             bos_ids=_bos_ids(tokenizer))


def _choose_eos(tokenizer: Any, directory: Path, configured: str) -> tuple[str, str]:
    if configured:
        return configured, "reduce.eos_token"
    for token in END_OF_TEXT:
        if tokenizer.token_to_id(token) is not None:
            return token, "end-of-text by name"
    named = _configured_eos(directory)
    if named and named not in END_OF_TURN:
        return named, "tokenizer_config.json"
    raise ConfigError(f"{directory / 'tokenizer.json'}: cannot tell its end-of-text token (none of "
                      f"{', '.join(END_OF_TEXT)}); set reduce.eos_token to one of its special tokens")


def _configured_eos(directory: Path) -> str:
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return ""
    try:
        eos = orjson.loads(config.read_bytes()).get("eos_token") or ""
    except (orjson.JSONDecodeError, AttributeError):
        raise ConfigError(f"{config}: not a JSON object; fix it or set reduce.eos_token") from None
    eos = eos.get("content", "") if isinstance(eos, dict) else eos
    return eos if isinstance(eos, str) else ""


def _bos_ids(tokenizer: Any) -> list[int]:
    """The special ids the post-processor puts before a text (Llama-2: <s>); none for GPT-style BPE."""
    probe = "hello"
    bare = tokenizer.encode(probe, add_special_tokens=False).ids
    full = tokenizer.encode(probe, add_special_tokens=True).ids
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start]
    return []


def _specials(tokenizer: Any) -> list[str]:
    return [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special]
