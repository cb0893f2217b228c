"""GGUF block encodings of already-quantized weights: the maths, no file handling.

A GGUF row of K weights is K/32 blocks (ggml's `block_q4_0`, `block_q4_1`, `block_q8_0`):
- Q4_0: fp16 d, then 16 bytes of 4-bit codes;       w = d·(q − 8)
- Q4_1: fp16 d, fp16 m, then 16 bytes of codes;     w = d·q + m
- Q8_0: fp16 d, then 32 int8 codes;                 w = d·q
Within a 4-bit block the codes pack as `qs[j] = q[j] | q[j+16] << 4` (j < 16).

A GPTQ group (scale s, zero z, any size that is a multiple of 32) covers whole blocks, each block
taking the group's s and z: symmetric 4-bit GPTQ has z = 8 and is Q4_0 with d = s, bit for bit
(GPTQ scales are fp16 already). Asymmetric is Q4_1 with d = s and m = −s·z rounded to fp16: that
rounding is the only change, and `q4_1_blocks` returns its largest effect on a weight.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 32


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[N, B, 32] codes in 0..15 → [N, B, 16] bytes, `q[j] | q[j+16] << 4`."""
    q = q.to(torch.uint8)
    return q[..., :16] | (q[..., 16:] << 4)


def _fp16_bytes(x: torch.Tensor) -> torch.Tensor:
    """[N, B] values → [N, B, 2] little-endian fp16 bytes."""
    return x.to(torch.float16).contiguous().view(torch.uint8).reshape(*x.shape, 2)


def _per_block(per_group: torch.Tensor, group: int) -> torch.Tensor:
    """[N, G] per-group values → [N, K/32] per-block values (a group spans group/32 blocks)."""
    return per_group.repeat_interleave(group // BLOCK, dim=1)


def q4_0_blocks(q: torch.Tensor, scales: torch.Tensor, group: int) -> np.ndarray:
    """Codes q [N, K] (0..15, zero point 8) and fp16 scales [N, K/group] → Q4_0 bytes [N, K/32·18]."""
    n, k = q.shape
    d = _per_block(scales, group)  # [N, B]
    qs = _pack_nibbles(q.reshape(n, k // BLOCK, BLOCK))
    return torch.cat([_fp16_bytes(d), qs], dim=-1).reshape(n, -1).numpy()


def q4_1_blocks(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int) -> tuple[np.ndarray, float]:
    """Codes q [N, K], scales and zero points [N, K/group] → (Q4_1 bytes [N, K/32·20], max |Δw| from fp16 m)."""
    n, k = q.shape
    d = _per_block(scales, group).to(torch.float16)
    exact_m = -d.float() * _per_block(zeros, group).float()
    m = exact_m.to(torch.float16)
    qs = _pack_nibbles(q.reshape(n, k // BLOCK, BLOCK))
    blocks = torch.cat([_fp16_bytes(d), _fp16_bytes(m), qs], dim=-1).reshape(n, -1).numpy()
    return blocks, (m.float() - exact_m).abs().max().item()


def q8_0_blocks(q: torch.Tensor, scales: torch.Tensor) -> tuple[np.ndarray, float]:
    """int8 codes q [N, K] with one scale per row [N] → (Q8_0 bytes [N, K/32·34], max |Δw| from fp16 d)."""
    n, k = q.shape
    exact = scales.float().reshape(n, 1).expand(n, k // BLOCK)
    d = exact.to(torch.float16)
    qs = q.to(torch.int8).reshape(n, k // BLOCK, BLOCK).view(torch.uint8)
    blocks = torch.cat([_fp16_bytes(d), qs], dim=-1).reshape(n, -1).numpy()
    err = ((d.float() - exact).abs() * 128).max().item()  # |Δd|·|q| at the largest code
    return blocks, err


def dequantize_q4_0(blocks: np.ndarray, k: int) -> torch.Tensor:
    """Q4_0 bytes [N, K/32·18] → float weights [N, K] (for tests and the export's own check)."""
    b = torch.from_numpy(np.ascontiguousarray(blocks)).reshape(blocks.shape[0], k // BLOCK, 18)
    d = b[..., :2].contiguous().view(torch.float16).float()  # [N, B, 1]
    qs = b[..., 2:]
    q = torch.cat([qs & 0x0F, qs >> 4], dim=-1).float()  # [N, B, 32]
    return (d * (q - 8)).reshape(blocks.shape[0], k)
