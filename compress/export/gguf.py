"""`export_gguf(ARTIFACT, OUTPUT)`: a compress artifact (or plain HF Llama checkpoint) as one GGUF file.

Weights are written as they were quantized, never re-quantized:

| artifact layer | GGUF type | exact? |
|---|---|---|
| GPTQ/RTN 4-bit, symmetric, group a multiple of 32 (or per channel, K % 32 == 0) | Q4_0 | bit for bit (d = s, zero point 8) |
| GPTQ/RTN 4-bit, asymmetric, same groups | Q4_1 | m = −s·z rounded to fp16; the largest weight change is reported |
| torchao int8 weight-only (per output channel, zero point 0) | Q8_0 | d = channel scale rounded to fp16; reported |
| bf16 / fp16 weights | F16 | bf16 → fp16 is exact for values in fp16's normal range; reported |
| bf16 / fp16 / fp32 2-D weights, with `dense_type="q8_0"` | Q8_0 | re-quantized (round to nearest, 32-blocks), asked for; reported |
| fp32 weights | F32 | exact |
| norms | F32 | exact |

Refused, one line each: act-order (a permuted g_idx), other bit widths, groups that are not whole
32-blocks, bitsandbytes LLM.int8(), non-Llama architectures. q_proj/k_proj rows are permuted to
llama.cpp's rotary layout (as its converter does); rows of quantized blocks move whole, so the
permutation is exact too. The file is written beside OUTPUT and renamed into place when complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from compress.errors import CompressError
from compress.export.blocks import BLOCK, q4_0_blocks, q4_1_blocks, q8_0_blocks
from compress.export.source import Artifact, ExportResult, check_gptq_layout, gptq_codes

_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


def gguf_name(hf_name: str) -> str:
    """HF Llama tensor name → GGUF name (`model.layers.3.mlp.up_proj.weight` → `blk.3.ffn_up.weight`)."""
    base, _, suffix = hf_name.rpartition(".")
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{suffix}"
    parts = base.split(".")
    if parts[:2] == ["model", "layers"] and ".".join(parts[3:]) in _LAYER_NAMES:
        return f"blk.{parts[2]}.{_LAYER_NAMES['.'.join(parts[3:])]}.{suffix}"
    raise CompressError(f"tensor {hf_name} has no GGUF name in the Llama layout: not exported")


def rope_permute(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder q/k output rows from HF's half-split rotary layout to llama.cpp's interleaved one."""
    n = rows.shape[0]
    return rows.reshape(n_head, 2, n // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _check_gptq(src: Artifact) -> tuple[int, bool]:
    bits, group, sym = check_gptq_layout(src)
    if bits != 4:
        raise CompressError(f"GPTQ {bits}-bit is not exported: GGUF Q4_0/Q4_1 hold 4-bit codes")
    if group != -1 and group % BLOCK:
        raise CompressError(f"group size {group} is not a multiple of {BLOCK}: GGUF blocks are {BLOCK} weights wide; "
                            f"quantize with --group-size {BLOCK}")
    return group, sym


def _gptq_tensor(src: Artifact, prefix: str, group: int, sym: bool) -> tuple[np.ndarray, str, float]:
    q, z, s = gptq_codes(src, prefix, 4, group)
    k = q.shape[1]
    if k % BLOCK:
        raise CompressError(f"{prefix}: input width {k} is not a multiple of {BLOCK}: no GGUF block layout")
    g = k if group == -1 else group
    if sym:
        if not torch.all(z == 8):
            raise CompressError(f"{prefix}: marked symmetric but has zero points other than 8")
        return q4_0_blocks(q, s, g), "Q4_0", 0.0
    blocks, err = q4_1_blocks(q, s, z, g)
    return blocks, "Q4_1", err


def _int8_tensor(src: Artifact, prefix: str) -> tuple[np.ndarray, str, float]:
    t = src.tensors
    q, scale, zp = (t[f"{prefix}._weight_{x}"] for x in ("qdata", "scale", "zero_point"))
    if q.shape[1] % BLOCK or scale.numel() != q.shape[0]:
        raise CompressError(f"{prefix}: int8 layout {tuple(q.shape)} with {scale.numel()} scales is not per-channel "
                            f"over {BLOCK}-wide blocks: not exported")
    if torch.any(zp != 0):
        raise CompressError(f"{prefix}: int8 with non-zero zero points has no Q8_0 form: not exported")
    blocks, err = q8_0_blocks(q, scale.reshape(-1))
    return blocks, "Q8_0", err


DENSE_TYPES = ("f16", "q8_0")


def _dense_tensor(name: str, t: torch.Tensor, dense_type: str = "f16") -> tuple[np.ndarray, str, float]:
    if dense_type == "q8_0" and t.ndim == 2 and t.shape[1] % BLOCK == 0:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize, quantize

        w = t.float().numpy()
        blocks = quantize(w, GGMLQuantizationType.Q8_0)
        return blocks, "Q8_0", float(np.abs(dequantize(blocks, GGMLQuantizationType.Q8_0) - w).max())
    if t.ndim == 1 or t.dtype == torch.float32:
        return t.float().numpy(), "F32", 0.0
    if t.abs().max().item() >= 65504:
        return t.float().numpy(), "F32", 0.0  # out of fp16 range: keep it exact
    half = t.to(torch.float16)
    return half.numpy(), "F16", (half.float() - t.float()).abs().max().item()


def _layers(src: Artifact):
    """(hf weight name, kind, prefix) for every tensor to write; raises for a layout we do not export."""
    t = src.tensors
    tied = src.config.get("tie_word_embeddings", False)
    for name in sorted(t):
        if name.endswith(".qweight"):
            yield name[: -len(".qweight")] + ".weight", "gptq", name[: -len(".qweight")]
        elif name.endswith("._weight_qdata"):
            yield name[: -len("._weight_qdata")] + ".weight", "int8", name[: -len("._weight_qdata")]
        elif name.endswith((".qzeros", ".scales", ".g_idx", "._weight_scale", "._weight_zero_point")):
            continue
        elif name.endswith(".bias"):
            raise CompressError(f"{name}: Linear biases are not part of the Llama GGUF layout: not exported")
        elif tied and name == "lm_head.weight":
            continue
        else:
            yield name, "dense", name


def export_gguf(artifact: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False,
                progress: bool = False, dense_type: str = "f16") -> ExportResult:
    """Write ARTIFACT (a GPTQ/RTN, int8-wo or dense Llama checkpoint) to OUTPUT as GGUF. `dense_type`: how the
    artifact's unquantized 2-D weights (a GPTQ tier's embedding/output head; every matrix of a dense model) are
    written: "f16" (as they are), or "q8_0" (re-quantized to 8 bits in 32-blocks, as llama.cpp's own Q4_0 stores
    the embedding; the largest weight change is reported)."""
    import gguf

    from compress.export.vocab import copy_gguf_metadata, write_hf_tokenizer, write_llama_hparams

    artifact, output = Path(artifact), Path(output)
    if dense_type not in DENSE_TYPES:
        raise CompressError(f"dense type {dense_type!r} is not one of {', '.join(DENSE_TYPES)}")
    if output.suffix.lower() != ".gguf":
        raise CompressError(f"--output must end in .gguf, got {output}")
    if output.exists() and not overwrite:
        raise CompressError(f"output {output} already exists (pass --overwrite to replace it)")
    if not artifact.is_dir():
        raise CompressError(f"{artifact} is not an artifact directory")
    src = Artifact(artifact)
    if src.method not in (None, "gptq", "torchao"):
        raise CompressError(f"{src.method} checkpoints are not exported: GGUF has no form for them "
                            "(quantize with --method gptq/rtn --group-size 32, or int8-wo)")
    group, sym = _check_gptq(src) if src.method == "gptq" else (None, True)
    gguf_source = _gguf_source(artifact)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    counts: dict[str, int] = {}
    worst, requantized = 0.0, 0
    try:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        write_llama_hparams(writer, src.config, None if gguf_source else artifact.name)
        if gguf_source is not None:
            copy_gguf_metadata(writer, gguf_source)
            tokenizer = f"copied from the source GGUF {gguf_source.name}"
        else:
            tokenizer = f"Hugging Face tokenizer.json as gpt2 BPE (pre = {write_hf_tokenizer(writer, artifact)})"
        layers = list(_layers(src))
        for i, (name, kind, prefix) in enumerate(layers):
            if kind == "gptq":
                data, typ, err = _gptq_tensor(src, prefix, group, sym)
            elif kind == "int8":
                data, typ, err = _int8_tensor(src, prefix)
            else:
                data, typ, err = _dense_tensor(name, src.tensors[name], dense_type)
                requantized += typ == "Q8_0"
            heads = src.heads_for(name)
            if heads is not None:
                data = rope_permute(torch.from_numpy(np.ascontiguousarray(data)), heads).numpy()
            raw = None if typ in ("F32", "F16") else gguf.GGMLQuantizationType[typ]
            writer.add_tensor(gguf_name(name), data, raw_dtype=raw)
            counts[typ] = counts.get(typ, 0) + 1
            worst = max(worst, err)
            if progress and (i + 1) % 50 == 0:
                print(f"  {i + 1}/{len(layers)} tensors", flush=True)
        file_type = _file_type(counts)
        writer.add_file_type(int(getattr(gguf.LlamaFileType, "MOSTLY_" + file_type if file_type != "F32" else "ALL_F32")))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    notes = []
    if requantized:
        notes.append(f"{requantized} dense weight matrices re-quantized to Q8_0 (asked for: dense type q8_0)")
    if worst:
        notes.append(f"largest weight change from fp16 rounding of scales/offsets, bf16→fp16 or Q8_0: {worst:.3g}")
    return ExportResult(str(output), "gguf", file_type, output.stat().st_size, counts, worst, notes, tokenizer)


def _file_type(counts: dict[str, int]) -> str:
    quant = {k: v for k, v in counts.items() if k.startswith("Q")}
    if quant:
        return max(quant, key=quant.get)
    return "F16" if "F16" in counts else "F32"


def _gguf_source(artifact: Path) -> Path | None:
    """The GGUF file this artifact was made from, when it still exists (its tokenizer is copied)."""
    from compress.artifacts import METADATA_FILE, read_meta
    from compress.models import resolve

    if not (artifact / METADATA_FILE).is_file():
        return None
    meta = read_meta(artifact)
    if meta.source.kind != "gguf":
        return None
    try:
        ref = resolve(meta.source.spec)
    except CompressError:
        return None
    return Path(ref.path) if ref.kind == "gguf" else None
