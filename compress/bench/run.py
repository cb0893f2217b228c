"""`bench(MODELS, BenchConfig)`: latency, throughput and memory of one or more models, with ratios to the first.

Each model runs in a fresh subprocess (`compress.bench.worker`) unless `isolate=False`, so one model's
peak memory and compiled graphs do not leak into the next. Batch sizes run in increasing order; every
figure is a median over `repeats` runs after `warmup` runs, with min/max/stdev as the spread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compress import runtime
from compress.artifacts import now_iso
from compress.errors import CompressError
from compress.formats import validation_message
from compress.models import resolve

SCHEMA_VERSION = 1
BENCH_FILE = "bench.json"


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_sizes: list[int] = [1, 8, 32]
    prompt_len: int = Field(128, ge=1)
    gen_len: int = Field(64, ge=2)  # ≥ 2: time per output token needs two decode stamps
    device: str | None = None  # None: cuda when available
    repeats: int = Field(3, ge=1)
    warmup: int = Field(1, ge=0)
    threads: int | None = Field(None, ge=1)  # torch CPU threads (None: torch's default)
    decoder: Literal["auto", "generate", "compile", "graph", "graph-eager"] = "auto"  # compress.bench.fastpath
    isolate: bool = True  # one subprocess per model
    runtime: Literal["torch", "llamacpp"] = "torch"  # llamacpp: .gguf files through llama.cpp (compress.bench.llamacpp)

    @field_validator("batch_sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError("batch sizes must be positive integers")
        return sorted(set(v))


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CompressError(f"--batch-sizes must be comma-separated positive integers, got {text!r}") from None
    if not sizes or any(b < 1 for b in sizes):
        raise CompressError(f"--batch-sizes must be comma-separated positive integers, got {text!r}")
    return sizes


def make_bench_config(**kwargs) -> BenchConfig:
    from compress.bench.fastpath import check_decoder, resolve_decoder

    check_decoder(kwargs.get("decoder", "auto"))
    try:
        cfg = BenchConfig(**kwargs)
    except ValidationError as e:
        raise CompressError(f"invalid bench option {validation_message(e)}") from e
    device = cfg.device or runtime.default_device()
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise CompressError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CompressError("--device cuda: no CUDA GPU is available here")
    resolve_decoder(cfg.decoder, device)  # e.g. "graph" on a CPU: one line, before any model loads
    if cfg.runtime == "llamacpp":
        from compress.bench.llamacpp import check_runtime

        if device != "cpu" or cfg.decoder != "auto":
            raise CompressError("--runtime llamacpp runs llama.cpp's own CPU decode loop: use --device cpu and no "
                                "--decoder")
        check_runtime()
    cfg.device = device
    return cfg


def measure_model(spec: str, cfg: BenchConfig, progress: bool = False) -> dict:
    """Load one model on its fastest decode path and time every batch size (in this process)."""
    if cfg.runtime == "llamacpp":
        from compress.bench.llamacpp import measure_gguf

        return measure_gguf(spec, cfg)
    import torch

    from compress.bench.fastpath import load_for_decode, size_on_disk
    from compress.bench.measure import measure_batch, peak_rss_bytes
    from compress.models import checkpoint_dir, load_tokenizer, quant_method

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ref = resolve(spec)
    checkpoint_dir(ref)  # a GGUF converts (once, cached) before the load is timed
    t0 = time.perf_counter()
    model, path = load_for_decode(ref, cfg.device, cfg.decoder)
    load_s = time.perf_counter() - t0
    tok = load_tokenizer(ref)
    rss_after_load = peak_rss_bytes()
    rows = []
    for b in cfg.batch_sizes:
        if progress:
            print(f"  {spec}: batch {b}", file=sys.stderr, flush=True)
        rows.append(measure_batch(model, path, tok, b, cfg.prompt_len, cfg.gen_len, cfg.warmup, cfg.repeats))
    return {
        "spec": spec, "kind": ref.kind, "path": ref.path, "method": quant_method(ref) if ref.is_local else None,
        "size_bytes": size_on_disk(ref), "params": sum(p.numel() for p in model.parameters()),
        "load_s": round(load_s, 3), "peak_rss_after_load_bytes": rss_after_load,
        "torch_threads": torch.get_num_threads(), "decode_path": path.to_dict(), "batches": rows,
    }


def _run_isolated(spec: str, cfg: BenchConfig, progress: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="compress-bench-") as tmp:
        req, res = os.path.join(tmp, "request.json"), os.path.join(tmp, "result.json")
        with open(req, "w") as f:
            json.dump({"model": spec, "config": cfg.model_dump(), "progress": progress}, f)
        proc = subprocess.run([sys.executable, "-m", "compress.bench.worker", req, res],
                              stdout=subprocess.DEVNULL if not progress else None,
                              stderr=subprocess.PIPE, text=True)
        if os.path.exists(res):
            entry = json.loads(open(res).read())
            if "error" in entry:
                raise CompressError(f"bench of {spec}: {entry['error']}")
            if proc.returncode == 0:
                return entry
        tail = [line for line in (proc.stderr or "").strip().splitlines() if line.strip()]
        raise CompressError(f"bench of {spec} failed (exit {proc.returncode}): {tail[-1] if tail else 'no output'}")


# Ratios to the first model, per batch size: >1 means "more" (faster for tok/s, slower for latencies).
_RATIO_FIELDS = {"decode_tok_s": "median", "tpot_s": "median", "ttft_s": "median", "e2e_s": "p50"}


def ratios(models: list[dict]) -> list[dict]:
    ref = models[0]
    ref_rows = {r["batch_size"]: r for r in ref["batches"]}
    out = []
    for m in models:
        entry = {"spec": m["spec"], "size": _div(m["size_bytes"], ref["size_bytes"]), "batches": {}}
        for row in m["batches"]:
            base = ref_rows.get(row["batch_size"])
            if base is None:
                continue
            r = {k: _div((row[k] or {}).get(stat), (base[k] or {}).get(stat)) for k, stat in _RATIO_FIELDS.items()}
            r["peak_memory"] = _div(row["peak_memory_bytes"], base["peak_memory_bytes"])
            entry["batches"][str(row["batch_size"])] = r
        out.append(entry)
    return out


def _div(a, b):
    return a / b if a is not None and b else None


def bench(models: list[str], cfg: BenchConfig, progress: bool = True) -> dict:
    if not models:
        raise CompressError("give at least one MODEL to benchmark")
    for spec in models:  # fail on a bad path before any model is loaded
        if resolve(spec).kind != "gguf" and cfg.runtime == "llamacpp":
            raise CompressError(f"{spec}: --runtime llamacpp benches .gguf files (make one with "
                                "`compress export ART --format gguf --output FILE.gguf`)")
    t0 = time.perf_counter()
    entries = []
    for spec in models:
        if progress:
            print(f"bench {spec} on {cfg.device} (batch sizes {cfg.batch_sizes})", file=sys.stderr, flush=True)
        entries.append(_run_isolated(spec, cfg, progress) if cfg.isolate else measure_model(spec, cfg, progress))
    hw = runtime.hardware()
    hw["torch_threads"] = entries[0]["torch_threads"]
    return {
        "schema_version": SCHEMA_VERSION, "kind": "bench", "config": cfg.model_dump(), "models": entries,
        "ratios_to_first": ratios(entries), "versions": runtime.library_versions(), "hardware": hw,
        "created_at": now_iso(), "time_s": round(time.perf_counter() - t0, 2),
    }


def load_bench(path) -> dict:
    from compress.formats import read_versioned_json

    return read_versioned_json(path, "bench", "bench result", SCHEMA_VERSION)
