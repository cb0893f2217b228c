"""CPU decode speed of SmolLM2-135M-Instruct tiers: fp32 source, int8 and int4 on PyTorch's packed kernels
(route a, `compress.quantize.cpu_kernels`), and GGUF files run by llama.cpp through llama-cpp-python (route b).

Every cell: a 64-token prompt, exactly 64 new tokens, greedy; decode tok/s = batch × 63 / (last − first token).
Rows are interleaved (one round visits every cell once) and each cell's figure is the median over rounds, so
load from the other users of this shared machine spreads over all rows alike; the load average is recorded.
`--gguf` cells run a file bare through `compress.serve.llamacpp_runner.LlamaCppModel.greedy` (one llama_decode per
step for the batch: what llama.cpp gives its own users); `--engine` cells run a file the way `compress serve`
serves a tier with `runtime: llamacpp`, minus HTTP: our `EngineCore` (scheduler) over `LlamaCppRunner` (our
sampler, incremental detokenizing), timed from the step that gave every sequence its first token to the last step.

    python benchmarks/cpu_decode.py --source DIR --int8 DIR --int4 NAME=DIR ... --gguf NAME=FILE ... \
        --engine NAME=FILE ... --threads 1,2 --batches 1,4 --rounds 3 --out benchmarks/results/cpu_decode.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone

import numpy as np
import torch

PROMPT, NEW = 64, 64


def lscpu_flags() -> dict:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    keep = [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "sse4")) or f in ("vnni", "bf16")]
    return {"model": info.get("Model name", "").strip(), "cpus": info.get("CPU(s)", "").strip(), "flags": keep,
            "all_flags": flags}


def prompt_ids(tokenizer, batch: int) -> torch.Tensor:
    from compress.bench.measure import prompts

    return prompts(tokenizer, batch, PROMPT)


class TorchRow:
    def __init__(self, name: str, model, tokenizer) -> None:
        from compress.bench.static_decode import StaticGreedy

        self.name, self.model, self.tok = name, model, tokenizer
        self.decoders = {}
        self._make = lambda b: StaticGreedy(model, b, PROMPT + NEW + 4, "cpu", graph=False)

    def run(self, batch: int) -> float:
        if batch not in self.decoders:
            self.decoders[batch] = self._make(batch)
            self.decoders[batch].run(prompt_ids(self.tok, batch), 4, lambda: None)  # warm
        (_, first, end), out = self.decoders[batch].run(prompt_ids(self.tok, batch), NEW, lambda: None)
        assert out.shape == (batch, NEW)
        return batch * (NEW - 1) / (end - first)


class LlamaCppRow:
    """A GGUF run bare by llama.cpp: the batch's prompts in one llama_decode, then one llama_decode per step for all
    rows (sequence ids 0..b-1 in one unified KV cache), greedy on the returned logits."""

    def __init__(self, name: str, path: str, tokenizer, max_batch: int) -> None:
        from compress.serve.llamacpp_runner import LlamaCppModel

        self.name, self.tok, self.warm = name, tokenizer, False
        self.model = LlamaCppModel(path, max_batch=max_batch, max_context=PROMPT + NEW + 4, threads=1)

    def run(self, batch: int, threads: int) -> float:
        self.model.set_threads(threads)
        ids = prompt_ids(self.tok, batch).tolist()
        if not self.warm:
            self.model.greedy(ids, 4)
            self.warm = True
        out, stamps = self.model.greedy(ids, NEW)
        assert len(out) == batch and all(len(o) == NEW for o in out)
        return batch * (NEW - 1) / (stamps[-1] - stamps[0])


class EngineRow(LlamaCppRow):
    """A GGUF served as a `runtime: llamacpp` tier is, minus HTTP: `EngineCore` over `LlamaCppRunner`."""

    def __init__(self, name: str, path: str, tokenizer, max_batch: int) -> None:
        from compress.serve.llamacpp_runner import LlamaCppRunner

        super().__init__(name, path, tokenizer, max_batch)
        self.runner = LlamaCppRunner(self.model, tokenizer)

    def _serve(self, ids: list[list[int]], new: int) -> tuple[float, float, list[list[int]]]:
        from compress.serve.engine_core import EngineCore
        from compress.serve.scheduler import Batcher
        from compress.serve.sequence import SamplingParams, Sequence

        core = EngineCore(self.runner, Batcher(max_batch=len(ids), max_wait_s=0.0),
                          prefill_budget=PROMPT * len(ids))
        seqs = [Sequence(f"r{i}", p, SamplingParams(max_tokens=new, ignore_eos=True), arrival=time.monotonic())
                for i, p in enumerate(ids)]
        for q in seqs:
            core.batcher.add(q)
        first = None
        while not all(q.finish_reason for q in seqs):
            core.step()
            if first is None and all(q.output_ids for q in seqs):
                first = time.perf_counter()
        return first, time.perf_counter(), [q.output_ids for q in seqs]

    def run(self, batch: int, threads: int) -> float:
        self.model.set_threads(threads)
        ids = prompt_ids(self.tok, batch).tolist()
        if not self.warm:
            self._serve(ids, 4)
            self.warm = True
        first, end, out = self._serve(ids, NEW)
        assert len(out) == batch and all(len(o) == NEW for o in out)
        assert sorted(self.runner.free) == list(range(self.model.max_batch))  # every slot handed back
        return batch * (NEW - 1) / (end - first)


def load_rows(args, batches: list[int]) -> list:
    from compress.models import load_causal_lm, load_tokenizer
    from compress.quantize.cpu_kernels import load_cpu_fast

    tok = load_tokenizer(args.source)
    rows = [TorchRow("fp32 source (transformers, static cache)", load_causal_lm(args.source, device="cpu",
                                                                              dtype=torch.float32), tok)]
    if args.int8:
        rows.append(TorchRow("int8-wo tier (packed kernel, bf16)", load_cpu_fast(args.int8), tok))
    for spec in args.int4:
        name, _, path = spec.partition("=")
        rows.append(TorchRow(f"{name} (int4 packed kernel, bf16)", load_cpu_fast(path), tok))
    for spec in args.gguf:
        name, _, path = spec.partition("=")
        rows.append(LlamaCppRow(name, path, tok, max(batches)))
    for spec in args.engine:
        name, _, path = spec.partition("=")
        rows.append(EngineRow(name, path, tok, max(batches)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="fp32/bf16 HF checkpoint dir of SmolLM2 (the source)")
    ap.add_argument("--int8", help="int8-wo artifact dir")
    ap.add_argument("--int4", action="append", default=[], help="NAME=artifact dir (GPTQ/RTN int4)")
    ap.add_argument("--gguf", action="append", default=[], help="NAME=file.gguf run bare by llama.cpp")
    ap.add_argument("--engine", action="append", default=[],
                    help="NAME=file.gguf served as a runtime-llamacpp tier: our engine core over llama.cpp")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = load_rows(args, batches)
    samples: dict[tuple, list[float]] = {}
    loads = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for t in threads:
            torch.set_num_threads(t)
            for row in rows:
                for b in batches:
                    if isinstance(row, LlamaCppRow):
                        tok_s = row.run(b, t)
                    else:
                        tok_s = row.run(b)
                    samples.setdefault((row.name, t, b), []).append(tok_s)
                    print(f"round {r} threads {t} batch {b} {row.name}: {tok_s:.1f} tok/s", flush=True)
        loads.append(os.getloadavg()[0])
    cells = [{"row": n, "threads": t, "batch": b, "decode_tok_s_median": round(statistics.median(v), 2),
              "samples": [round(x, 2) for x in v]} for (n, t, b), v in samples.items()]
    import transformers

    try:
        import llama_cpp

        llama_version = llama_cpp.__version__
    except ImportError:
        llama_version = None

    result = {
        "kind": "cpu_decode", "schema_version": 1, "model": "SmolLM2-135M-Instruct",
        "prompt_tokens": PROMPT, "new_tokens": NEW, "rounds": args.rounds, "statistic": "median over rounds",
        "started_at": started, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": lscpu_flags(), "load_average_1min": loads, "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "llama_cpp_python": llama_version, "compress_commit": _commit()},
        "inputs": {"source": args.source, "int8": args.int8, "int4": args.int4, "gguf": args.gguf,
                   "engine": args.engine},
        "cells": cells,
    }
    write_json(args.out, result)


def _commit() -> str | None:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.abspath(__file__)))
    return r.stdout.strip() or None


def write_json(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
