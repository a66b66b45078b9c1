"""Settings for the vLLM CPU lane (tools/setup_vllm_lane.sh); they must be in place before vLLM loads.

VLLM_ENABLE_V1_MULTIPROCESSING=0 runs vLLM's engine core inside the test process. By default vLLM
spawns it in a child process (and on CPU a worker process under that); spawning from pytest works too,
but in-process starts in ~5 s instead of ~16 s, keeps the 2 shared cores for the model rather than for
three busy processes passing messages, and leaves no child behind if a test dies. Production keeps the
default: there the engine core overlapping the GPU with our Python is worth a process.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default (4) only slows start-up
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

_MEASURED: list[str] = []


@pytest.fixture(scope="session")
def measured() -> list[str]:
    """Lines such as 'vllm offline: 384 tokens in 0.2s'; printed at the end of the run."""
    return _MEASURED


def pytest_terminal_summary(terminalreporter) -> None:
    if _MEASURED:
        terminalreporter.section("vLLM lane measurements")
        for line in _MEASURED:
            terminalreporter.write_line(line)


def pytest_configure(config) -> None:
    # vLLM 0.32 on torch 2.13 warns about its own use of deprecated torch APIs; nothing for us to act on.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning")
