"""The reducer's tokenizer: a Hugging Face tokenizer.json, used through the `tokenizers` library.

Documents are encoded without special tokens (a Llama-2 tokenizer would otherwise prepend <s>), and the
reducer appends EOS itself, once per document, as Megatron's and flat readers expect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from hpcsynth.errors import ConfigError

WELL_KNOWN_EOS = ("<|endoftext|>", "</s>", "<|im_end|>", "<eos>", "<|end_of_text|>")


@dataclass
class DocumentTokenizer:
    path: Path
    tokenizer: object
    eos_id: int
    eos_token: str
    vocab_size: int

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text followed by EOS."""
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [e.ids + [self.eos_id] for e in encodings]


def load_tokenizer(path: str | Path, eos_token: str = "", key: str = "reduce.tokenizer") -> DocumentTokenizer:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
    eos = eos_token or _configured_eos(file.parent) or _well_known_eos(tokenizer)
    if not eos:
        raise ConfigError(f"{file}: cannot tell its end-of-document token; set reduce.eos_token "
                          f"(e.g. '</s>' or '<|endoftext|>')")
    eos_id = tokenizer.token_to_id(eos)
    if eos_id is None:
        raise ConfigError(f"reduce.eos_token {eos!r} is not in the vocabulary of {file}")
    return DocumentTokenizer(file, tokenizer, eos_id, eos, tokenizer.get_vocab_size(with_added_tokens=True))


def _configured_eos(directory: Path) -> str:
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return ""
    eos = orjson.loads(config.read_bytes()).get("eos_token") or ""
    return eos.get("content", "") if isinstance(eos, dict) else eos


def _well_known_eos(tokenizer) -> str:
    for token in WELL_KNOWN_EOS:
        if tokenizer.token_to_id(token) is not None:
            return token
    return ""
