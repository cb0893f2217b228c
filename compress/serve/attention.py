"""Attention over the slot KV cache, plugged into Hugging Face model code through `AttentionInterface`.

The model's own forward computes q, k, v and the rotary embedding as usual (so every Llama-family checkpoint
keeps working); the attention call is ours: it writes the new k, v into the sequence's slot and attends over
that slot's cache. The runner sets a `StepContext` (thread-local: one engine thread per tier, several tiers
in one process) before each forward (the nano-vllm pattern); the model is
called with `use_cache=False`, and since "compress_slots" has no mask function, transformers builds no mask.
With no context set (an ordinary forward of the same model object: `generate`, an eval) it is plain SDPA, so
switching a model to this implementation never changes what it computes elsewhere.

- decode: rows [0, b) of the cache, one new token each, written at `positions[i]`; keys are read up to the
  step's length bucket `kv_len` (not the whole `max_len`), with a mask `key <= position` per row.
- prefill: k rows (one chunk of each prompt, right-padded to the same width), slot `slots[i]`, starting at
  `starts[i]`; keys of those slots are gathered up to the longest end, with a causal mask per row.

Grouped-query attention without copying the cache: the G query heads that share one KV head are folded into
the query-length dimension (`[b, kv_heads, G * q_len, d]`), so SDPA sees as many heads as the cache has.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NAME = "compress_slots"


@dataclass
class StepContext:
    keys: list[torch.Tensor]  # per layer [slots, kv_heads, max_len + 1, head_dim]
    values: list[torch.Tensor]
    decode: bool
    # decode: write position per row [b] (the trash column for free rows), the mask [b, 1, 1, kv_len]
    positions: torch.Tensor | None = None
    rows: torch.Tensor | None = None  # arange(b)
    kv_len: int = 0
    mask: torch.Tensor | None = None
    # prefill: per row slot [k], write index grid [k, w] (trash column past each row's real tokens),
    # gathered key length, mask [k, 1, w, kv_len]
    slots: torch.Tensor | None = None
    write_pos: torch.Tensor | None = None


_LOCAL = threading.local()  # per thread: each tier's engine thread runs its own model with its own context


def set_context(ctx: StepContext | None) -> None:
    _LOCAL.ctx = ctx


def _fold(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[b, H, s, d] -> [b, kv_heads, G * s, d], the G query heads of one KV head side by side."""
    b, h, s, d = q.shape
    return q.reshape(b, kv_heads, (h // kv_heads) * s, d)


def _unfold(o: torch.Tensor, heads: int, s: int) -> torch.Tensor:
    """[b, kv_heads, G * s, d] -> [b, s, H, d] (the layout HF's attention functions return)."""
    b, _, _, d = o.shape
    return o.reshape(b, heads, s, d).transpose(1, 2)


def slot_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    ctx = getattr(_LOCAL, "ctx", None)
    if ctx is None:  # an ordinary forward of the same model (generate, eval): plain SDPA, the model's own cache
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    kc, vc = ctx.keys[module.layer_idx], ctx.values[module.layer_idx]
    b, heads, s, _ = query.shape
    kv_heads = key.shape[1]
    if ctx.decode:
        kc[ctx.rows, :, ctx.positions] = key[:, :, 0]
        vc[ctx.rows, :, ctx.positions] = value[:, :, 0]
        k, v = kc[:b, :, :ctx.kv_len], vc[:b, :, :ctx.kv_len]
        mask = ctx.mask
    else:
        grid = ctx.slots[:, None].expand_as(ctx.write_pos)
        kc[grid, :, ctx.write_pos] = key.transpose(1, 2)
        vc[grid, :, ctx.write_pos] = value.transpose(1, 2)
        k, v = kc[ctx.slots, :, :ctx.kv_len], vc[ctx.slots, :, :ctx.kv_len]
        mask = ctx.mask.repeat(1, 1, heads // kv_heads, 1) if heads != kv_heads else ctx.mask
    # q [b, H, s, d] with H = kv_heads * G; after the fold the query rows of a KV head are (g, t), g-major,
    # which is why a prefill mask [k, 1, s, L] is tiled G times along its query dimension.
    q = _fold(query.contiguous(), kv_heads)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
    return _unfold(out, heads, s), None


def register() -> None:
    """Make "compress_slots" an attention implementation transformers knows (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, slot_attention)
