"""The vLLM engine turns vLLM's usage statistics off before vLLM is imported: nothing leaves the machine.

Runs without vLLM: the import is replaced by one that records the environment it sees.
"""

from __future__ import annotations

import builtins
import os

import pytest

from hpcsynth.config import config_from_dict
from hpcsynth.errors import MissingDependency


def test_usage_stats_are_off_before_vllm_is_imported(monkeypatch) -> None:
    from hpcsynth.generate.engines.vllm_offline import VllmEngine

    for name in ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "HF_HUB_DISABLE_TELEMETRY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "0")  # a user's "0" must not turn it back on
    seen: dict[str, str | None] = {}
    real_import = builtins.__import__

    def spying_import(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            seen.update({k: os.environ.get(k) for k in ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK",
                                                         "HF_HUB_DISABLE_TELEMETRY")})
            raise ImportError("no vllm here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spying_import)
    config = config_from_dict({"model": {"engine": "vllm", "path": "m"}})
    with pytest.raises(MissingDependency, match=r"vllm .*pip install 'hpcsynth\[vllm\]'"):
        VllmEngine(config)
    assert seen == {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
