"""The artifact an export reads (its tensors and configuration, a GPTQ layer's codes, zero points and scales) and
what an export returns (`ExportResult`).

One home for what `gguf.py` and `compressed.py` both read; neither re-quantizes anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from compress.errors import CompressError


@dataclass
class ExportResult:
    output: str
    format: str
    file_type: str  # GGUF: the file type most layers use; compressed-tensors: the scheme, e.g. "W4A16 g64 sym"
    size_bytes: int
    tensor_types: dict[str, int]  # GGUF type (compressed-tensors: "pack-quantized" or "dense") → tensor count
    max_abs_weight_change: float  # 0.0 when every tensor is exact
    notes: list[str] = field(default_factory=list)
    tokenizer: str = ""  # where the tokenizer came from
    bits_per_weight: dict | None = None  # compressed-tensors: decoder Linear bits per weight, from the files

    def to_dict(self) -> dict:
        return asdict(self)


class Artifact:
    """A checkpoint directory's config.json and safetensors tensors (all shards)."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors import safe_open

        if not (model_dir / "config.json").is_file():
            raise CompressError(f"{model_dir} is not a model directory (no config.json in it)")
        self.dir = model_dir
        self.config = json.loads((model_dir / "config.json").read_text())
        self.tensors: dict[str, torch.Tensor] = {}
        shards = sorted(model_dir.glob("*.safetensors"))
        if not shards:
            raise CompressError(f"{model_dir} has no .safetensors weights")
        for shard in shards:
            with safe_open(str(shard), "pt") as f:
                self.tensors.update({k: f.get_tensor(k) for k in f.keys()})
        self.qc = self.config.get("quantization_config") or {}
        self.method = self.qc.get("quant_method")

    def heads_for(self, hf_name: str) -> int | None:
        if ".self_attn.q_proj." in hf_name:
            return self.config["num_attention_heads"]
        if ".self_attn.k_proj." in hf_name:
            return self.config.get("num_key_value_heads") or self.config["num_attention_heads"]
        return None


def check_gptq_layout(src: Artifact) -> tuple[int, int, bool]:
    """(bits, group size, sym) of a GPTQ v1 artifact without act-order; raises for what no export takes."""
    qc = src.qc
    if qc.get("desc_act") or qc.get("act_order"):
        raise CompressError("act-order GPTQ is not exported: its permuted groups are not contiguous blocks")
    fmt = qc.get("checkpoint_format") or qc.get("format") or "gptq"
    if fmt != "gptq":
        raise CompressError(f"GPTQ checkpoint format {fmt!r} is not exported (only v1 'gptq')")
    return int(qc.get("bits", 4)), int(qc.get("group_size", 128)), bool(qc.get("sym", True))


def gptq_codes(src: Artifact, prefix: str, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer `prefix`'s codes q [N, K] and zero points z [N, G] (both unsigned, 0..2^bits−1) and scales s [N, G]:
    w = (q − z)·s. Raises when g_idx is not the contiguous groups of `group` (act-order)."""
    from compress.quantize.verify import _unpack

    t = src.tensors
    q = _unpack(t[prefix + ".qweight"], bits, 0).t().contiguous()  # [N, K]
    k = t[prefix + ".g_idx"].numel()
    q = q[:, :k]
    z = _unpack(t[prefix + ".qzeros"], bits, 1).t().contiguous() + 1  # [N, G]; v1 stores zero − 1
    s = t[prefix + ".scales"].t().contiguous()  # [N, G]
    z = z[: s.shape[0]]
    g = k if group == -1 else group
    if not torch.equal(t[prefix + ".g_idx"].long(), torch.arange(k) // g):
        raise CompressError(f"{prefix}: permuted g_idx (act-order): not exported")
    return q, z, s
