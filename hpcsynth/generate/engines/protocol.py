"""The engine protocol: the Requests a worker hands an engine and the Completions it gets back.

Its own module so that the engines (which implement it) and engines/__init__.py (which picks one) import
it without importing each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol


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
    # Optional: `telemetry() -> dict | None`, one reading of what the engine reports about itself
    # (engines/telemetry.py: KV-cache use, prefix-cache and speculative counters, queue, preemptions),
    # with `telemetry_source` and `telemetry_scope`; the worker's clock calls it once a tick, from its
    # own thread, so it must be cheap and safe beside generate().
