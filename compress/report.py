"""The comparison report: quality vs latency vs size per model, from eval and bench JSON files.

`write_report(OUT.html, eval_files, bench_files)` draws PNG plots with matplotlib, embeds them in one
self-contained HTML file (no external assets) and adds a table of every number plotted. Models are
matched across files by their resolved path; a model missing from one kind of file still appears
where it can. `compress report` and `compress bench --report` call it; so can a recipe runner.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path

from compress.bench.table import describe
from compress.errors import CompressError

PNG_DPI = 110


def check_inputs(eval_files: list, bench_files: list) -> None:
    """Fail before any work when an input file is missing or not a compress result."""
    from compress.bench.run import load_bench
    from compress.evaluate.results import load_eval

    for f in eval_files:
        load_eval(f)
    for f in bench_files:
        load_bench(f)


def _label(spec: str, path: str) -> str:
    p = Path(path)
    return p.name if p.name else spec


def collect(eval_files: list, bench_files: list) -> dict[str, dict]:
    """{model path: {"label", "method", "size_bytes", "metrics", "hib", "recovery", "bench", "decode_path"}}"""
    from compress.bench.run import load_bench
    from compress.evaluate.results import load_eval

    models: dict[str, dict] = {}

    def entry(path: str, spec: str) -> dict:
        return models.setdefault(path, {"label": _label(spec, path), "method": None, "size_bytes": None,
                                        "metrics": {}, "hib": {}, "recovery": {}, "bench": {}, "decode_path": None})

    for f in eval_files:
        r = load_eval(f)
        e = entry(r.model.path, r.model.spec)
        e["method"] = e["method"] or r.model.method
        e["size_bytes"] = e["size_bytes"] or r.model.size_bytes
        e["metrics"].update(r.metrics)
        e["hib"].update(r.higher_is_better)
        e["recovery"].update(r.recovery)
    benched: set[str] = set()
    for f in bench_files:
        b = load_bench(f)
        for m in b["models"]:
            key = m.get("artifact") or m["path"]  # a tier's GGUF on llama.cpp: beside its artifact's quality
            if key in benched:  # the same model in another bench run (e.g. another decoder): its own row
                key = f"{m['path']}#{Path(f).stem}"
                entry(key, m["spec"])["label"] = f"{_label(m['spec'], m['path'])} [{Path(f).stem}]"
            benched.add(key)
            e = entry(key, m["spec"])
            e["method"] = e["method"] or m.get("method")
            e["size_bytes"] = m.get("size_bytes") or e["size_bytes"]
            e["decode_path"] = m["decode_path"]
            e["threads"] = m.get("torch_threads")
            for row in m["batches"]:
                e["bench"][row["batch_size"]] = row
    if not models:
        raise CompressError("the report needs at least one eval or bench JSON")
    return models


def _pick_metric(models: dict, metric: str | None) -> str | None:
    names = [n for m in models.values() for n in m["metrics"]]
    if metric is not None:
        if metric not in names:
            raise CompressError(f"metric {metric!r} is in none of the eval files (have: {', '.join(sorted(set(names)))})")
        return metric
    for prefix in ("ppl:", ""):
        for n in names:
            if n.startswith(prefix):
                return n
    return None


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(models: dict, metric: str | None, batch_size: int) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    rows = [(m["label"], m) for m in models.values()]
    if metric:
        pts = [(lab, m["metrics"][metric], m["bench"].get(batch_size), m["size_bytes"])
               for lab, m in rows if metric in m["metrics"]]
        timed = [(lab, q, b["tpot_s"]["median"] * 1e3, s) for lab, q, b, s in pts if b and b.get("tpot_s")]
        if timed:
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            sizes = [s or 0 for *_, s in timed]
            biggest = max(sizes) or 1
            ax.scatter([t for _, _, t, _ in timed], [q for _, q, _, _ in timed],
                       s=[60 + 900 * (s / biggest) for s in sizes], alpha=0.5)
            for lab, q, t, s in timed:
                ax.annotate(f"{lab}\n{(s or 0) / 2**20:.0f} MiB", (t, q), fontsize=8, ha="center", va="bottom")
            ax.set_xlabel(f"decode latency, ms per token (batch {batch_size}, median)")
            ax.set_ylabel(metric + (" (lower is better)" if not _hib(models, metric) else " (higher is better)"))
            ax.set_title("Quality vs latency (marker area ∝ size on disk)")
            ax.grid(alpha=0.3)
            out.append(("Quality vs decode latency vs size", _png(fig)))
        sized = [(lab, q, s) for lab, q, _, s in pts if s]
        if sized:
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            ax.scatter([s / 2**20 for *_, s in sized], [q for _, q, _ in sized])
            for lab, q, s in sized:
                ax.annotate(lab, (s / 2**20, q), fontsize=8, xytext=(4, 4), textcoords="offset points")
            ax.set_xlabel("size on disk, MiB")
            ax.set_ylabel(metric)
            ax.set_title("Quality vs size")
            ax.grid(alpha=0.3)
            out.append(("Quality vs size on disk", _png(fig)))
    benched = [(lab, m) for lab, m in rows if m["bench"]]
    if benched:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for lab, m in benched:
            bs = sorted(m["bench"])
            ys = [(m["bench"][b]["decode_tok_s"] or {}).get("median") for b in bs]
            ax.plot(bs, ys, marker="o", label=lab)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("decode tokens/s (all sequences, median)")
        ax.set_title("Decode throughput")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out.append(("Decode throughput by batch size", _png(fig)))
    return out


def _hib(models: dict, metric: str) -> bool:
    for m in models.values():
        if metric in m["hib"]:
            return m["hib"][metric]
    return True


def table_html(models: dict, batch_size: int) -> str:
    metrics = sorted({n for m in models.values() for n in m["metrics"]})
    recov = sorted({n for m in models.values() for n in m["recovery"]})
    sizes = sorted({b for m in models.values() for b in m["bench"]})
    head = (["model", "method", "size MiB"] + [html.escape(n) + (" ↓" if not _hib(models, n) else " ↑") for n in metrics]
            + [f"recovery {html.escape(n)}" for n in recov] + [f"tok/s b{b}" for b in sizes]
            + [f"TTFT ms b{batch_size}", f"ms/token b{batch_size}", f"peak MiB b{batch_size}", "decode path"])
    lines = ["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for m in models.values():
        b = m["bench"].get(batch_size)
        p = m["decode_path"]
        path = "-" if p is None else (f"{p['device']}, {describe(p)}"
                                      + (f", {m.get('threads')} threads" if p["device"] == "cpu" else ""))
        cells = [m["label"], m["method"] or "-", f"{m['size_bytes'] / 2**20:.1f}" if m["size_bytes"] else "-"]
        cells += [f"{m['metrics'][n]:.4f}" if n in m["metrics"] else "-" for n in metrics]
        cells += [f"{m['recovery'][n]:.3f}" if n in m["recovery"] else "-" for n in recov]
        cells += [f"{(m['bench'][s]['decode_tok_s'] or {}).get('median', 0):.1f}" if s in m["bench"] else "-" for s in sizes]
        cells += ([f"{b['ttft_s']['median'] * 1e3:.1f}", f"{b['tpot_s']['median'] * 1e3:.2f}" if b["tpot_s"] else "-",
                   f"{b['peak_memory_bytes'] / 2**20:.0f}"] if b else ["-", "-", "-"])
        cells.append(html.escape(path))
        lines.append("<tr>" + "".join(f"<td>{html.escape(c) if i < 2 else c}</td>" for i, c in enumerate(cells)) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def render(models: dict, metric: str | None = None, batch_size: int | None = None, title: str = "compress report") -> str:
    metric = _pick_metric(models, metric)
    all_sizes = sorted({b for m in models.values() for b in m["bench"]})
    if batch_size is None:
        batch_size = all_sizes[0] if all_sizes else 1
    figs = plots(models, metric, batch_size)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:48%;margin:4px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}. Quality axis: "
        f"<code>{html.escape(metric or 'none')}</code>; latency at batch {batch_size}. "
        "Ratios in the bench JSON are to its first model, measured in the same run.</p>",
    ]
    parts += [f"<figure style='display:inline-block'><img alt='{html.escape(cap)}' src='data:image/png;base64,{png}'>"
              f"<figcaption>{html.escape(cap)}</figcaption></figure>" for cap, png in figs]
    parts += ["<h2>Numbers</h2>", table_html(models, batch_size), "</body></html>"]
    return "\n".join(parts)


def write_report(output: str | Path, eval_files: list, bench_files: list, metric: str | None = None,
                 batch_size: int | None = None, title: str = "compress report") -> Path:
    from compress.evaluate.results import write_text_atomic

    check_inputs(eval_files, bench_files)
    page = render(collect(eval_files, bench_files), metric, batch_size, title)
    return write_text_atomic(output, page)
