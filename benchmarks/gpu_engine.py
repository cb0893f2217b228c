"""Issue 20 on the GPU: the serving engine's core against the static CUDA-graph loop and transformers' continuous
batching, side by side in one process, on one GPU.

    python benchmarks/gpu_engine.py core --shape smollm2-shape --out $OUT/engine_core_smollm2.json
    python benchmarks/gpu_engine.py core --shape llama1b --requests 1,32 --out $OUT/engine_core_llama1b.json
    python benchmarks/gpu_engine.py quant --shape smollm2-shape --out $OUT/engine_quant_smollm2.json

Models have random bf16 weights in the given shape (benchmarks/gpu_bench.py SHAPES): speed does not depend on
the weights. Prompts are random ids, `--prompt-len` tokens, and every request generates exactly `--gen` tokens
(greedy; the engine with `ignore_eos`). tok/s = generated tokens / wall time from the first prefill to the last
token, the static loop measured the same way (`compress.bench.static_decode.StaticGreedy.run`), median of
`--repeats`. Rows (`core`):
- `engine`: `compress.serve` EngineCore + ModelRunner (slot KV cache, graphs per bucket), all requests
  added before the first step.
- `static_eager`: StaticGreedy, the eager step captured as one CUDA graph (the issue's first baseline).
- `static_compiled`: StaticGreedy with the step compiled by inductor before capture (the goal after that).
- `hf_cb`: transformers' `generate_batch` (`paged|sdpa`, CUDA graphs forced on).
- `staggered`: the engine with Poisson arrivals and prompt lengths drawn from 16..512; TTFT, ITL and the longest
  step with a prefill in it (the stall a running stream sees) against the median decode-only step.
`quant`: the engine and the static loop on GPTQ int4 (round-to-nearest packed as GPTQ v1, loaded with Marlin)
and torchao int8 weight-only, against bf16, measured in the same run. Results are written after every row.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from gpu_bench import build_random, pack_gptq_rtn  # noqa: E402

from compress.bench.static_decode import StaticGreedy  # noqa: E402
from compress.serve.batcher import Batcher, EngineCore, SamplingParams, Sequence  # noqa: E402
from compress.serve.model_runner import ModelRunner  # noqa: E402


DEVICE = "cuda"  # --device cpu: a dry run of the script's logic on a CPU (no graphs, no static loop, no hf_cb)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def load(path: Path, attn: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation=attn).to(DEVICE).eval()


def random_prompts(n: int, length: int, seed: int = 0, lengths: list[int] | None = None) -> list[list[int]]:
    g = random.Random(seed)
    return [[g.randrange(1, 512) for _ in range(lengths[i] if lengths else length)] for i in range(n)]


class Engine:
    """One ModelRunner (graphs captured once) reused for every request count."""

    def __init__(self, model, tok, max_batch: int, max_len: int, budget: int):
        t0 = time.perf_counter()
        self.runner = ModelRunner(model, tok, DEVICE, max_batch=max_batch, max_len=max_len)
        self.runner.warmup()
        sync()
        self.capture_s = time.perf_counter() - t0
        self.budget, self.max_batch = budget, max_batch

    def run(self, prompts: list[list[int]], gen: int, arrivals: list[float] | None = None) -> dict:
        core = EngineCore(self.runner, Batcher(self.max_batch, 0.0, 100000), prefill_budget=self.budget)
        seqs = [Sequence(str(i), p, SamplingParams(max_tokens=gen, ignore_eos=True), 0.0) for i, p in enumerate(prompts)]
        arrivals = arrivals or [0.0] * len(seqs)
        pending = sorted(range(len(seqs)), key=lambda i: arrivals[i])
        stamps: dict[str, list[float]] = {s.id: [] for s in seqs}
        steps = []  # (seconds, decode batch, prefill tokens)
        sync()
        start = time.perf_counter()
        while pending or core.batcher.has_work():
            now = time.perf_counter() - start
            while pending and arrivals[pending[0]] <= now:
                s = seqs[pending.pop(0)]
                s.arrival = time.perf_counter()
                core.batcher.add(s)
            if not core.batcher.has_work():
                time.sleep(max(0.0, arrivals[pending[0]] - now))
                continue
            t0 = time.perf_counter()
            events = core.step()
            t1 = time.perf_counter()
            steps.append((t1 - t0, core.last_batch_size, core.last_prefill_tokens))
            for ev in events:
                if ev.new_tokens:
                    stamps[ev.seq.id].append(t1)
        sync()
        wall = time.perf_counter() - start
        tokens = sum(len(s.output_ids) for s in seqs)
        assert all(len(s.output_ids) == gen for s in seqs), "every request must generate exactly gen tokens"
        ttft = [stamps[s.id][0] - s.arrival for s in seqs]
        itl = [b - a for s in seqs for a, b in zip(stamps[s.id], stamps[s.id][1:])]
        decode_only = [t for t, b, p in steps if p == 0 and b > 0]
        with_prefill = [t for t, b, p in steps if p > 0 and b > 0]
        return {"requests": len(seqs), "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall,
                "ttft_p50_s": statistics.median(ttft), "ttft_max_s": max(ttft),
                "itl_p50_ms": 1e3 * statistics.median(itl) if itl else None,
                "step_decode_only_p50_ms": 1e3 * statistics.median(decode_only) if decode_only else None,
                "step_with_prefill_max_ms": 1e3 * max(with_prefill) if with_prefill else None,
                "steps": len(steps)}


def static_loop(model, n: int, prompt_len: int, gen: int, compiled: bool, repeats: int) -> dict:
    prompt = torch.tensor(random_prompts(n, prompt_len), device="cuda")
    t0 = time.perf_counter()
    loop = StaticGreedy(model, n, prompt_len + gen, "cuda", graph=True, compile_step=compiled)
    loop.capture(prompt)
    setup = time.perf_counter() - t0
    rates = []
    for _ in range(repeats):
        (start, _first, end), out = loop.run(prompt, gen, sync)
        rates.append(out.numel() / (end - start))
    del loop
    torch.cuda.empty_cache()
    return {"tok_s": statistics.median(rates), "runs": rates, "setup_s": setup}


def hf_cb(model, n: int, prompt_len: int, gen: int, repeats: int) -> dict:
    from transformers import ContinuousBatchingConfig, GenerationConfig

    prompts = random_prompts(n, prompt_len)
    gc = GenerationConfig(max_new_tokens=gen, min_new_tokens=gen, do_sample=False, eos_token_id=0, pad_token_id=0)
    cb = ContinuousBatchingConfig(use_cuda_graph=True)
    model.generate_batch(inputs=prompts[:2], generation_config=gc, continuous_batching_config=cb)  # warm-up
    rates = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = model.generate_batch(inputs=prompts, generation_config=gc, continuous_batching_config=cb)
        sync()
        tokens = sum(len(r.generated_tokens) for r in out.values())
        rates.append(tokens / (time.perf_counter() - t0))
    return {"tok_s": statistics.median(rates), "runs": rates, "tokens_last": tokens}


def engine_rates(engine: Engine, n: int, prompt_len: int, gen: int, repeats: int) -> dict:
    runs = [engine.run(random_prompts(n, prompt_len, seed=r), gen) for r in range(repeats)]
    best = sorted(runs, key=lambda r: r["tok_s"])[len(runs) // 2]
    return {**best, "runs": [r["tok_s"] for r in runs]}


def meta(args) -> dict:
    import transformers

    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else platform.processor(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "command": "python " + " ".join(sys.argv), "shape": args.shape, "prompt_len": args.prompt_len,
            "gen": args.gen, "prefill_budget": args.budget}


def save(out: str, result: dict) -> None:
    Path(out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["rows"][-1] if result["rows"] else {}), flush=True)


def model_dir(args) -> Path:
    if DEVICE == "cuda":
        return build_random(args.shape, Path(args.work) / args.shape)
    from compress.testing import build_tiny_llama  # the CPU dry run: a tiny random Llama

    path = Path(args.work) / "tiny"
    return path if (path / "config.json").is_file() else build_tiny_llama(path, seed=0)


def core(args) -> None:
    path = model_dir(args)
    ns = [int(x) for x in args.requests.split(",")]
    result = {**meta(args), "rows": []}
    from compress.models import load_tokenizer

    tok = load_tokenizer(path)
    base = load(path)
    engine = Engine(load(path), tok, max(ns), args.prompt_len + args.gen + 512, args.budget)
    result["engine_capture_s"] = engine.capture_s
    result["graphs"] = len(engine.runner.graphs)
    for n in ns:
        row = {"requests": n, "engine": engine_rates(engine, n, args.prompt_len, args.gen, args.repeats)}
        if DEVICE == "cuda":
            row["static_eager"] = static_loop(base, n, args.prompt_len, args.gen, False, args.repeats)
            row["ratio_engine_to_static_eager"] = row["engine"]["tok_s"] / row["static_eager"]["tok_s"]
        result["rows"].append(row)
        save(args.out, result)
    if "hf_cb" in args.rows and DEVICE == "cuda":
        cbm = load(path, attn="paged|sdpa")
        for row in result["rows"]:
            if row["requests"] > 1:
                row["hf_cb"] = hf_cb(cbm, row["requests"], args.prompt_len, args.gen, args.repeats)
                if row["hf_cb"]["tok_s"]:
                    row["ratio_engine_to_hf_cb"] = row["engine"]["tok_s"] / row["hf_cb"]["tok_s"]
                save(args.out, result)
        del cbm
    if "staggered" in args.rows:
        g = random.Random(1)
        n = 64
        lengths = [g.randint(16, 512) for _ in range(n)]
        t, arrivals = 0.0, []
        for _ in range(n):
            arrivals.append(t)
            t += g.expovariate(args.rate)
        result["staggered"] = {"rate_req_s": args.rate, "prompt_lengths": [min(lengths), max(lengths)],
                               **engine.run(random_prompts(n, 0, seed=5, lengths=lengths), args.gen, arrivals)}
        result["mixed_all_at_once"] = engine.run(random_prompts(n, 0, seed=6, lengths=lengths), args.gen)
        save(args.out, result)
    if "static_compiled" in args.rows and DEVICE == "cuda":
        for row in result["rows"]:
            try:
                row["static_compiled"] = static_loop(base, row["requests"], args.prompt_len, args.gen, True, args.repeats)
                row["ratio_engine_to_static_compiled"] = row["engine"]["tok_s"] / row["static_compiled"]["tok_s"]
            except Exception as e:  # noqa: BLE001 - record, keep the other rows
                row["static_compiled"] = {"error": f"{type(e).__name__}: {e}"[:300]}
            save(args.out, result)


def quant(args) -> None:
    from compress.models import load_tokenizer

    src = build_random(args.shape, Path(args.work) / args.shape)
    tok = load_tokenizer(src)
    ns = [int(x) for x in args.requests.split(",")]
    result = {**meta(args), "rows": []}
    tiers = {"bf16": lambda: load(src)}
    group = 64 if args.shape == "smollm2-shape" else 128  # Marlin needs K % group == 0 (576 = 9 x 64)

    def gptq():
        from gptqmodel import BACKEND, GPTQModel

        dst = pack_gptq_rtn(src, Path(args.work) / f"{args.shape}-gptq-g{group}", group_size=group)
        return GPTQModel.load(str(dst), device="cuda:0", backend=BACKEND.GPTQ_MARLIN).model.eval()

    def int8wo():
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        m = load(src)
        quantize_(m, Int8WeightOnlyConfig())
        return m

    tiers.update({"gptq_int4_marlin": gptq, "int8_wo_torchao": int8wo})
    for name, make in tiers.items():
        try:
            model = make()
            engine = Engine(model, tok, max(ns), args.prompt_len + args.gen + 512, args.budget)
            row = {"tier": name, "graphed": engine.runner.graphed, "graph_fallback": engine.runner.graph_fallback}
            for n in ns:
                row[f"engine_{n}"] = engine_rates(engine, n, args.prompt_len, args.gen, args.repeats)["tok_s"]
            del engine, model
        except Exception as e:  # noqa: BLE001 - record, keep the other tiers
            row = {"tier": name, "error": f"{type(e).__name__}: {e}"[:400]}
        torch.cuda.empty_cache()
        result["rows"].append(row)
        save(args.out, result)
    bf16 = result["rows"][0]
    for row in result["rows"][1:]:
        for n in ns:
            if f"engine_{n}" in row:
                row[f"ratio_to_bf16_{n}"] = row[f"engine_{n}"] / bf16[f"engine_{n}"]
    save(args.out, result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("core", "quant"))
    ap.add_argument("--shape", default="smollm2-shape")
    ap.add_argument("--requests", default="1,32,128")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=int, default=8192, help="engine prefill tokens per step")
    ap.add_argument("--rate", type=float, default=100.0, help="staggered: arrivals per second")
    ap.add_argument("--rows", default="hf_cb,staggered,static_compiled")
    ap.add_argument("--work", default="/tmp/gpu_engine")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.manual_seed(0)
    {"core": core, "quant": quant}[args.what](args)  # no global inference_mode: transformers' CB thread mutates its tensors


if __name__ == "__main__":
    main()
