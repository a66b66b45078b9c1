"""What a reduce part feeds the mix: each source's documents, tokenized, capped, counted.

Which documents the mix takes depends on every part's counts (targets.py), known only once all parts
are done, so a part tokenizes every document a source could give: all synthetic records of the mixed
prompts (tokenized anyway) and every document of a corpus part. The run's originals are the exception,
since at FinePhrase's ratio most of them are never taken: with an automatic total, no part's share of
them can exceed its synthetic tokens x the originals' weight / the synthetic weights, so a part
tokenizes its originals in mix-key order only up to LAZY_MARGIN times that, and records the key where
it stopped. The merge's threshold must stay below every such key; when it does not (another weight, a
source too small), those parts are redone with all their originals (merge.py), so the choice is always
the one a full count would make. Documents over reduce.mix.max_doc_tokens are cut (the first tokens,
EOS kept last) or dropped, and counted. With reduce.decontaminate, an original or corpus document is
screened just before it would be tokenized (validate/contamination.py): one holding benchmark text is
dropped, counted per source ("contaminated") and listed in the rejects. So the originals a part leaves
untokenized are never screened, as they never reach the mix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcsynth.files import read_jsonl_zst
from hpcsynth.reduce.mix.choose import document_key
from hpcsynth.reduce.mix.sources import originals_source, prompt_sources, source_of
from hpcsynth.reduce.select import Document

# Byte-level BPE tokens of real text average 4-5 chars; a text this many chars per allowed token is
# encoded from a prefix first (then from prefixes twice as long, while one gives no more than the cap), so a
# 10 MB page is never tokenized whole only to be cut: memory follows max_doc_tokens, not the page.
PREFIX_CHARS_PER_TOKEN = 8
CORPUS_BATCH = 1024  # corpus documents encoded at a time...
CORPUS_BATCH_CHARS = 64 << 20  # ...or fewer: 1,024 pages of 20 MB each (a Parquet bomb's rows) held 20 GiB
# Originals tokenized beyond the most the mix could take from a part (None: all of them). 1.25 covers
# the spread of one part's originals around the run's average; too little only costs a redone part.
LAZY_MARGIN: float | None = 1.25
ORIGINALS_BATCH = 64  # originals are encoded this many at a time, in key order, until the bound is met


class MixFeed:
    def __init__(self, mix: dict[str, Any], encoder: Any, seed: int, all_originals: bool = False,
                 screen: Any = None, rejects: list[dict] | None = None) -> None:
        self.mix = mix
        self.screen = screen  # contamination.Screen of reduce.decontaminate, or None
        self.rejects = rejects if rejects is not None else []
        self.encoder = encoder
        self.seed = seed
        self.all_originals = all_originals
        self.prompts = prompt_sources(mix)
        self.originals = originals_source(mix)
        self.cap = int(mix["max_doc_tokens"])
        # limit: the mix key of the first original not tokenized (None: all were); rest_*: what was not.
        self.counts: list[dict[str, Any]] = [
            {"documents": 0, "tokens": 0, "cut": 0, "dropped": 0, "largest": 0, "chars": 0, "limit": None,
             "rest_documents": 0, "rest_chars": 0, "contaminated": 0} for _ in mix["sources"]]
        self.docs: list[tuple[Document, np.ndarray]] = []

    def add_synthetic(self, records: list[Document]) -> None:
        mixed = []
        for doc in records:
            source = source_of(self.prompts, doc.prompt)
            if source is not None:
                doc.source = source
                mixed.append(doc)
        self._add(mixed, "synthetic")

    def add_originals(self, run: Any, shards: list[int]) -> None:
        """The part's originals: all of them, or in key order up to the bound (see the module's doc)."""
        if self.originals is None:
            return
        docs = [Document("original", str(d["key"]), str(d.get("id", "")), d["text"], source=self.originals)
                for shard in shards for d in read_jsonl_zst(run.shard_path(shard))]
        bound = self._originals_bound()
        if bound is None:
            self._add(docs, "original")
            return
        keyed = sorted(((document_key(d.id, self.seed), d) for d in docs), key=lambda kd: kd[0])
        counts, done, start = self.counts[self.originals], 0, len(self.docs)
        while done < len(keyed) and counts["tokens"] < bound:
            self._add([d for _, d in keyed[done:done + ORIGINALS_BATCH]], "original")
            done += ORIGINALS_BATCH
        # Back in shard order: a part's files are the same whether it tokenized some originals or all.
        position = {id(d): i for i, d in enumerate(docs)}
        self.docs[start:] = sorted(self.docs[start:], key=lambda entry: position[id(entry[0])])
        if done < len(keyed):
            counts["limit"] = keyed[done][0]
            counts["rest_documents"] = len(keyed) - done
            counts["rest_chars"] = sum(len(d.text) for _, d in keyed[done:])

    def _originals_bound(self) -> float | None:
        if LAZY_MARGIN is None or self.all_originals or self.mix["total_tokens"]:
            return None
        sources = self.mix["sources"]
        synthetic = sum(s["weight"] for s in sources if s["kind"] == "synthetic")
        tokens = sum(self.counts[i]["tokens"] for i, s in enumerate(sources) if s["kind"] == "synthetic")
        return LAZY_MARGIN * tokens * sources[self.originals]["weight"] / synthetic

    def add_corpus(self, source: int, file: str, row_groups: list[int] | None, max_line_bytes: int,
                   rejects: list[dict]) -> None:
        """One file (or run of Parquet row groups) of a mix-in corpus, read by the planner's reader: the
        same formats, bounds and errors."""
        from hpcsynth.corpus.readers import read_file

        entry = self.mix["sources"][source]
        text_key, id_key, name = entry["text_key"], entry["id_key"], entry["name"]
        batch: list[Document] = []
        held = 0  # characters in batch
        for position, record, reason in read_file(file, [text_key, id_key], max_line_bytes=max_line_bytes,
                                                  row_groups=row_groups):
            where = f"{file}:{position}"
            text = record.get(text_key) if record is not None else None
            if not reason and (not isinstance(text, str) or not text.strip()):
                reason = f"no text in field {text_key!r} (reduce.mix.sources text_key)"
            if reason or record is None or not isinstance(text, str):
                rejects.append({"id": where, "shard": None, "prompt": None, "source": name,
                                "check": "corpus_unreadable", "reason": reason})
                continue
            doc_id = record.get(id_key)
            source_id = str(doc_id) if doc_id is not None else where
            batch.append(Document("corpus", f"{name}:{source_id}", source_id, text, source=source))
            held += len(text)
            if len(batch) >= CORPUS_BATCH or held >= CORPUS_BATCH_CHARS:
                self._add(batch, "corpus")
                batch, held = [], 0
        self._add(batch, "corpus")

    def _add(self, docs: list[Document], kind: str) -> None:
        if self.screen is not None and kind != "synthetic" and docs:  # synthetic records: screened by validation
            docs = self._clean(docs)
        if not docs:
            return
        limit = self.cap * PREFIX_CHARS_PER_TOKEN
        texts = [d.text[:limit] if self.cap and len(d.text) > limit else d.text for d in docs]
        for doc, text, array in zip(docs, texts, self.encoder.encode(texts, kind)):
            while len(text) < len(doc.text) and len(array) <= self.cap:
                # The prefix did not tell (more chars a token: long runs of spaces...): one twice as long, not
                # the whole text, which cost 630 MB for a 10 MB page under `tokenizers`. It ends at the whole
                # text, or at a prefix past the cap, cut as the first prefix would be.
                text = doc.text[:2 * len(text)]
                array = self.encoder.encode([text], kind)[0]
            counts = self.counts[doc.source]
            if self.cap and len(array) > self.cap:
                if self.mix["oversize"] == "drop":
                    counts["dropped"] += 1
                    continue
                array = np.concatenate((array[:self.cap - 1], array[-1:]))  # EOS stays last
                counts["cut"] += 1
            counts["documents"] += 1
            counts["tokens"] += len(array)
            counts["chars"] += len(doc.text)
            counts["largest"] = max(counts["largest"], len(array))
            doc.text = ""  # tokenized: a part holds tokens, not text and tokens (the export keeps records)
            self.docs.append((doc, array))

    def _clean(self, docs: list[Document]) -> list[Document]:
        """The documents without benchmark text; the others counted and listed in the rejects."""
        kept = []
        for doc, hit in zip(docs, self.screen.documents([d.text for d in docs])):
            if hit is None:
                kept.append(doc)
                continue
            self.counts[doc.source]["contaminated"] += 1
            self.rejects.append({"id": doc.id, "shard": None, "prompt": None,
                                 "source": self.mix["sources"][doc.source]["name"], "check": "contaminated",
                                 "reason": hit.reason(self.screen.n)})
        return kept

