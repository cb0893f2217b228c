"""Markdown tables (for RESULTS.md) from compress eval/bench JSON files.

    python benchmarks/summarize.py --eval benchmarks/results/cpu_smollm2_eval_*.json --bench benchmarks/results/cpu_smollm2_bench_t1.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def eval_table(files: list[str]) -> str:
    from compress.evaluate.results import load_eval

    results = [load_eval(f) for f in files]
    metrics = [m for m in results[0].metrics if not m.endswith(":acc_norm")]  # acc_norm is in the JSON
    head = "| model | size MiB | " + " | ".join(metrics) + " | " + " | ".join(f"recovery {m}" for m in metrics) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(metrics))]
    for r in results:
        name = Path(r.model.path).name
        vals = [("-" if m not in r.metrics else f"{r.metrics[m]:.4g}")
                + (f" ±{r.tasks[m.split(':')[0]].stderr.get(m.split(':')[1], 0):.3f}" if m.split(":")[0] in r.tasks else "")
                for m in metrics]
        rec = [f"{r.recovery[m]:.3f}" if m in r.recovery else "-" for m in metrics]
        lines.append(f"| {name} | {r.model.size_bytes / 2**20:.1f} | " + " | ".join(vals) + " | " + " | ".join(rec) + " |")
    return "\n".join(lines)


def bench_table(file: str) -> str:
    b = json.loads(Path(file).read_text())
    lines = ["| model | decode path | batch | TTFT ms | ms/token | decode tok/s (min-max) | × first | e2e p50 / p95 s | peak RSS/mem MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, ratio in zip(b["models"], b["ratios_to_first"]):
        p = m["decode_path"]
        how = f"{p['cache']} cache, {'compiled' if p['compiled'] else 'eager'}" + (f", {p['backend']}" if p["backend"] else "")
        kernels = ", ".join(f"{k}×{v}" for k, v in p["kernels"].items())
        for row in m["batches"]:
            t = row["decode_tok_s"]
            r = ratio["batches"][str(row["batch_size"])]
            lines.append(f"| {Path(m['path']).name} | {how} ({kernels}) | {row['batch_size']} | {row['ttft_s']['median'] * 1e3:.0f} | "
                         f"{row['tpot_s']['median'] * 1e3:.1f} | {t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f}) | "
                         f"{r['decode_tok_s']:.2f} | {row['e2e_s']['p50']:.2f} / {row['e2e_s']['p95']:.2f} | "
                         f"{row['peak_memory_bytes'] / 2**20:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", nargs="*", default=[])
    ap.add_argument("--bench", nargs="*", default=[])
    args = ap.parse_args()
    if args.eval:
        print(eval_table(args.eval), "\n")
    for f in args.bench:
        print(f"`{Path(f).name}`\n\n{bench_table(f)}\n")


if __name__ == "__main__":
    main()
