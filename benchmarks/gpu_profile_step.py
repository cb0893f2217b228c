"""Where one decode step's GPU time goes: the kernels of an eager static-cache step, by total time.

    python benchmarks/gpu_profile_step.py MODEL_DIR [--batch 1] [--out $OUT/profile.json]

Loads MODEL_DIR on the decode path `compress bench` uses (GPTQ through gptqmodel's Marlin), prefills 128
tokens, then profiles 8 eager decode steps with torch.profiler and prints the kernels that took the most
GPU time per step. Also times a single 2048x2048 linear (bf16 cuBLAS vs the model's own quantized layer)
replayed in a CUDA graph, which separates per-kernel fixed cost from bandwidth.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def graph_time(fn, iters: int = 200) -> float:
    """Seconds per call of `fn` replayed in a CUDA graph (10 calls per graph, so launch cost is amortised)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(10):
            fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / (iters * 10)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out")
    args = ap.parse_args()
    from compress.bench.fastpath import load_for_decode
    from compress.bench.static_decode import StaticGreedy
    from compress.models import resolve

    model, path = load_for_decode(resolve(args.model), "cuda", "graph-eager")
    ids = torch.randint(3, 500, (args.batch, 128), device="cuda")
    loop = StaticGreedy(model, args.batch, 128 + args.steps + 8, "cuda", graph=False)
    loop._prefill(ids)
    for _ in range(2):
        loop._step()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(args.steps):
            loop._step()
        torch.cuda.synchronize()
    per_kernel = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[e.name][0] += e.device_time_total / args.steps
            per_kernel[e.name][1] += 1 / args.steps
    total_us = sum(t for t, _ in per_kernel.values())
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:12]
    print(f"{Path(args.model).name}: {sum(c for _, c in per_kernel.values()):.0f} kernels, {total_us:.0f} us GPU per step")
    for name, (t, c) in top:
        print(f"  {t:8.1f} us  {c:5.0f}x  {t / c:6.2f} us/call  {name[:90]}")
    # one 2048x2048 projection alone, graph-replayed
    layer = model.model.layers[0].self_attn.q_proj
    x = torch.randn(args.batch, 1, layer.in_features if hasattr(layer, "in_features") else 2048,
                    device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2048, x.shape[-1], device="cuda", dtype=torch.bfloat16)
    lin = {"bf16 cuBLAS 2048x2048": graph_time(lambda: torch.nn.functional.linear(x, w)),
           f"{type(layer).__name__} q_proj": graph_time(lambda: layer(x))}
    for k, v in lin.items():
        print(f"  single linear, graph-replayed: {k}: {v * 1e6:.2f} us")
    result = {"model": args.model, "decode_path": path.to_dict(), "batch": args.batch, "gpu_us_per_step": total_us,
              "kernels_per_step": sum(c for _, c in per_kernel.values()),
              "top_kernels": [{"name": n, "us_per_step": t, "calls_per_step": c} for n, (t, c) in top],
              "single_linear_us": {k: v * 1e6 for k, v in lin.items()}}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
