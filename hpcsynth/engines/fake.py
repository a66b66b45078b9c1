"""A model-free engine: deterministic text from the prompt, with faults on demand.

For fast unit tests and fault injection only; every path it covers is also tested with a real model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from hpcsynth.config import Config
from hpcsynth.engines import Completion, Request


class FakeEngine:
    revision = ""

    def __init__(self, config: Config, reject_if: str = "") -> None:
        self.model_id = config.model.path or "fake"
        self.max_tokens = config.sampling.max_tokens
        # Requests whose prompt contains this marker are rejected, like an over-long document.
        self.reject_if = reject_if

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        for request in requests:
            prompt = request.messages[-1]["content"]
            prompt_tokens = len(prompt.split())
            if self.reject_if and self.reject_if in prompt:
                yield Completion(request.record_id, "", "rejected", prompt_tokens, 0, "fake: rejected on marker")
                continue
            words = _words(request, self.max_tokens)
            finish = "length" if len(words) == self.max_tokens else "stop"
            yield Completion(request.record_id, " ".join(words), finish, prompt_tokens, len(words))

    def close(self) -> None:
        pass


def _words(request: Request, limit: int) -> list[str]:
    digest = hashlib.sha256(f"{request.record_id}:{request.seed}".encode()).hexdigest()
    source = request.messages[-1]["content"].split()
    count = min(limit, 8 + int(digest[:4], 16) % 40)
    return [source[(int(digest[i % 60:i % 60 + 4], 16) + i) % len(source)] for i in range(count)]
