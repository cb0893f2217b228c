"""Sliding-window perplexity and bits per byte.

The text is one token stream (documents joined by EOS). Windows of `context_len` tokens start
every `stride` tokens; each window scores only the tokens the previous window did not, so every
token after the first is scored exactly once, with up to `context_len - stride` tokens of context
carried over (stride == context_len: disjoint windows, as the GPTQ paper evaluates WikiText-2).
Bits per byte divide the total negative log-likelihood by the UTF-8 bytes of the scored text, so
models with different tokenizers compare.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from compress.data import tokenize_stream
from compress.errors import CompressError


@dataclass
class PerplexityResult:
    perplexity: float
    bits_per_byte: float
    nll_sum: float  # nats
    tokens_scored: int
    bytes_scored: int
    context_len: int
    stride: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], context_len: int = 1024, stride: int | None = None,
               max_tokens: int | None = None, progress: bool = False) -> PerplexityResult:
    stride = stride or context_len
    if not 0 < stride <= context_len:
        raise CompressError(f"stride must be in 1..context_len ({context_len}), got {stride}")
    ids = tokenize_stream(tokenizer, texts, max_tokens=max_tokens)
    if len(ids) < 2:
        raise CompressError("perplexity text is too short (fewer than 2 tokens)")
    device = next(model.parameters()).device
    nll_sum, scored, prev_end = 0.0, 0, 0
    starts = list(range(0, len(ids) - 1, stride))
    for begin in tqdm(starts, desc="perplexity", disable=not progress, leave=False):
        end = min(begin + context_len, len(ids))
        window = ids[begin:end].to(device)[None]  # [1, S]
        logits = model(window).logits[0, :-1].float()  # [S-1, V]
        targets = window[0, 1:]
        n_new = end - max(prev_end, begin + 1)  # tokens not yet scored (the window's first is never scored)
        losses = F.cross_entropy(logits[-n_new:], targets[-n_new:], reduction="sum")
        nll_sum += losses.item()
        scored += n_new
        prev_end = end
        if end == len(ids):
            break
    text_bytes = len(tokenizer.decode(ids[1:prev_end], skip_special_tokens=True).encode("utf-8"))
    return PerplexityResult(
        perplexity=math.exp(nll_sum / scored),
        bits_per_byte=nll_sum / math.log(2) / max(1, text_bytes),
        nll_sum=nll_sum,
        tokens_scored=scored,
        bytes_scored=text_bytes,
        context_len=context_len,
        stride=stride,
    )
