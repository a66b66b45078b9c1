"""Generation engines behind one small protocol.

The worker hands an engine a stream of Requests and gets Completions back, in any order, as they
finish; it never knows which engine runs. Heavy libraries are imported only by the engine that needs
them, so plan and status start fast on a login node.
"""

from __future__ import annotations

import os

from hpcsynth.config import Config
from hpcsynth.errors import ConfigError
from hpcsynth.generate.engines.protocol import Completion, Engine, Request  # noqa: F401  (the package's API)


# What a model directory must hold for transformers or vLLM to load weights from it.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def check_model(config: Config, source: str = "the config", here: bool = True) -> None:
    """Refuse, before any worker starts, a model no engine could load: an empty model.path, or a local
    directory that is missing or holds no weights. A hub id (Org/Name) is left to the engine: it may sit
    in the cluster's cache, which a login node need not see. With `here` False (workers on other
    machines) a directory this machine does not see is left to the workers too."""
    kind, path = config.model.engine, config.model.path
    if kind == "fake":
        return
    if not path:
        hint = ("; `hpcsynth demo DIR` builds a tiny model in DIR/model to start with" if kind == "transformers"
                else "")
        raise ConfigError(f"{source}: 'model.path' is empty; set it to a local model directory{hint}")
    if kind not in ("transformers", "vllm"):
        return
    local = os.path.expanduser(path)
    if not path.startswith(("/", ".", "~")) and not os.path.exists(local):
        return
    if not os.path.isdir(local):
        if not here and not os.path.exists(local):
            return
        raise ConfigError(f"{source}: 'model.path' {path} is not a directory; point it at a local copy of the "
                          f"model (hpcsynth downloads nothing)")
    names = os.listdir(local)
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in names):
        raise ConfigError(f"{source}: 'model.path' {path} holds no weights (no *.safetensors or *.bin); point "
                          f"it at a complete model directory")


def make_engine(config: Config) -> Engine:
    kind = config.model.engine
    check_model(config)
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
