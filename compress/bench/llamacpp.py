"""`compress bench --runtime llamacpp`: a GGUF (a tier's `compress export --format gguf`) timed through llama.cpp
the way the torch path times a checkpoint, so both land in the same bench JSON and the manifest's cost.

Per batch size: `batch` different `prompt_len`-token windows of the same real text as the torch path
(tokenized by llama.cpp's own tokenizer from the GGUF), prefilled in one `llama_decode`, then exactly `gen_len`
greedy tokens (no end-of-generation check), one `llama_decode` per step for the whole batch
(`LlamaCppModel.greedy`, the step our serving engine's `LlamaCppRunner` makes). TTFT = start to the first
token, time per output token = (last − first) / (gen_len − 1); peak memory is this process's RSS.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from compress.errors import CompressError


class _Tokens:
    """What `compress.bench.measure.prompts` needs of a tokenizer, answered by llama.cpp's."""

    def __init__(self, model) -> None:
        self.model, self.eos_token_id = model, model.eos_id()

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self.model.tokenize(text)}


def check_runtime(what: str = "--runtime llamacpp") -> str:
    """llama-cpp-python's version, or one CompressError line saying how to get it (the runner's check)."""
    from compress.serve.llamacpp_runner import _llama_cpp

    return _llama_cpp(what).__version__


def measure_gguf(spec: str, cfg) -> dict:
    """The bench entry of one GGUF file (same fields as `compress.bench.run.measure_model`'s)."""
    from compress.bench.measure import peak_rss_bytes, prompts
    from compress.serve.llamacpp_runner import LlamaCppModel, default_threads

    path = Path(spec)
    if path.suffix.lower() != ".gguf" or not path.is_file():
        raise CompressError(f"{spec}: --runtime llamacpp benches .gguf files (`compress export ART --format gguf`)")
    version = check_runtime()
    threads = cfg.threads or default_threads()
    t0 = time.perf_counter()
    model = LlamaCppModel(path, max_batch=max(cfg.batch_sizes), max_context=cfg.prompt_len + cfg.gen_len + 4,
                          threads=threads)
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss_bytes()
    tok = _Tokens(model)
    rows = [_measure_batch(model, prompts(tok, b, cfg.prompt_len).tolist(), cfg) for b in cfg.batch_sizes]
    return {
        "spec": spec, "kind": "gguf", "path": str(path.resolve()), "method": "gguf", "runtime": "llamacpp",
        "artifact": _artifact_of(path),
        "size_bytes": path.stat().st_size, "params": None, "load_s": round(load_s, 3),
        "peak_rss_after_load_bytes": rss_after_load, "torch_threads": threads,
        "decode_path": {"runtime": "llamacpp", "device": "cpu", "loader": "llama-cpp-python " + version,
                        "decoder": "llama_decode per step, greedy", "threads": threads, "cache": "unified KV"},
        "batches": rows,
    }


def _artifact_of(gguf: Path) -> str | None:
    """The artifact folder a GGUF sits in (a recipe's tiers/<name>/model.gguf), so the report puts its speed beside
    that tier's quality; None for a file elsewhere."""
    parent = gguf.resolve().parent
    return str(parent) if (parent / "config.json").is_file() else None


def _measure_batch(model, ids: list[list[int]], cfg) -> dict:
    from compress.bench.measure import _percentile, _summary, peak_rss_bytes

    batch, gen = len(ids), cfg.gen_len
    for _ in range(cfg.warmup):
        model.greedy(ids, gen)
    ttft, tpot, tok_s, e2e = [], [], [], []
    for _ in range(cfg.repeats):
        start = time.perf_counter()
        out, stamps = model.greedy(ids, gen)
        assert all(len(o) == gen for o in out)
        ttft.append(stamps[0] - start)
        e2e.append(stamps[-1] - start)
        per_token = (stamps[-1] - stamps[0]) / (gen - 1)
        tpot.append(per_token)
        tok_s.append(batch / per_token)
    return {
        "batch_size": batch, "prompt_len": len(ids[0]), "gen_len": gen, "warmup": cfg.warmup,
        "repeats": cfg.repeats, "ttft_s": _summary(ttft), "tpot_s": _summary(tpot), "decode_tok_s": _summary(tok_s),
        "e2e_s": {"p50": _percentile(e2e, 50), "p95": _percentile(e2e, 95), **_summary(e2e)},
        "total_tok_s": batch * gen / statistics.median(e2e),
        "peak_memory_bytes": peak_rss_bytes(), "peak_memory_kind": "cpu_peak_rss_process",
    }
