"""Continuous feeding: keep an engine's slots full from a lazy stream of requests.

An engine that generates in lockstep batches idles every slot whose sequence finished early until
the longest one in the batch is done; with output lengths from tens to thousands of tokens that is a
third of the GPU or more. Engines that schedule per sequence (vLLM, a server) instead take a new request
the moment a slot frees: the Feeder hands out exactly as many as fit. tools/bench_saturation.py
measures the difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Feeder(Generic[T]):
    """Hands out at most `capacity - in_flight` items at a time, pulling lazily from `items`."""

    def __init__(self, items: Iterable[T], capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._items: Iterator[T] = iter(items)
        self.capacity = capacity
        self.exhausted = False

    def refill(self, in_flight: int) -> list[T]:
        out: list[T] = []
        while not self.exhausted and in_flight + len(out) < self.capacity:
            try:
                out.append(next(self._items))
            except StopIteration:
                self.exhausted = True
        return out
