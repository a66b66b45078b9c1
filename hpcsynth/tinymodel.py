"""A tiny random-weight Llama and a BPE tokenizer trained on the spot, offline, in seconds.

Used by `hpcsynth demo` and the tests in place of a downloaded model: the same files a real model has
(config.json, model.safetensors, tokenizer.json, a ChatML chat template), so every engine loads it the
way it loads SmolLM2. Its text is gibberish; its shapes and formats are real.
"""

from __future__ import annotations

import os
from pathlib import Path

from hpcsynth.optional import require

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def training_text() -> list[str]:
    """Text that ships with Python: the help topics of the pydoc documentation."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def build_tokenizer(out_dir: Path, vocab_size: int = 4096):
    require("tokenizers", "transformers", extra="cpu", for_what="the demo's tiny model")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                      pad_token="<|endoftext|>", bos_token="<|im_start|>")
    wrapped.chat_template = CHATML
    wrapped.save_pretrained(out_dir)
    return wrapped


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny Llama (head_dim 64, as vLLM requires) and its tokenizer into out_dir."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    require("torch", "transformers", extra="cpu", for_what="the demo's tiny model")
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").is_file() and (out_dir / "tokenizer.json").is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=4096,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    # transformers types .to() through a decorator mypy reads as taking the model itself.
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]
    # top_k=0 so that transformers and vLLM sample from the same distribution.
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=True,
                                               top_k=0)
    model.save_pretrained(out_dir)
    return out_dir
