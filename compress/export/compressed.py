"""`export_compressed_tensors(ARTIFACT, OUTPUT)`: a GPTQ/RTN artifact as a compressed-tensors checkpoint.

compressed-tensors' `pack-quantized` format is llm-compressor's: vLLM serves it with its W4A16 kernels, and
plain `transformers` `from_pretrained` loads it (with the `compressed-tensors` package). The codes are moved,
never re-quantized:

| GPTQ v1 layer (codes q, zero z, scale s; w = (q − z)·s) | compressed-tensors |
|---|---|
| q in 0..2^b−1 | `weight_packed`: q − 2^(b−1) as signed b-bit codes, packed by compressed-tensors' own `pack_to_int32` |
| s [out, groups] | `weight_scale`: fp16 as stored; bf16 in a bf16 checkpoint, the dtype loaders cast it to (rounds: the largest weight change is reported) |
| z, symmetric (all 2^(b−1)) | nothing: a symmetric file has no zero points, which is what makes g64 4.25 bits |
| z, asymmetric | `weight_zero_point`: z − 2^(b−1), packed along the output dim as compressed-tensors does |
| [out, in] | `weight_shape` (two int64s per layer; reported apart from bits per weight) |

Unquantized Linears (the LM head, layers `--bits-budget` kept) go to the config's `ignore` list and are written
as they are. Refused, one line each: act-order (a permuted g_idx), groups that do not divide a layer's input
width, methods other than GPTQ-format ones. The directory is written beside OUTPUT and renamed into place
when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from compress.errors import CompressError
from compress.export.source import Artifact, ExportResult, check_gptq_layout, gptq_codes
from compress.models import config_dtype

_SKIP = {"config.json", "quantize_config.json", "model.safetensors.index.json", "compress.json"}


def export_compressed_tensors(artifact: str | os.PathLike, output: str | os.PathLike,
                              overwrite: bool = False) -> ExportResult:
    """Write ARTIFACT (a GPTQ-format checkpoint: `--method gptq/rtn/autoround`) to the directory OUTPUT in
    compressed-tensors' pack-quantized format."""
    from safetensors.torch import save_file

    from compress.quantize.budget import bits_per_weight

    artifact, output = Path(artifact), Path(output)
    if not artifact.is_dir():
        raise CompressError(f"{artifact} is not an artifact directory")
    if output.exists() and not overwrite:
        raise CompressError(f"output {output} already exists (pass --overwrite to replace it)")
    if output.resolve() == artifact.resolve():
        raise CompressError("--output must differ from the artifact directory")
    src = Artifact(artifact)
    if src.method != "gptq":
        raise CompressError(f"{src.method or 'unquantized'} checkpoints are not exported to compressed-tensors: "
                            "it takes GPTQ-format artifacts (--method gptq, rtn or autoround)")
    bits, group, sym = check_gptq_layout(src)
    bf16 = config_dtype(src.config) == "bfloat16"  # loaders cast scales to it: the export stores them in bf16
    tensors, ignore, worst = _tensors(src, bits, group, sym, bf16)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for f in artifact.iterdir():
            if f.is_file() and f.suffix != ".safetensors" and f.name not in _SKIP:
                shutil.copy2(f, tmp / f.name)
        _write_config(tmp, src.config, bits, group, sym, ignore)
        bpw = bits_per_weight(tmp)
        if output.is_dir():
            shutil.rmtree(output)
        elif output.exists():
            output.unlink()
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    packed = sum(k.endswith(".weight_packed") for k in tensors)
    scheme = f"W{bits}A16 {'per channel' if group == -1 else f'g{group}'} {'sym' if sym else 'asym'}"
    notes = [f"{packed} Linear layers packed ({scheme}); {len(ignore)} kept unquantized (ignore list)"]
    if worst:
        notes.append("largest weight change from rounding fp16 scales to bfloat16 "
                     f"(the checkpoint's dtype, which loaders cast scales to): {worst:.3g}")
    size = sum(f.stat().st_size for f in output.iterdir() if f.is_file())
    return ExportResult(str(output), "compressed-tensors", scheme, size,
                        {"pack-quantized": packed, "dense": sum(".weight_" not in k for k in tensors)},
                        worst, notes, "copied from the artifact", bpw)


def _tensors(src: Artifact, bits: int, group: int, sym: bool,
             bf16: bool) -> tuple[dict[str, torch.Tensor], list[str], float]:
    """The compressed-tensors state dict, the unquantized Linears' names, and the largest weight change."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    offset = 1 << (bits - 1)
    out: dict[str, torch.Tensor] = {}
    worst = 0.0
    packed = {k[: -len(".qweight")] for k in src.tensors if k.endswith(".qweight")}
    for name, t in sorted(src.tensors.items()):
        prefix, _, suffix = name.rpartition(".")
        if prefix in packed:
            if suffix != "qweight":
                if suffix == "bias":
                    out[name] = t
                continue
            k = src.tensors[prefix + ".g_idx"].numel()
            if group != -1 and k % group:
                raise CompressError(f"{prefix}: input width {k} is not a multiple of group size {group}: "
                                    "compressed-tensors groups must divide it")
            q, z, s = gptq_codes(src, prefix, bits, group)
            if sym and not torch.all(z == offset):
                raise CompressError(f"{prefix}: marked symmetric but has zero points other than {offset}")
            scale = s.to(torch.bfloat16) if bf16 else s  # fp16 → fp16/fp32 loads exactly
            if scale.dtype != s.dtype:
                worst = max(worst, _weight_change(q, z, s, scale, k))
            out[prefix + ".weight_packed"] = pack_to_int32((q - offset).to(torch.int8), bits)
            out[prefix + ".weight_scale"] = scale.contiguous()
            out[prefix + ".weight_shape"] = torch.tensor([q.shape[0], k], dtype=torch.int64)
            if not sym:
                out[prefix + ".weight_zero_point"] = pack_to_int32((z - offset).to(torch.int8), bits, packed_dim=0)
        else:
            out[name] = t.contiguous()
    ignore = {n[: -len(".weight")] for n, t in out.items() if ".layers." in f".{n}" and n.endswith(".weight")
              and t.ndim == 2}  # Linears the budget kept
    if "lm_head" not in packed:
        ignore.add("lm_head")  # a Linear module even when tied to the embedding: "Linear" targets would take it
    return out, sorted(ignore), worst


def _weight_change(q: torch.Tensor, z: torch.Tensor, s: torch.Tensor, scale: torch.Tensor, k: int) -> float:
    """max |(q − z)·s − (q − z)·scale| over the layer, groups expanded to columns."""
    per_col = k // s.shape[1]
    d = (s.float() - scale.float()).repeat_interleave(per_col, dim=1)
    return ((q - z.repeat_interleave(per_col, dim=1)).float() * d).abs().max().item()


def _write_config(tmp: Path, config: dict, bits: int, group: int, sym: bool, ignore: list[str]) -> None:
    """config.json without the GPTQ block, then compressed-tensors' own writer adds its quantization_config."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    cfg = {k: v for k, v in config.items() if k != "quantization_config"}
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym,
                            strategy="channel" if group == -1 else "group",
                            group_size=None if group == -1 else group)
    scheme = QuantizationScheme(targets=["Linear"], weights=args, format="pack-quantized")
    qcfg = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized",
                              quantization_status="compressed", ignore=ignore)
    ModelCompressor(quantization_config=qcfg).update_config(str(tmp))
