"""The transformers engine: CPU or one GPU, for tests and small users.

Requests are generated in padded batches of worker.batch_size. Sampling is seeded per batch from its
first request's seed, so a record reproduces when the batch does (the vLLM engine seeds per request).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator

from hpcsynth.config import Config
from hpcsynth.generate.engines import Completion, Request
from hpcsynth.errors import EngineError


class TransformersEngine:
    def __init__(self, config: Config) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hpcsynth never downloads a model
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # worker logs are line-oriented; bars only garble them

        if config.worker.threads > 0:
            torch.set_num_threads(config.worker.threads)
        self.torch = torch
        self.config = config
        self.model_id = config.model.path
        self.revision = config.model.revision
        device = config.worker.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"worker.device is {device!r} but torch sees no CUDA device here; use auto or cpu")
        self.device = device
        # bf16 matmuls are slow on most CPUs; on CPU the engine computes in float32 instead.
        dtype = torch.float32 if device == "cpu" or config.model.dtype == "auto" else getattr(torch, config.model.dtype)
        kwargs = {"revision": config.model.revision} if config.model.revision else {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(config.model.path, **kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(config.model.path, dtype=dtype, **kwargs)
        except Exception as exc:  # a damaged model directory (cut weights, broken JSON) is the user's to fix
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"cannot load model.path={config.model.path!r}: {type(exc).__name__}: {first[:300]}; "
                              f"check the model directory's files") from None
        self.model.to(device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.stop_ids = _stop_ids(self.model, self.tokenizer)
        self.batch_size = config.worker.batch_size

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        iterator = iter(requests)
        while batch := list(itertools.islice(iterator, self.batch_size)):
            yield from self._generate_batch(batch)

    def step_down(self) -> str:
        if self.batch_size <= 1:
            return ""
        before, self.batch_size = self.batch_size, self.batch_size // 2
        if self.device.startswith("cuda"):
            self.torch.cuda.empty_cache()
        return f"batch_size {before} -> {self.batch_size}"

    def close(self) -> None:
        del self.model

    def _generate_batch(self, batch: list[Request]) -> Iterator[Completion]:
        torch = self.torch
        limit = self.config.model.max_model_len
        prompts, accepted = [], []
        for request in batch:
            text = self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True,
                                                      tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) >= limit:
                yield Completion(request.record_id, "", "rejected", len(ids), 0,
                                 f"prompt has {len(ids)} tokens; model.max_model_len is {limit}")
                continue
            prompts.append(ids)
            accepted.append(request)
        if not accepted:
            return
        longest = max(len(ids) for ids in prompts)
        max_new = min(self.config.sampling.max_tokens, limit - longest)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (longest - len(ids)) + ids for ids in prompts], device=self.device)
        mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in prompts], device=self.device)
        sampling = self.config.sampling
        torch.manual_seed(accepted[0].seed)
        clock = time.monotonic()
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new,
                do_sample=sampling.temperature > 0, temperature=sampling.temperature or None,
                top_p=sampling.top_p, top_k=sampling.top_k or None, pad_token_id=pad,
                eos_token_id=sorted(self.stop_ids),
            )
        seconds = time.monotonic() - clock
        for request, ids, row in zip(accepted, prompts, out[:, longest:].tolist()):
            tokens, finish = _until_stop(row, self.stop_ids)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            yield Completion(request.record_id, text, finish, len(ids), len(tokens), seconds=seconds)


def _stop_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise EngineError("the model has no EOS token in its generation_config or tokenizer")
    return ids


def _until_stop(row: list[int], stop_ids: set[int]) -> tuple[list[int], str]:
    for i, token in enumerate(row):
        if token in stop_ids:
            return row[:i], "stop"
    return row, "length"
