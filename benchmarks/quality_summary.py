"""Markdown table from quality_table.py's JSON files (merged): one line per (row, group), mean ± half-range over seeds.

    .venv/bin/python benchmarks/quality_summary.py benchmarks/results/quality_table_tiny_cpu.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def fmt(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    mean = sum(values) / len(values)
    return f"{mean:.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def main(*paths: str) -> None:
    rows = [r for p in paths for r in json.load(open(p))["rows"]]
    rows = [r for i, r in enumerate(rows) if r["row"] != "bf16" or i == next(
        j for j, x in enumerate(rows) if x["row"] == "bf16")]  # one source row when several files are merged
    ppl_keys = sorted({k for r in rows for k in r if k.startswith("ppl:")})
    base = next(r for r in rows if r["row"] == "bf16")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["row"], r["group_size"])].append(r)
    cols = ["row", "group", "seeds", "bits/weight"] + [f"{k[4:]} ppl (Δ vs bf16)" for k in ppl_keys] + [
        "KL to source", "size MiB", "quantize s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for (name, group), rs in groups.items():
        failed = [r for r in rs if "skipped" in r or "error" in r]  # not built (skipped) or not scored (error)
        rs = [r for r in rs if r not in failed]
        if not rs:
            why = "skipped: " + failed[0]["skipped"] if "skipped" in failed[0] else "error: " + failed[0]["error"]
            print(f"| {name} | {group or '-'} | - | {why[:100]} |")
            continue
        label = "64 (bnb block)" if name == "nf4" else str(group or "-")  # older JSON recorded nf4 under g128
        cells = [name, label, str(len(rs)), fmt([r["bits_per_weight"] for r in rs], 3)]
        for k in ppl_keys:
            vals = [r[k] for r in rs]
            delta = [100 * (v / base[k] - 1) for v in vals]
            cells.append(f"{fmt(vals, 3)} ({fmt(delta, 1)}%)" if name != "bf16" else f"{vals[0]:.3f}")
        cells.append(fmt([r["kl_to_source"] for r in rs], 4))
        size = [r["size_bytes"] / 2**20 for r in rs if r.get("size_bytes")]
        cells.append(fmt(size, 2) if size else "in memory")
        cells.append(fmt([r["quantize_time_s"] for r in rs], 1))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
