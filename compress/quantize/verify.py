"""Check that a saved quantized checkpoint reloads to the model that was meant.

`quantize` calls `check_roundtrip` before it publishes an artifact: it compares the logits of the
checkpoint loaded the way users load it (plain `from_pretrained`) with references on a fixed probe:
- int8 / int8-wo: the in-memory quantized model, before saving;
- gptq / rtn: a model whose Linear weights are dequantized here, in plain torch, from the packed
  GPTQ v1 tensors, any of 2/3/4/8 bits (W = scales[g] · (q − (zeros[g] + 1))), run two ways: in fp32, and with each
  quantized Linear computing the way gptqmodel's fast CPU kernel does (bf16 activations, bf16
  weights, bf16 output). Both are independent of the checkpoint's format label, so a format
  mix-up (v1 weights labelled v2: every weight off by a whole quantization step) differs from both.

The bf16 emulation reproduces one layer of the kernel bit for bit, but not a whole model: the
kernel's accumulation order depends on the number of rows, a bf16 output then differs by one unit in
the last place now and then, and 30 layers amplify that chaotically (SmolLM2 int4 g64: 1.4% of the
logit scale from the bf16 reference, 1.9% from the fp32 one; GPTQ g64 was refused at 3.5%). So the
tolerance is derived from bf16 rounding on this very model and probe: twice the largest distance between
the fp32 reference and a half-precision one (what bf16 arithmetic alone does to these logits), never below
ROUNDTRIP_TOLERANCE, never above MAX_TOLERANCE. The v1/v2 trap moves the same logits by >100%.
On a GPU the reloaded model runs wholly in bf16 (gptqmodel's Marlin/Triton kernels, bf16 attention and norms):
there the bf16-kernel emulation understates the noise (an H200 refused correct SmolLM2-shape artifacts at
2.3-8.3%), so the dequantized model itself also runs in the reload dtype on the reload device.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from compress.errors import CompressError

# Reloaded logits may differ from the matching reference by kernel arithmetic only (accumulation order,
# fp16 scales); a v1/v2 zero-point mix-up is far above this (tests check both sides).
ROUNDTRIP_TOLERANCE = 0.02
BF16_NOISE_FACTOR = 2.0  # tolerance = this × |bf16 reference − fp32 reference| when larger
MAX_TOLERANCE = 0.25  # past this a logit check proves little: refuse rather than loosen further
PROBE = "The quick brown fox jumps over the lazy dog. def main():\n    return 42\n"


def probe_ids(tokenizer) -> torch.Tensor:
    return tokenizer(PROBE, return_tensors="pt").input_ids  # [1, S]


def _unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Split each int32 of `packed` into 32/bits codes along `dim` (low bits first): qweight [K*bits/32, N] -> [K, N]
    with dim 0, qzeros [G, N*bits/32] -> [G, N] with dim 1."""
    if dim == 0:
        return _unpack_bitstream(packed.t(), bits, packed.shape[0] * 32 // bits).t()
    return _unpack_bitstream(packed, bits, packed.shape[1] * 32 // bits)


def unpack_gptq_v1(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                   bits: int, kernel_bf16: bool = False) -> torch.Tensor:
    """Dequantize one GPTQ v1 layer to a float [out_features, in_features] weight.

    kernel_bf16: the weight PyTorch's `_weight_int4pack_mm_for_cpu` sees when gptqmodel's TorchAtenLinear
    runs the layer: scale s and zero offset (2^(bits-1) − z)·s both rounded to bf16, w = s·(q − 2^(bits-1)) + offset."""
    q = _unpack_bitstream(qweight.t(), bits, g_idx.numel()).t()  # [K, N]
    z = _unpack_bitstream(qzeros, bits, scales.shape[1]) + 1  # [G, N]; v1 stores zero - 1
    g = g_idx.long()
    if kernel_bf16:
        centre = 1 << (bits - 1)
        s16 = scales.to(torch.bfloat16)
        offset = (centre - z.to(torch.bfloat16)) * s16  # bf16 arithmetic, as gptqmodel computes it
        w = s16.float()[g] * (q.float() - centre) + offset.float()[g]
    else:
        w = scales.float()[g] * (q.float() - z.float()[g])  # [K, N]
    return w.t().contiguous()


def _unpack_bitstream(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """[R, W] int32 words, each row a little-endian bit stream of `n` `bits`-wide values → [R, n].
    GPTQ packs 2/4/8 bits within words and 3 bits across word boundaries: both are this stream."""
    if 32 % bits == 0:  # whole codes per word: shift and mask, no per-bit expansion
        shifts = torch.arange(0, 32, bits, dtype=torch.int32)
        codes = (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [R, W, 32/bits]
        return codes.reshape(words.shape[0], -1)[:, :n]
    shifts = torch.arange(32, dtype=torch.int32)
    stream = ((words.unsqueeze(-1) >> shifts) & 1).reshape(words.shape[0], -1)[:, : n * bits]  # [R, n*bits]
    weights = (1 << torch.arange(bits, dtype=torch.int32))
    return (stream.reshape(words.shape[0], n, bits) * weights).sum(-1)


def dequantized_reference(model_dir: str | Path):
    """An fp32 transformers model built from a GPTQ checkpoint, its quantized Linears dequantized here."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    raw = json.loads((model_dir / "config.json").read_text())
    bits = raw["quantization_config"]["bits"]
    config = AutoConfig.from_pretrained(model_dir)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    state, kernel_weights = {}, {}
    for name in [k for k in tensors if k.endswith(".qweight")]:
        prefix = name[: -len(".qweight")]
        packed = [tensors[prefix + s] for s in (".qweight", ".qzeros", ".scales", ".g_idx")]
        state[prefix + ".weight"] = unpack_gptq_v1(*packed, bits)
        kernel_weights[prefix] = unpack_gptq_v1(*packed, bits, kernel_bf16=True)
        if prefix + ".bias" in tensors:
            state[prefix + ".bias"] = tensors[prefix + ".bias"].float()
    for k, t in tensors.items():
        if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx")) and k not in state:
            state[k] = t.float()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight") or not config.tie_word_embeddings]
    if missing or unexpected:
        raise CompressError(f"checkpoint does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    for name, module in model.named_modules():
        if name in kernel_weights:  # what a packed bf16 kernel computes with, for `bf16_kernel`
            module._compress_kernel_weight = kernel_weights[name]
    return model.eval()


@contextmanager
def bf16_kernel(model):
    """Within this block, every dequantized Linear computes like the packed CPU kernel (gptqmodel's
    TorchAtenLinear over `_weight_int4pack_mm_for_cpu`): bf16 input, the kernel's bf16-derived weight,
    fp32 accumulation, bf16 output, cast back; the bias is added after, in the model's dtype."""
    patched = []
    for module in model.modules():
        weight = getattr(module, "_compress_kernel_weight", None)
        if weight is not None:
            def forward(x, weight=weight, bias=module.bias):
                out = torch.nn.functional.linear(x.to(torch.bfloat16).float(), weight).to(torch.bfloat16).to(x.dtype)
                return out if bias is None else out + bias

            module.forward = forward
            patched.append(module)
    try:
        yield model
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


def gptq_references(model_dir: str | Path, ids: torch.Tensor, device: str = "cpu",
                    dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Probe logits of the dequantized checkpoint, in fp32 and as a bf16 kernel computes them; when the
    reloaded model will run in a half dtype (`dtype`, on `device`: bf16 on a GPU), also the whole dequantized
    model in that dtype there, since then every op (attention, norms, the LM head) rounds, not the kernel alone."""
    model = dequantized_reference(model_dir)
    refs = {"fp32": logits(model, ids)}
    with bf16_kernel(model):
        refs["bf16-kernel"] = logits(model, ids)
    if dtype != torch.float32:
        refs[f"{str(dtype).removeprefix('torch.')}-model"] = logits(model.to(device, dtype), ids)
    return refs


def check_roundtrip(reloaded: torch.Tensor, references: dict[str, torch.Tensor], method: str) -> dict:
    """Metrics of the reload check; a CompressError when the reloaded logits match no reference."""
    errors = {name: relative_error(reloaded, ref) for name, ref in references.items()}
    best = min(errors, key=errors.get)
    noise = None  # what half-precision arithmetic alone does to these logits: the largest gap of a half reference
    halves = [ref for name, ref in references.items() if name != "fp32" and name != "in-memory"]
    if "fp32" in references and halves:
        noise = max(relative_error(ref, references["fp32"]) for ref in halves)
    tolerance = min(MAX_TOLERANCE, max(ROUNDTRIP_TOLERANCE, BF16_NOISE_FACTOR * (noise or 0.0)))
    if errors[best] > tolerance:
        shown = ", ".join(f"{e:.2%} against the {n} reference" for n, e in errors.items())
        raise CompressError(f"the saved {method} checkpoint does not reload to the quantized model "
                            f"(max logit difference {shown}; tolerance {tolerance:.1%}); nothing was written")
    return {"roundtrip_max_rel_logit_error": errors[best], "roundtrip_reference": best,
            "roundtrip_errors": {n: round(e, 6) for n, e in errors.items()},
            "roundtrip_bf16_noise": noise, "roundtrip_tolerance": tolerance}


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(ids.to(device)).logits.float().cpu()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| relative to the logit scale (max |b|)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
