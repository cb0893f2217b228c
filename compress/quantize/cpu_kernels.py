"""Fast CPU modules for int4/int8 artifacts: PyTorch's weight-pack kernels with bf16 activations.

`torch.ops.aten._weight_int4pack_mm_for_cpu` and `_weight_int8pack_mm` have vectorised AVX2/AVX-512
kernels for bf16 activations only (fp32 falls back to a scalar loop: 1,530 µs against 50 µs for one
1536×576 matmul at one token, measured here). gptqmodel's CPU kernel calls the int4 one but casts
activations to bf16 and back around every layer of an fp32 model; torchao's int8 tensor subclass
pays Python dispatch on every call. Here the whole model runs in bf16 and each quantized Linear is
one aten call:

- `Int4Linear`: GPTQ v1 4-bit codes (no act-order, group 32/64/128/256 dividing K), dequantized by the
  kernel as (q − 8)·s + offset with offset = (8 − z)·s, i.e. s·(q − z), the GPTQ weight.
- `Int8Linear`: int8 codes with one scale per output channel (torchao int8 weight-only, zero point 0).

`load_cpu_fast(DIR)` builds the model from the checkpoint's own tensors (no gptqmodel/torchao on the
load path); `fast_cpu_reason(config)` says why a checkpoint cannot take this path (None when it can).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

INT4_GROUPS = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts


class Int4Linear(nn.Module):
    def __init__(self, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group: int) -> None:
        """q [N, K] codes 0..15; scales, zeros [K/group, N] (zeros are the real zero points)."""
        super().__init__()
        self.in_features, self.out_features, self.group = q.shape[1], q.shape[0], group
        self.register_buffer("weight_packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.int(), 1))
        s = scales.to(torch.bfloat16)
        offset = (8 - zeros.to(torch.bfloat16)) * s
        self.register_buffer("scales_and_zeros", torch.stack([s, offset], dim=-1).contiguous())  # [G, N, 2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1] + (self.out_features,)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight_packed, self.group,
                                                          self.scales_and_zeros).reshape(shape)


class Int8Linear(nn.Module):
    def __init__(self, q: torch.Tensor, scales: torch.Tensor) -> None:
        """q [N, K] int8; scales [N] (w = q·scale)."""
        super().__init__()
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.register_buffer("weight_int8", q.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.reshape(-1).to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1] + (self.out_features,)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        return torch.ops.aten._weight_int8pack_mm(x2, self.weight_int8, self.scales).reshape(shape)


def fast_cpu_reason(config: dict) -> str | None:
    """None when `load_cpu_fast` can run this checkpoint; else why not, in a few words."""
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return "this PyTorch has no CPU int4 weight-pack kernel"
    qc = config.get("quantization_config") or {}
    method = qc.get("quant_method")
    if method == "torchao":
        return None
    if method != "gptq":
        return f"no packed CPU kernel for {method or 'dense'} checkpoints"
    if qc.get("bits") != 4:
        return f"{qc.get('bits')}-bit GPTQ"
    if qc.get("desc_act"):
        return "act-order GPTQ"
    if (qc.get("checkpoint_format") or qc.get("format") or "gptq") != "gptq":
        return "not GPTQ v1"
    if qc.get("group_size") not in INT4_GROUPS:
        return f"group size {qc.get('group_size')} (the kernel takes {INT4_GROUPS})"
    widths = {config.get("hidden_size"), config.get("intermediate_size")}
    if any(w is None or w % qc["group_size"] for w in widths):
        return f"group size {qc['group_size']} does not divide every layer width"
    return None


def _read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


def _quantized_modules(tensors: dict[str, torch.Tensor], group: int | None) -> dict[str, nn.Module]:
    from compress.quantize.verify import _unpack

    modules: dict[str, nn.Module] = {}
    for name in tensors:
        if name.endswith(".qweight"):
            p = name[: -len(".qweight")]
            q = _unpack(tensors[name], 4, 0).t().contiguous()  # [N, K]
            z = _unpack(tensors[p + ".qzeros"], 4, 1) + 1  # [G, N]; v1 stores zero − 1
            modules[p] = Int4Linear(q, tensors[p + ".scales"], z, group)
        elif name.endswith("._weight_qdata"):
            p = name[: -len("._weight_qdata")]
            if torch.any(tensors[p + "._weight_zero_point"] != 0):
                raise ValueError(f"{p}: int8 with non-zero zero points")
            modules[p] = Int8Linear(tensors[name], tensors[p + "._weight_scale"])
    return modules


def load_cpu_fast(model_dir: str | Path):
    """A bf16 transformers model for this int4/int8 checkpoint, its quantized Linears as packed-kernel modules."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    raw = json.loads((model_dir / "config.json").read_text())
    group = (raw.get("quantization_config") or {}).get("group_size")
    config = AutoConfig.from_pretrained(model_dir)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tensors = _read_tensors(model_dir)
    quantized = _quantized_modules(tensors, group)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    for name, module in quantized.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)
    skip = (".qweight", ".qzeros", ".scales", ".g_idx", "._weight_qdata", "._weight_scale", "._weight_zero_point")
    state = {k: t.to(torch.bfloat16) for k, t in tensors.items() if not k.endswith(skip)}
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    leftover = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if leftover:
        # rotary inv_freq and similar non-persistent buffers: rebuild them on the CPU from the config
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config, device="cpu")
        leftover = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if leftover:
        raise ValueError(f"checkpoint leaves {leftover[:3]} unset")
    model.generation_config = _generation_config(model_dir)
    return model.eval()


def _generation_config(model_dir: Path):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir)
    except OSError:
        return GenerationConfig()
