"""The rich table `compress bench` prints."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table


def _mib(n) -> str:
    return f"{n / 2**20:.1f}" if n is not None else "-"


def describe(path: dict) -> str:
    """A short label for a recorded decode path (also reads results written before `decoder` existed)."""
    if path.get("runtime") == "llamacpp":
        return f"{path['loader']}, {path['threads']} threads"
    if path.get("graphed"):
        how = "static cache + CUDA graph" + (" of the compiled step" if path.get("graph_step") == "compiled" else "")
    elif path.get("decoder") == "graph":
        how = "static cache, eager loop"
    elif path.get("compiled"):
        how = f"{path['cache']} cache + torch.compile" + (" (CUDA graphs)" if path["device"].startswith("cuda") else "")
    else:
        how = f"{path['cache']} cache, eager"
    return how + (f", {path['backend']}" if path.get("backend") else "")


def bench_table(result: dict) -> Table:
    cfg = result["config"]
    table = Table(title=f"bench on {cfg['device']} ({result['hardware'].get('gpu') or result['hardware'].get('cpu', '')}, "
                        f"{result['hardware'].get('torch_threads')} threads): prompt {cfg['prompt_len']}, "
                        f"gen {cfg['gen_len']}, median of {cfg['repeats']}")
    for col in ("model", "path", "batch", "TTFT ms", "ms/token", "decode tok/s", "× first", "e2e p50 s", "e2e p95 s",
                "peak MiB", "disk MiB"):
        table.add_column(col, justify="left" if col in ("model", "path") else "right")
    for m, ratio in zip(result["models"], result["ratios_to_first"]):
        how = describe(m["decode_path"])
        for row in m["batches"]:
            r = ratio["batches"].get(str(row["batch_size"]), {})
            tok_s = (row["decode_tok_s"] or {}).get("median")
            table.add_row(
                Path(m["spec"]).name or m["spec"], how, str(row["batch_size"]),
                f"{row['ttft_s']['median'] * 1e3:.1f}", f"{row['tpot_s']['median'] * 1e3:.1f}" if row["tpot_s"] else "-",
                f"{tok_s:.1f}" if tok_s else "-", f"{r['decode_tok_s']:.2f}" if r.get("decode_tok_s") else "-",
                f"{row['e2e_s']['p50']:.3f}", f"{row['e2e_s']['p95']:.3f}", _mib(row["peak_memory_bytes"]),
                _mib(m["size_bytes"]),
            )
    return table
