"""What llama.cpp's quantizer chose per tensor, read from its log: linear-layer types and bits per weight.

`llama_model_quantize` falls back to another type for a tensor whose row width its block does not divide (K-quants
need multiples of 256; SmolLM2's 576-wide layers are not), and says so only in its log. This reads every run in a
log (one per `[   1/ N]` restart) and reports, for the decoder's Linear weights, the types it wrote and their bits
per weight (each type's block bytes over block weights, from gguf's GGML_QUANT_SIZES: Q4_0 4.5, Q6_K 6.5625, ...).

    python benchmarks/llamacpp_quant_log.py LOG [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter

LINE = re.compile(r"\[\s*(\d+)/\s*\d+\]\s+(\S+)\s+- \[\s*([\d,\s]+)\], type =\s+(\S+),(?: converting to (\S+))?")
LINEAR = re.compile(r"blk\.\d+\.(attn_(q|k|v|output)|ffn_(gate|up|down))\.weight")


def runs(text: str) -> list[dict]:
    """One entry per quantizer run in the log: every tensor's (name, elements, type written)."""
    out: list[list[tuple[str, int, str]]] = []
    for line in text.splitlines():
        m = LINE.search(line)
        if not m:
            continue
        if m.group(1) == "1":
            out.append([])
        n = 1
        for d in m.group(3).replace(" ", "").split(","):
            n *= int(d) if d else 1
        out[-1].append((m.group(2), n, m.group(5) or m.group(4)))
    return [summary(r) for r in out]


def bits(llama_type: str) -> float:
    """Bits per weight of a llama.cpp type as its log names it ("q4_K", "f16")."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[llama_type.upper()]]
    return 8 * nbytes / block


def summary(tensors: list[tuple[str, int, str]]) -> dict:
    linear = [(n, t) for name, n, t in tensors if LINEAR.fullmatch(name)]
    params = sum(n for n, _ in linear)
    return {"linear_types": dict(Counter(t for _, t in linear)),
            "linear_bits_per_weight": round(sum(n * bits(t) for n, t in linear) / params, 4),
            "tensor_types": dict(Counter(t for _, _, t in tensors))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--out")
    args = ap.parse_args()
    text = open(args.log, errors="replace").read()
    result = {"log": args.log, "runs": runs(text),
              "fallback_warnings": len(re.findall(r"not divisible by \d+ \(required for type", text)),
              "quant_sizes": re.findall(r"quant size\s+=\s+([\d.]+ MiB \([\d.]+ BPW\))", text)}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
