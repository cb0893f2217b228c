"""Sliding-window perplexity and bits per byte.

The text is one token stream (documents joined by EOS). Windows of `context_len` tokens start
every `stride` tokens; each window scores only the tokens the previous window did not, so every
token after the first is scored exactly once, with up to `context_len - stride` tokens of context
carried over (stride == context_len: disjoint windows, as the GPTQ paper evaluates WikiText-2).
Bits per byte divide the total negative log-likelihood by the UTF-8 bytes of the scored text, so
models with different tokenizers compare. `kl_to_source`: the mean KL(source ‖ model) of next-token
distributions per token on disjoint windows (how far a compressed model's predictions moved).
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


def windows(n_tokens: int, context_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, n_new) per window over a stream of `n_tokens`: score the last n_new tokens of ids[begin:end]."""
    out, prev_end = [], 0
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + context_len, n_tokens)
        out.append((begin, end, end - max(prev_end, begin + 1)))  # the window's first token is never scored
        prev_end = end
        if end == n_tokens:
            break
    return out


def score_stream(ids: torch.Tensor, tokenizer, context_len: int, stride: int, window_nll, progress: bool = False
                 ) -> PerplexityResult:
    """Perplexity of a token stream, `window_nll(window ids [S], n_new)` giving the summed NLL (nats) of
    the window's last n_new tokens: a local model or a remote endpoint."""
    if not 0 < stride <= context_len:
        raise CompressError(f"stride must be in 1..context_len ({context_len}), got {stride}")
    if len(ids) < 2:
        raise CompressError("perplexity text is too short (fewer than 2 tokens)")
    nll_sum, scored, end = 0.0, 0, 0
    for begin, end, n_new in tqdm(windows(len(ids), context_len, stride), desc="perplexity", disable=not progress,
                                  leave=False):
        nll_sum += window_nll(ids[begin:end], n_new)
        scored += n_new
    text_bytes = len(tokenizer.decode(ids[1:end], skip_special_tokens=True).encode("utf-8"))
    return PerplexityResult(
        perplexity=math.exp(nll_sum / scored),
        bits_per_byte=nll_sum / math.log(2) / max(1, text_bytes),
        nll_sum=nll_sum,
        tokens_scored=scored,
        bytes_scored=text_bytes,
        context_len=context_len,
        stride=stride,
    )


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], context_len: int = 1024, stride: int | None = None,
               max_tokens: int | None = None, progress: bool = False) -> PerplexityResult:
    stride = stride or context_len
    ids = tokenize_stream(tokenizer, texts, max_tokens=max_tokens)
    device = next(model.parameters()).device

    def window_nll(window: torch.Tensor, n_new: int) -> float:
        window = window.to(device)[None]  # [1, S]
        logits = model(window).logits[0, :-1].float()  # [S-1, V]
        targets = window[0, 1:]
        return F.cross_entropy(logits[-n_new:], targets[-n_new:], reduction="sum").item()

    return score_stream(ids, tokenizer, context_len, stride, window_nll, progress)


@torch.no_grad()
def kl_to_source(source, model, ids: torch.Tensor, context: int) -> float:
    """Mean over tokens of KL(p_source ‖ p_model), disjoint windows of `context` tokens. `model`: a causal LM, or a
    callable from one window's ids [S] to its logits [S, vocab] (another runtime's, e.g. llama.cpp's)."""
    if isinstance(model, torch.nn.Module):
        device = next(model.parameters()).device
        logits_of = lambda w: model(w[None].to(device)).logits[0]  # noqa: E731
    else:
        logits_of = model
    total, n = 0.0, 0
    for begin in range(0, len(ids) - 1, context):
        window = ids[begin:begin + context]
        p = F.log_softmax(source(window[None].to(source.device)).logits[0].float(), -1)
        q = F.log_softmax(logits_of(window).float().to(p.device), -1)
        total += F.kl_div(q, p, log_target=True, reduction="sum").item()
        n += len(window)
    return total / max(n, 1)
