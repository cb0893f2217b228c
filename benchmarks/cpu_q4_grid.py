"""Weight error of the two 4-bit symmetric g32 grids that GGUF Q4_0 can hold, round to nearest, on a checkpoint's
Linear weights: ours (gptqmodel's symmetric grid: scale 2·max|w|/15, zero 8, so the largest positive weight is
clipped to 7 steps) and llama.cpp's (`quantize_row_q4_0_ref`: d = the largest-magnitude weight, sign kept, / −8).
Also checks our formula against an RTN artifact made by `compress quantize --method rtn --group-size 32`.

    python benchmarks/cpu_q4_grid.py --source <HF dir> --rtn <RTN g32 artifact> --out benchmarks/results/cpu_q4_grid.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors import safe_open


def ours(w: torch.Tensor) -> torch.Tensor:
    g = w.reshape(-1, 32)
    s = (2 * g.abs().amax(1, keepdim=True) / 15).clamp_min(1e-12)
    return ((g / s).round() + 8).clamp(0, 15).sub(8).mul(s).reshape(w.shape)


def llamacpp(w: torch.Tensor) -> torch.Tensor:
    g = w.reshape(-1, 32)
    d = g.gather(1, g.abs().argmax(1, keepdim=True)) / -8
    q = (g / torch.where(d == 0, torch.ones_like(d), d) + 8.5).floor().clamp(0, 15)
    return (q - 8).mul(d).reshape(w.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True)
    ap.add_argument("--rtn", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from compress.quantize.verify import dequantized_reference

    err, norm, count = {"ours": 0.0, "llamacpp": 0.0}, 0.0, 0
    rtn = dict(dequantized_reference(args.rtn).named_parameters())
    check = 0.0
    for shard in sorted(Path(args.source).glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for k in [k for k in f.keys() if k.endswith("proj.weight")]:
                w = f.get_tensor(k).float()
                norm += w.pow(2).sum().item()
                count += 1
                err["ours"] += (ours(w) - w).pow(2).sum().item()
                err["llamacpp"] += (llamacpp(w) - w).pow(2).sum().item()
                check = max(check, ((ours(w) - rtn[k]).abs().max() / w.abs().max()).item())
    result = {"kind": "cpu_q4_grid", "schema_version": 1, "source": args.source, "linear_weights": count,
              "relative_squared_error": {k: round(v / norm, 6) for k, v in err.items()},
              "ours_formula_vs_rtn_artifact_max_rel": round(check, 6)}
    print(result)
    from cpu_decode import write_json  # benchmarks/ is on sys.path when this script runs

    write_json(args.out, result)


if __name__ == "__main__":
    main()
