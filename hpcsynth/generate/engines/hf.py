"""The transformers engine: CPU or one GPU, for tests and small users.

Requests are generated in left-padded batches of worker.batch_size by our own decoding loop rather than
`model.generate`, so that each record is a function of (config, record id) alone, whatever batch it
lands in, however many workers run, and after any restart:
- every request samples from its own torch.Generator seeded with its record seed (generate() draws all
  rows from one global generator, so a record depended on its neighbours);
- every request has its own budget, min(sampling.max_tokens, model.max_model_len - its prompt), and
  leaves the batch when it stops, so one long prompt no longer shortens its neighbours' answers.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator

from hpcsynth.config import Config
from hpcsynth.generate.engines.protocol import Completion, Request
from hpcsynth.errors import EngineError
from hpcsynth.optional import require


class TransformersEngine:
    def __init__(self, config: Config) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hpcsynth never downloads a model
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        require("torch", "transformers", extra="cpu", for_what="model.engine=transformers")
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
        self.model.to(device).eval()  # type: ignore[arg-type]  # transformers' .to() wrapper, as in tinymodel.py
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.stop_ids = _stop_ids(self.model, self.tokenizer)
        # transformers 5.x renames past_key_values to cache; take whichever this version's forward has.
        import inspect

        self.cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
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
        clock = time.monotonic()
        rows = self._decode(prompts, [request.seed for request in accepted])
        seconds = time.monotonic() - clock
        for request, ids, row in zip(accepted, prompts, rows):
            tokens, finish = _until_stop(row, self.stop_ids)
            text = str(self.tokenizer.decode(tokens, skip_special_tokens=True))  # one sequence: one str
            yield Completion(request.record_id, text, finish, len(ids), len(tokens), seconds=seconds)

    def _decode(self, prompts: list[list[int]], seeds: list[int]) -> list[list[int]]:
        """New tokens per prompt: each row sampled with its own generator, within its own budget."""
        torch = self.torch
        limit, sampling = self.config.model.max_model_len, self.config.sampling
        budgets = [min(sampling.max_tokens, limit - len(ids)) for ids in prompts]
        generators = [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]
        longest = max(len(ids) for ids in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (longest - len(ids)) + ids for ids in prompts], device=self.device)
        mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in prompts], device=self.device)
        outputs: list[list[int]] = [[] for _ in prompts]
        active = list(range(len(prompts)))  # rows still generating, in batch order
        cache = None
        step_ids = input_ids
        with torch.no_grad():
            while active:
                # Positions count real tokens only, so padding never shifts a row's positions.
                positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
                out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                 use_cache=True, **{self.cache_arg: cache})
                cache = getattr(out, self.cache_arg)
                logits = out.logits[:, -1, :].float()
                keep, chosen = [], []
                for slot, row in enumerate(active):
                    token = _sample(torch, logits[slot], sampling, generators[row])
                    outputs[row].append(token)
                    chosen.append(token)
                    if token not in self.stop_ids and len(outputs[row]) < budgets[row]:
                        keep.append(slot)
                if len(keep) < len(active):
                    if not keep:
                        break
                    index = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(index)
                    mask = mask.index_select(0, index)
                    active = [active[slot] for slot in keep]
                    chosen = [chosen[slot] for slot in keep]
                step_ids = torch.tensor(chosen, device=self.device).unsqueeze(1)
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        return outputs


def _sample(torch, logits, sampling, generator) -> int:
    """One token from one row's logits: temperature, top-k, top-p, drawn with the row's own generator."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    logits = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        cut = ordered.cumsum(-1) - ordered > sampling.top_p  # keep the smallest set reaching top_p
        probs = probs.scatter(0, order, ordered.masked_fill(cut, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))


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
