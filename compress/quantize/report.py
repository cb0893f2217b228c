"""Tables comparing quantization results."""

from __future__ import annotations

from rich.table import Table


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def results_table(results, baseline_size: int | None = None, title: str | None = None) -> Table:
    """`results`: QuantizeResult-like objects (method, bits, group_size, size_bytes, time_s, perplexity)."""
    t = Table(title=title)
    for col in ("method", "bits", "bits/weight", "group", "size", "size ratio", "time (s)", "held-out ppl"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in results:
        ratio = f"{r.size_bytes / baseline_size:.2f}" if baseline_size else "-"
        bpw = getattr(r, "bits_per_weight", None)
        t.add_row(r.method, "mixed" if r.bits is None else str(r.bits), "-" if bpw is None else f"{bpw:.3f}",
                  "-" if r.group_size is None else str(r.group_size),
                  human_bytes(r.size_bytes), ratio, f"{r.time_s:.1f}",
                  "-" if r.perplexity is None else f"{r.perplexity:.3f}")
    return t
