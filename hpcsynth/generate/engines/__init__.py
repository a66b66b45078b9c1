"""Generation engines behind one small protocol.

The worker hands an engine a stream of Requests and gets Completions back, in any order, as they
finish; it never knows which engine runs. Heavy libraries are imported only by the engine that needs
them, so plan and status start fast on a login node.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from hpcsynth.config import Config
from hpcsynth.errors import ConfigError


@dataclass(frozen=True)
class Request:
    record_id: str
    messages: list[dict[str, str]]
    seed: int


@dataclass(frozen=True)
class Completion:
    record_id: str
    text: str
    # "stop" (the model ended), "length" (cut at max_tokens) or "rejected" (never generated; see error).
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    error: str = ""
    # Seconds from the engine taking the request to its completion.
    seconds: float = 0.0


class Engine(Protocol):
    model_id: str
    revision: str

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        """Yield one Completion per Request, as each finishes."""
        ...

    def close(self) -> None: ...

    # Optional: `step_down() -> str` lowers concurrency after an out-of-memory error and describes the
    # change ('' at the floor); the worker calls it when present.


def make_engine(config: Config) -> Engine:
    kind = config.model.engine
    path = config.model.path
    if kind != "fake" and not path:
        raise ConfigError("model.path is empty; set it to a local model directory")
    if kind in ("transformers", "vllm") and path.startswith(("/", ".", "~")) and not os.path.isdir(
            os.path.expanduser(path)):
        raise ConfigError(f"model.path {path} is not a directory; point it at a local copy of the model "
                          f"(hpcsynth downloads nothing)")
    if kind == "transformers":
        from hpcsynth.generate.engines.hf import TransformersEngine

        return TransformersEngine(config)
    if kind == "vllm":
        from hpcsynth.generate.engines.vllm_offline import VllmEngine

        return VllmEngine(config)
    if kind == "endpoint":
        from hpcsynth.generate.engines.endpoint import EndpointEngine

        return EndpointEngine(config)
    if kind == "fake":
        from hpcsynth.generate.engines.fake import FakeEngine

        return FakeEngine(config)
    raise ConfigError(f"model.engine {kind!r} is not available; use transformers, vllm, endpoint or fake")
