"""Timing one model's generation in this process: prefill (time to first token), decode, end to end.

Each step's wall-clock time is taken by a streamer that `generate` calls once with the prompt and then
once per new token, after synchronizing the GPU, so the gap between calls is the step's real latency.
Exactly `gen_len` tokens are generated (EOS is suppressed) from real text prompts of `prompt_len` tokens.
"""

from __future__ import annotations

import gc
import math
import resource
import statistics
import sys
import time

import torch
from transformers.generation.streamers import BaseStreamer

from compress.bench.fastpath import DecodePath, mark_compiled, to_eager
from compress.data import load_texts, tokenize_stream


class StepClock(BaseStreamer):
    """Records a timestamp at every `put` (first call: the prompt; then one per generated token)."""

    def __init__(self, sync) -> None:
        self.sync = sync
        self.times: list[float] = []

    def put(self, value) -> None:
        self.sync()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def prompts(tokenizer, batch_size: int, prompt_len: int, seed: int = 0) -> torch.Tensor:
    """`batch_size` different windows of real text (the built-in Python docs), `prompt_len` tokens each. [B, P]"""
    ids = tokenize_stream(tokenizer, load_texts("builtin"), max_tokens=prompt_len * batch_size + 997 * batch_size + 1)
    while len(ids) < prompt_len + 997 * batch_size:
        ids = torch.cat([ids, ids])
    return torch.stack([ids[i * 997:i * 997 + prompt_len] for i in range(batch_size)])


def peak_rss_bytes() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if sys.platform == "darwin" else kb * 1024  # Linux reports KiB, macOS bytes


def _summary(values: list[float]) -> dict:
    v = sorted(values)
    return {"median": statistics.median(v), "min": v[0], "max": v[-1],
            "stdev": statistics.stdev(v) if len(v) > 1 else 0.0}


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def generate_once(model, input_ids: torch.Tensor, gen_len: int, pad_id: int, sync) -> tuple[float, float, float, float]:
    """(start, first token, last token, end) of one `generate` call."""
    clock = StepClock(sync)
    sync()
    t0 = time.perf_counter()
    model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=gen_len,
                   min_new_tokens=gen_len, do_sample=False, pad_token_id=pad_id, streamer=clock)
    sync()
    end = time.perf_counter()
    return t0, clock.times[1], clock.times[-1], end  # times[0] is the prompt's put


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _graph_runner(model, path: DecodePath, input_ids: torch.Tensor, gen_len: int, sync):
    """The static-cache greedy loop for this batch size, its decode step captured as a CUDA graph when it can be.

    Decoder "graph" captures both the inductor-compiled step and the eager one and keeps whichever decodes
    faster here (inductor's fusion wins for dense bf16; some quantized kernels run slower under it); both
    times are recorded in `path.tried`. A step that cannot be compiled or captured is recorded in
    `path.fallback`; with no capturable step the loop runs eagerly."""
    from compress.bench.static_decode import StaticGreedy

    batch, max_len = input_ids.shape[0], input_ids.shape[1] + gen_len + 4
    kinds = (["compiled"] if path.compile else []) + ["eager"]
    if path.fallback is not None and not path.graphed:  # nothing captured at an earlier batch size
        kinds = []
    captured = {}
    for kind in kinds:
        decoder = StaticGreedy(model, batch, max_len, path.device, compile_step=kind == "compiled")
        try:
            decoder.capture(input_ids)
        except Exception as e:  # noqa: BLE001 - uncompilable or uncapturable (a host sync): try the next kind
            path.fallback = f"{kind} step: {_reason(e)}"
            if kind == "compiled":
                path.compile = False
                torch._dynamo.reset()
            continue
        decoder.run(input_ids, gen_len, sync)  # warm
        (_, first, end), _ = decoder.run(input_ids, gen_len, sync)
        captured[kind] = (decoder, (end - first) / (gen_len - 1))
        path.tried[f"b{batch} {kind} graph ms/token"] = round(captured[kind][1] * 1e3, 4)
    if captured:
        kind = min(captured, key=lambda k: captured[k][1])
        decoder = captured[kind][0]
        path.graph_step = kind
    else:
        decoder = StaticGreedy(model, batch, max_len, path.device, graph=False)
    path.graphed = decoder.graph is not None
    path.compiled = path.graphed and path.graph_step == "compiled"
    captured.clear()  # free the slower candidate, so peak memory is the kept path's alone
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()

    def run_once() -> tuple[float, float, float, float]:
        (start, first, end), _ = decoder.run(input_ids, gen_len, sync)
        return start, first, end, end  # the loop syncs after its last token only

    return run_once


def measure_batch(model, path: DecodePath, tokenizer, batch_size: int, prompt_len: int, gen_len: int,
                  warmup: int, repeats: int) -> dict:
    device = path.device
    on_cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    input_ids = prompts(tokenizer, batch_size, prompt_len).to(device)
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if path.decoder.startswith("graph"):
        run_once = _graph_runner(model, path, input_ids, gen_len, sync)
        for _ in range(warmup):
            run_once()
    else:
        run_once = lambda: generate_once(model, input_ids, gen_len, pad_id, sync)  # noqa: E731
        # A compiled decode step is built (and CUDA graphs recorded) on its first run: never time that one.
        for _ in range(max(warmup, 1) if path.compile else warmup):
            try:
                run_once()
            except Exception as e:  # noqa: BLE001 - a compile failure must not sink the benchmark: go eager
                if not path.compile:
                    raise
                to_eager(model, path, _reason(e))
                run_once()
        mark_compiled(model, path)
    ttft, tpot, tok_s, e2e = [], [], [], []
    for _ in range(repeats):
        start, first, last, end = run_once()
        ttft.append(first - start)
        e2e.append(end - start)
        if gen_len > 1:
            per_token = (last - first) / (gen_len - 1)
            tpot.append(per_token)
            tok_s.append(batch_size / per_token)
    row = {
        "batch_size": batch_size, "prompt_len": prompt_len, "gen_len": gen_len, "warmup": warmup, "repeats": repeats,
        "ttft_s": _summary(ttft),
        "tpot_s": _summary(tpot) if tpot else None,
        "decode_tok_s": _summary(tok_s) if tok_s else None,
        "e2e_s": {"p50": _percentile(e2e, 50), "p95": _percentile(e2e, 95), **_summary(e2e)},
        "total_tok_s": batch_size * gen_len / statistics.median(e2e),
    }
    if on_cuda:
        row["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        row["peak_memory_kind"] = "cuda_max_memory_allocated"
    else:
        row["peak_memory_bytes"] = peak_rss_bytes()
        row["peak_memory_kind"] = "cpu_peak_rss_process"  # high-water mark of this model's own process
    return row
