"""The integer grids our GPTQ and RTN runs put on gptqmodel's quantizer (`Quantizer.find_params` wrappers).

- **Symmetric: the signed-peak grid.** gptqmodel's symmetric grid has the step 2·max|w|/(2^b − 1) around the zero
  point 2^(b−1), so the levels run from −2^(b−1) to 2^(b−1) − 1 steps and a group's largest positive weight is
  clipped by one half step. We use llama.cpp's Q4_0 rule instead: the step is the group's largest-magnitude weight,
  sign kept, divided by −2^(b−1), so that weight is exactly the −2^(b−1) level (a negative step flips the grid) and
  the step is max|w|/8 rather than max|w|/7.5 at 4 bits. Round to nearest on it leaves 23% less squared weight error
  over SmolLM2's Linears (benchmarks/cpu_q4_grid.py). The stored format is unchanged (zero point 2^(b−1), fp16
  scale, now of either sign), so every GPTQ loader, kernel and the Q4_0 export read it as before. With `mse`, both
  families (signed-peak and gptqmodel's) are searched at every shrink factor and the lower error wins.
- **Asymmetric: zero points ≥ 1.** GPTQ v1 stores zero − 1 in packed words, so a zero point of 0 is written as −1,
  and loaders that convert v1 to v2 by adding 1 to each packed word carry that overflow into the neighbouring zero
  point (a 2-bit asym + `mse` artifact reloaded 6.6% off; `mse`'s adjacent-zero search makes 0 frequent). Clamping
  the zero to ≥ 1 while GPTQ runs keeps the grid representable; codes and error feedback follow the clamped grid.

The wrappers act only while `signed_sym()` is active (our own quantize calls), so gptqmodel used directly in the
same process (the peers' rows of benchmarks/quality_table.py) keeps its own grid.
"""

from __future__ import annotations

import contextlib
import threading

import torch

SYM_GRID = "signed-peak"  # recorded in compress.json
_active = threading.Event()


@contextlib.contextmanager
def signed_sym():
    """Use the signed-peak symmetric grid in gptqmodel's quantizer inside this block."""
    _active.set()
    try:
        yield
    finally:
        _active.clear()


def install(quantizer_cls) -> None:
    """Wrap `quantizer_cls.find_params` once (idempotent)."""
    if getattr(quantizer_cls.find_params, "_compress_grid", False):
        return
    quantizer_cls.find_params = _wrap(quantizer_cls.find_params)


def _wrap(find_params):
    def wrapped(self, x, weight=False):
        out = find_params(self, x, weight)
        if self.maxq <= 0 or self.requires_groupwise_processing():
            return out
        if not self.qcfg.sym:
            self.zero.clamp_(min=1)
        elif _active.is_set() and weight and self.perchannel:
            _signed_peak(self, x.flatten(1))
        return out

    wrapped._compress_grid = True
    return wrapped


def _errors(x: torch.Tensor, scales: torch.Tensor, zero: float, maxq: int, norm: float) -> torch.Tensor:
    """Rows `x` [N, g] rounded on the grids of `scales` [P, N] (zero point `zero`) → Σ|error|^norm [P, N]."""
    s = scales[..., None]
    q = torch.clamp(torch.round(x / s) + zero, 0, maxq)
    return (s * (q - zero) - x).abs_().pow_(norm).sum(-1)


def signed_peak_step(x: torch.Tensor, zero: float) -> torch.Tensor:
    """The signed-peak step of each row of `x` [..., g] (keepdim): the row's largest-magnitude weight, sign kept,
    over −zero (zero = 2^(b−1)), so that weight is exactly the lowest level; an all-zero row gets step −1/zero."""
    peak = x.gather(-1, x.abs().argmax(-1, keepdim=True))
    return torch.where(peak == 0, torch.ones_like(peak), peak) / -zero


def _signed_peak(self, x: torch.Tensor) -> None:
    """Replace the symmetric scale of rows `x` [N, g] by the signed-peak one (or, with `mse`, by the better of the
    two families at each shrink factor). The zero point stays 2^(b−1)."""
    maxq = int(self.maxq.item())
    zero = (maxq + 1) / 2
    signed = signed_peak_step(x, zero).squeeze(1)
    norm = float(getattr(self.qcfg, "mse", 0.0) or 0.0)
    if norm <= 0:
        self.scale = signed.reshape(self.scale.shape).to(self.scale.dtype)
        return
    classic = self.scale.reshape(-1).clone()  # gptqmodel's own mse winner
    best_scale, best = classic, _errors(x, classic[None], zero, maxq, norm)[0]
    shrink = 1 - torch.arange(int(self.maxshrink * self.grid), device=x.device, dtype=x.dtype) / self.grid
    for chunk in shrink.split(16):  # [16, N, g] at a time
        cands = chunk[:, None] * signed[None]
        err, i = _errors(x, cands, zero, maxq, norm).min(0)
        better = err < best
        best = torch.where(better, err, best)
        best_scale = torch.where(better, cands.gather(0, i[None]).squeeze(0), best_scale)
    self.scale = best_scale.reshape(self.scale.shape).to(self.scale.dtype)
