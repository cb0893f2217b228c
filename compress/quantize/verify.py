"""Check that a saved quantized checkpoint reloads to the model that was meant.

`quantize` calls `roundtrip_error` before it publishes an artifact: it compares the logits of the
checkpoint loaded the way users load it (plain `from_pretrained`) with a reference on a fixed probe:
- int8 / int8-wo: the in-memory quantized model, before saving;
- gptq / rtn: an fp32 model whose Linear weights are dequantized here, in plain torch, from the
  packed GPTQ v1 tensors, any of 2/3/4/8 bits (W = scales[g] · (q − (zeros[g] + 1))). This is independent of the kernel
  that runs them, so a format mix-up (v1 weights labelled v2) shows up as a large difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compress.errors import CompressError

PROBE = "The quick brown fox jumps over the lazy dog. def main():\n    return 42\n"


def probe_ids(tokenizer) -> torch.Tensor:
    return tokenizer(PROBE, return_tensors="pt").input_ids  # [1, S]


def unpack_gptq_v1(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                   bits: int) -> torch.Tensor:
    """Dequantize one GPTQ v1 layer to a float [out_features, in_features] weight."""
    q = _unpack_bitstream(qweight.t(), bits, g_idx.numel()).t()  # [K, N]
    z = _unpack_bitstream(qzeros, bits, scales.shape[1]) + 1  # [G, N]; v1 stores zero - 1
    g = g_idx.long()
    w = scales.float()[g] * (q.float() - z.float()[g])  # [K, N]
    return w.t().contiguous()


def _unpack_bitstream(words: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """[R, W] int32 words, each row a little-endian bit stream of `n` `bits`-wide values → [R, n].
    GPTQ packs 2/4/8 bits within words and 3 bits across word boundaries: both are this stream."""
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
    state = {}
    for name in [k for k in tensors if k.endswith(".qweight")]:
        prefix = name[: -len(".qweight")]
        state[prefix + ".weight"] = unpack_gptq_v1(tensors[prefix + ".qweight"], tensors[prefix + ".qzeros"],
                                                   tensors[prefix + ".scales"], tensors[prefix + ".g_idx"], bits)
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
    return model.eval()


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(ids.to(device)).logits.float().cpu()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| relative to the logit scale (max |b|)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()
