"""What a worker says it computed on, which status turns into GPU-hours or CPU worker-hours.

CUDA_VISIBLE_DEVICES is set by `launch --workers N` (one per GPU, or per slot on a CPU machine) and by
Slurm, so it says what a worker was given, not what its engine runs on. The vLLM part runs without vLLM
(the main lane has none): a stand-in package with vLLM's import surface says which platform it chose;
tests/vllm_lane checks the real CPU build.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from hpcsynth.config import config_from_dict
from hpcsynth.generate.clock import engine_device


def stand_in_vllm(monkeypatch, device_type: str) -> None:
    """Just enough of vLLM's modules for VllmEngine to start: LLM, the names it imports, the platform."""
    class LLM:
        def __init__(self, **kwargs) -> None:
            self.llm_engine = SimpleNamespace(step=lambda: [])

        def get_tokenizer(self):
            return None

    modules = {
        "vllm": types.ModuleType("vllm"), "vllm.exceptions": types.ModuleType("vllm.exceptions"),
        "vllm.inputs": types.ModuleType("vllm.inputs"), "vllm.sampling_params": types.ModuleType("vllm.sampling_params"),
        "vllm.platforms": types.ModuleType("vllm.platforms"),
    }
    modules["vllm"].LLM = LLM
    modules["vllm.exceptions"].VLLMClientError = type("VLLMClientError", (Exception,), {})
    modules["vllm.inputs"].tokens_input = lambda ids: {"prompt_token_ids": ids}
    modules["vllm.sampling_params"].RequestOutputKind = SimpleNamespace(FINAL_ONLY="final")
    modules["vllm.platforms"].current_platform = SimpleNamespace(device_type=device_type)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("device_type, visible, expected", [
    ("cpu", "0,1", ("cpu", 0)),    # the vLLM CPU build under launch --workers 2: CPU time, no GPUs
    ("cuda", None, ("cuda", 1)),   # a GPU workstation, in-process launch: no CUDA_VISIBLE_DEVICES, one GPU
    ("cuda", "2,3", ("cuda", 2)),  # a Slurm task given two GPUs
])
def test_vllm_engine_reports_the_platform_it_runs_on(monkeypatch, device_type: str, visible: str | None,
                                                     expected: tuple[str, int]) -> None:
    from hpcsynth.generate.engines.vllm_offline import VllmEngine

    stand_in_vllm(monkeypatch, device_type)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    engine = VllmEngine(config_from_dict({"model": {"engine": "vllm", "path": "m"}}))
    assert engine_device(engine, "vllm") == expected


@pytest.mark.parametrize("engine, kind, visible, expected", [
    (SimpleNamespace(device="cpu"), "transformers", "0", ("cpu", 0)),   # CPU-only, given slot 0
    (SimpleNamespace(device="cuda"), "transformers", None, ("cuda", 1)),
    (SimpleNamespace(), "fake", "0", ("cpu", 0)),
    (SimpleNamespace(), "endpoint", "0", ("remote", 0)),
])
def test_other_engines_report_what_they_run_on(monkeypatch, engine, kind: str, visible: str | None,
                                               expected: tuple[str, int]) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert engine_device(engine, kind) == expected
