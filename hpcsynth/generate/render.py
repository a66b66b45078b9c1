"""`hpcsynth prompts`: list the prompt library and show one prompt on a document as the engine gets it.

An edge view for people writing prompts: it uses the worker's own document cut and the generator's own
chat template, so the text and token count shown are those a run will send.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcsynth.config import Config
from hpcsynth.errors import ConfigError, InputError
from hpcsynth.generate.shard import truncate_document
from hpcsynth.optional import require
from hpcsynth.prompts import Prompt


@dataclass(frozen=True)
class Rendered:
    text: str  # what the engine receives: the chat template applied, or the bare messages without one
    tokens: int  # prompt tokens by the generator's tokenizer; 0 when none is available
    tokenizer: str  # where the tokenizer came from, or why there is none


def render_for_engine(prompt: Prompt, document: str, config: Config, tokenizer: str = "") -> Rendered:
    """One prompt on one document exactly as the engine gets it: cut at model.max_input_chars, rendered
    with the generator's chat template (vLLM and transformers both render this way), tokens counted."""
    text, _ = truncate_document(document, config.model.max_input_chars)
    messages = prompt.render(text)
    source = tokenizer or config.model.path
    if not source or not Path(source).expanduser().is_dir():
        bare = "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages)
        why = f"no tokenizer: {source or 'model.path is empty'} is not a local model directory (pass --tokenizer)"
        return Rendered(bare, 0, why)
    require("transformers", extra="cpu", for_what="rendering with the model's chat template")
    from transformers import AutoTokenizer

    try:
        loaded = AutoTokenizer.from_pretrained(str(Path(source).expanduser()))
        rendered = str(loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot render with the tokenizer in {source}: {str(exc).splitlines()[0]}") from None
    return Rendered(rendered, len(loaded.encode(rendered, add_special_tokens=False)), source)


def read_document(path: Path, text_key: str = "text") -> str:
    """A plain text file, or the first record of a corpus file (JSONL plain, .gz or .zst, or Parquet)."""
    if not path.is_file():
        raise InputError(f"--doc {path}: no such file")
    if ".jsonl" not in path.name and not path.name.endswith(".parquet"):
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"--doc {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    from hpcsynth.corpus.readers import read_file  # the planner's own reader: what --doc shows is what plan reads

    for line, record, reason in read_file(path, [text_key]):
        if record is None:
            raise InputError(f"{path} line {line}: {reason}")
        text = record.get(text_key)
        if not isinstance(text, str):
            raise InputError(f"{path} line {line}: no string field {text_key!r} (set plan.text_key)")
        return text
    raise InputError(f"--doc {path}: the file holds no documents")
