"""`--bits-budget`: per-linear widths chosen from measured sensitivity, and bits per weight from files.

Sensitivity (the gradient × error score of AutoRound's AutoScheme and ModelOpt's AutoQuantize):
for each decoder Linear, the loss increase that quantizing it alone to the base width would cause,
to second order, ΔL ≈ ½ Σᵢ Fᵢᵢ (ŵᵢ − wᵢ)², with F the empirical Fisher diagonal (squared loss
gradients summed over calibration batches) and ŵ the round-to-nearest weight at the run's group
size and grid (symmetric: the signed-peak grid of grid.py). Choice: a 0/1 knapsack, greedy by score
per extra bit, under the budget.

Widths: 4 (GPTQ-packed) or 16 (the layer kept in the source dtype). A 4/8 mix is what gptqmodel's
`dynamic` overrides can quantize, but plain `from_pretrained` (transformers 5.17 + optimum 2.3)
drops `dynamic` and builds every layer at one width, so such a checkpoint would not load the way
users load it. Keeping layers unquantized is expressed by `modules_in_block_to_quantize`, which
plain transformers honours. Embeddings and the LM head are never quantized (16 bits).

Bits per weight count every tensor of the decoder's Linear layers on disk: qweight, qzeros and
scales of packed layers, the weight of kept layers; `g_idx` (one int32 per input column, an index
that is only needed with act-order) is reported apart, as is a compressed-tensors file's `weight_shape` (two
int64s per layer); there a packed layer counts `weight_packed`, `weight_scale` and `weight_zero_point`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from compress.errors import CompressError
from compress.quantize.grid import signed_peak_step

KEEP_WIDTH = 16  # a kept layer's bits in a bf16/fp16 source (32 in an fp32 one: `keep_bits`)


@dataclass
class Plan:
    widths: dict[str, int]  # decoder Linear name → 4 or the source dtype's width (kept unquantized)
    scores: dict[str, float]  # name → estimated loss increase at the base width
    planned_bits_per_weight: float


def rtn_weight(w: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """Round-to-nearest fake quantization of a [out, in] weight, per group of input columns."""
    out_f, in_f = w.shape
    g = in_f if group_size == -1 else group_size
    pad = (-in_f) % g
    x = torch.nn.functional.pad(w.float(), (0, pad)).reshape(out_f, -1, g)  # [out, groups, g]
    qmax = 2**bits - 1
    if sym:  # the signed-peak grid our GPTQ and RTN use (grid.py): the group's peak weight, sign kept, is exact
        scale = signed_peak_step(x, (qmax + 1) / 2)
        zero = torch.full_like(scale, (qmax + 1) / 2)
    else:
        lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / qmax).clamp_min(1e-8)
        zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, qmax)
    return ((q - zero) * scale).reshape(out_f, -1)[:, :in_f]


def packed_bits(in_f: int, out_f: int, bits: int, group_size: int) -> float:
    """Bits per weight of one GPTQ-packed layer: codes + fp16 scales + packed zeros per group."""
    groups = 1 if group_size == -1 else -(-in_f // group_size)
    total = in_f * out_f * bits + groups * out_f * (16 + bits)
    return total / (in_f * out_f)


def decoder_linears(model) -> dict[str, torch.nn.Linear]:
    head = model.get_output_embeddings()
    return {n: m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head and ".layers." in f".{n}"}


def fisher_scores(model, calib_ids: torch.Tensor, bits: int, group_size: int, sym: bool,
                  batch_size: int = 4) -> dict[str, float]:
    """½ Σ F (ŵ − w)² per decoder Linear; F from loss gradients over the calibration blocks."""
    from tqdm.auto import tqdm

    layers = decoder_linears(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for m in layers.values():
        m.weight.requires_grad_(True)
    fisher = {n: torch.zeros_like(m.weight, dtype=torch.float32) for n, m in layers.items()}
    device = next(model.parameters()).device
    for i in tqdm(range(0, len(calib_ids), batch_size), desc="sensitivity", leave=False):
        ids = calib_ids[i:i + batch_size].to(device)
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
        for n, m in layers.items():
            fisher[n] += m.weight.grad.float() ** 2
    scores = {}
    for n, m in layers.items():
        w = m.weight.detach().float()
        scores[n] = 0.5 * (fisher[n] * (rtn_weight(w, bits, group_size, sym) - w) ** 2).sum().item()
        m.weight.requires_grad_(False)
    return scores


def choose_widths(shapes: dict[str, tuple[int, int]], scores: dict[str, float], budget: float,
                  base_bits: int, group_size: int, keep_bits: int = KEEP_WIDTH) -> Plan:
    """Keep unquantized the layers with the highest score per extra bit while the average stays ≤ budget."""
    base = {n: packed_bits(i, o, base_bits, group_size) * i * o for n, (o, i) in shapes.items()}
    params = sum(o * i for o, i in shapes.values())
    check_floor(shapes, budget, base_bits, group_size)
    spare = budget * params - sum(base.values())
    widths = dict.fromkeys(shapes, base_bits)
    extra = {n: keep_bits * o * i - base[n] for n, (o, i) in shapes.items()}
    for n in sorted(shapes, key=lambda n: scores[n] / extra[n], reverse=True):
        if extra[n] <= spare and scores[n] > 0:
            widths[n] = keep_bits
            spare -= extra[n]
    if all(w == keep_bits for w in widths.values()):
        raise CompressError(f"--bits-budget {budget:g} keeps every layer at {keep_bits} bits: nothing to quantize")
    used = sum(base[n] if widths[n] == base_bits else keep_bits * o * i for n, (o, i) in shapes.items())
    return Plan(widths, scores, round(used / params, 4))


def check_floor(shapes: dict[str, tuple[int, int]], budget: float, base_bits: int, group_size: int) -> None:
    """Refuse a budget below what uniform `base_bits` costs on these layers (scales and zeros included)."""
    total = sum(packed_bits(i, o, base_bits, group_size) * i * o for o, i in shapes.values())
    floor = total / sum(o * i for o, i in shapes.values())
    if floor > budget:
        raise CompressError(f"--bits-budget {budget:g} is below uniform {base_bits}-bit g{group_size}'s "
                            f"{floor:.3f} bits per weight on this model")


def _meta_shapes(src: str) -> dict[str, tuple[int, int]]:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src))
    return {n: tuple(m.weight.shape) for n, m in decoder_linears(skeleton).items()}


def plan(src: str, calib_ids: torch.Tensor, budget: float, base_bits: int, group_size: int, sym: bool,
         device: str, keep_bits: int = KEEP_WIDTH, max_blocks: int = 32) -> Plan:
    """Measure sensitivity of the source model at `src` and pick widths under `budget`."""
    from compress.models import load_causal_lm

    shapes = _meta_shapes(src)
    if not shapes:
        raise CompressError("--bits-budget found no decoder Linear layers to choose widths for")
    check_floor(shapes, budget, base_bits, group_size)  # before the model loads
    model = load_causal_lm(src, device=device, dtype=torch.float32)
    scores = fisher_scores(model, calib_ids[:max_blocks], base_bits, group_size, sym)
    del model
    return choose_widths(shapes, scores, budget, base_bits, group_size, keep_bits)


def bits_per_weight(model_dir: str | Path) -> dict:
    """Bits per weight of the decoder's Linear layers, computed from the safetensors files on disk."""
    from safetensors import safe_open

    tensors: dict[str, tuple[tuple[int, ...], int]] = {}  # name → (shape, bytes)
    shapes: dict[str, list[int]] = {}  # compressed-tensors layer → its [out, in] (the `weight_shape` tensor)
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                shape = tuple(sl.get_shape())
                itemsize = torch.empty(0, dtype=_dtype(sl.get_dtype())).element_size()
                tensors[k] = (shape, itemsize * _numel(shape))
                if k.endswith(".weight_shape"):
                    shapes[k[: -len(".weight_shape")]] = f.get_tensor(k).tolist()
    params = payload = gidx = shape_bytes = 0
    for k, (shape, nbytes) in tensors.items():
        if ".layers." not in f".{k}":
            continue
        if k.endswith(".qweight"):
            p = k[: -len(".qweight")]
            params += tensors[p + ".g_idx"][0][0] * tensors[p + ".scales"][0][1]
            payload += nbytes + tensors[p + ".qzeros"][1] + tensors[p + ".scales"][1]
            gidx += tensors[p + ".g_idx"][1]
        elif k.endswith(".weight_packed"):  # compressed-tensors (compress export --format compressed-tensors)
            p = k[: -len(".weight_packed")]
            params += _numel(shapes[p])
            payload += nbytes + tensors[p + ".weight_scale"][1] + tensors.get(p + ".weight_zero_point", (0, 0))[1]
            shape_bytes += tensors[p + ".weight_shape"][1]
        elif k.endswith(".weight") and len(shape) == 2:
            params += _numel(shape)
            payload += nbytes
    if not params:
        raise CompressError(f"{model_dir} has no decoder Linear weights")
    out = {"bits_per_weight": round(8 * payload / params, 4), "g_idx_bits_per_weight": round(8 * gidx / params, 4),
           "linear_params": params}
    if shapes:
        out["shape_bits_per_weight"] = round(8 * shape_bytes / params, 4)
    return out


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _dtype(name: str) -> torch.dtype:
    return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32,
            "I64": torch.int64, "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16}[name]
