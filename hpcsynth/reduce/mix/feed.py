"""What a reduce part feeds the mix: each source's documents, tokenized, capped, counted.

A part tokenizes every document a source could give, not just the ones the mix will take: which ones
are taken depends on every part's counts (targets.py), known only once all parts are done. The
synthetic records are tokenized anyway; the originals of a shard cost the extra. Documents over
reduce.mix.max_doc_tokens are cut (the first tokens, EOS kept last) or dropped, and counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpcsynth.files import read_jsonl_zst
from hpcsynth.reduce.mix.sources import originals_source, prompt_sources, source_of
from hpcsynth.reduce.select import Document

# Byte-level BPE tokens of real text average 4-5 chars; a text this many chars per allowed token is
# encoded from a prefix first, so a 10 MB page is not tokenized whole only to be cut.
PREFIX_CHARS_PER_TOKEN = 8
CORPUS_BATCH = 1024  # corpus documents encoded at a time


class MixFeed:
    def __init__(self, mix: dict[str, Any], encoder: Any) -> None:
        self.mix = mix
        self.encoder = encoder
        self.prompts = prompt_sources(mix)
        self.originals = originals_source(mix)
        self.cap = int(mix["max_doc_tokens"])
        self.counts = [{"documents": 0, "tokens": 0, "cut": 0, "dropped": 0, "largest": 0} for _ in mix["sources"]]
        self.docs: list[tuple[Document, np.ndarray]] = []

    def add_synthetic(self, records: list[Document]) -> None:
        mixed = []
        for doc in records:
            source = source_of(self.prompts, doc.prompt)
            if source is not None:
                doc.source = source
                mixed.append(doc)
        self._add(mixed, "synthetic")

    def add_originals(self, run: Any, shard: int) -> None:
        if self.originals is None:
            return
        self._add([Document("original", str(d["key"]), str(d.get("id", "")), d["text"], source=self.originals)
                   for d in read_jsonl_zst(run.shard_path(shard))], "original")

    def add_corpus(self, source: int, file: str, max_line_bytes: int, rejects: list[dict]) -> None:
        """One file of a mix-in corpus, read by the planner's reader (same formats, bounds and errors)."""
        from hpcsynth.plan.readers import read_file

        entry = self.mix["sources"][source]
        text_key, id_key, name = entry["text_key"], entry["id_key"], entry["name"]
        batch: list[Document] = []
        for position, record, reason in read_file(Path(file), [text_key, id_key], max_line_bytes=max_line_bytes):
            where = f"{file}:{position}"
            text = record.get(text_key) if record is not None else None
            if not reason and (not isinstance(text, str) or not text.strip()):
                reason = f"no text in field {text_key!r} (reduce.mix.sources text_key)"
            if reason:
                rejects.append({"id": where, "shard": None, "prompt": None, "source": name,
                                "check": "corpus_unreadable", "reason": reason})
                continue
            doc_id = record.get(id_key)
            source_id = str(doc_id) if doc_id is not None else where
            batch.append(Document("corpus", f"{name}:{source_id}", source_id, text, source=source))
            if len(batch) >= CORPUS_BATCH:
                self._add(batch, "corpus")
                batch = []
        self._add(batch, "corpus")

    def _add(self, docs: list[Document], kind: str) -> None:
        if not docs:
            return
        limit = self.cap * PREFIX_CHARS_PER_TOKEN
        texts = [d.text[:limit] if self.cap and len(d.text) > limit else d.text for d in docs]
        for doc, text, array in zip(docs, texts, self.encoder.encode(texts, kind)):
            if len(text) < len(doc.text) and len(array) <= self.cap:  # the prefix did not tell: encode it all
                array = self.encoder.encode([doc.text], kind)[0]
            counts = self.counts[doc.source]
            if self.cap and len(array) > self.cap:
                if self.mix["oversize"] == "drop":
                    counts["dropped"] += 1
                    continue
                array = np.concatenate((array[:self.cap - 1], array[-1:]))  # EOS stays last
                counts["cut"] += 1
            counts["documents"] += 1
            counts["tokens"] += len(array)
            counts["largest"] = max(counts["largest"], len(array))
            self.docs.append((doc, array))
