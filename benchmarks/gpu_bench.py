"""GPU decode benchmark: bf16 vs int8 (bitsandbytes), int8 weight-only (torchao) and GPTQ int4, through `compress bench`.

    python benchmarks/gpu_bench.py --out $OUT/gpu_bench_tinyllama1b.json              # the ≥1B model
    python benchmarks/gpu_bench.py --model llama1b --out $OUT/gpu_bench_llama1b.json  # 128k-vocab 1B
    python benchmarks/gpu_bench.py --model smollm2 --smollm2 /tmp/m/model.gguf --out $OUT/gpu_bench_smollm2.json

Models:
- `tinyllama1b` (default): a TinyLlama-1.1B-shaped model (hidden 2048, 22 layers, 32 heads / 4 KV heads,
  intermediate 5632, vocab 32000, untied; 1.10B parameters) with RANDOM weights (seed 0): speed only.
- `llama1b`: a Llama-3.2-1B-shaped model (hidden 2048, 16 layers, 32 heads / 8 KV heads, intermediate 8192,
  vocab 128256, tied embeddings; 1.24B parameters), random weights. Its bf16 lm_head is 0.53 GB of the
  1.0 GB an int4 step reads, which caps int4's batch-1 gain near 2.4x whatever the kernel.
- `smollm2`: SmolLM2-135M-Instruct from its GGUF (dequantized to bf16).
Tiers are made on the GPU: int8 and int8-wo through `compress.quantize` (transformers + bitsandbytes / torchao);
GPTQ int4 g128 sym is round-to-nearest packed in the GPTQ v1 layout by `pack_gptq_rtn` below (no calibration:
speed does not depend on how the int4 values were chosen, and gptqmodel's own packer needs a 50 s JIT build).
The packed checkpoint is checked by reloading it through gptqmodel and comparing logits with the bf16 model.
Each model is benchmarked in its own process on the decode path `compress.bench.fastpath` picks (static KV
cache, the decode step captured as one CUDA graph; GPTQ through GPTQModel.load with the Marlin kernels;
bitsandbytes cannot be captured and runs the same loop eagerly). Ratios are to bf16, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

_IDS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
SHAPES = {
    # Llama-3.2-1B: 1.24B parameters, a quarter of them in the tied 128k-vocab embedding / lm_head (kept bf16)
    "llama1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                    max_position_embeddings=4096, **_IDS),
    # SmolLM2-135M's shape (its real weights are in the GGUF; speed does not depend on them)
    "smollm2-shape": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
                          max_position_embeddings=8192, **_IDS),
    # Llama-2-7B: 6.74B parameters, 32k vocab; its linears are large enough for Marlin to be bandwidth-bound
    "llama2-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      intermediate_size=11008, vocab_size=32000, tie_word_embeddings=False, rope_theta=10000.0,
                      max_position_embeddings=4096, **_IDS),
    # TinyLlama-1.1B: 1.10B parameters, 32k vocab, untied: 88% of the weights are in the quantized linears
    "tinyllama1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                        intermediate_size=5632, vocab_size=32000, tie_word_embeddings=False, rope_theta=10000.0,
                        max_position_embeddings=2048, **_IDS),
}
QUANTIZED_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build_random(shape: str, path: Path) -> Path:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from compress.testing import train_tokenizer

    if (path / "config.json").is_file():
        return path
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape])).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model.save_pretrained(path)
    train_tokenizer(512).save_pretrained(path)  # ids < 512 ⊂ the 128k vocab: prompts only need valid ids
    del model
    torch.cuda.empty_cache()
    return path


@torch.no_grad()
def pack_gptq_rtn(src: Path, out: Path, group_size: int = 128, bits: int = 4, device: str = "cuda") -> Path:
    """Round-to-nearest, symmetric, per-group int4 of every decoder Linear, written as a GPTQ v1 checkpoint."""
    import shutil

    from safetensors.torch import load_file, save_file

    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    state = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(str(f), device=device))
    packed = {}
    maxq = 2**bits - 1
    shifts = torch.arange(0, 32, bits, device=device, dtype=torch.int32)  # 8 nibbles per int32
    for name, w in state.items():
        if not (name.endswith(".weight") and any(f".{p}." in name for p in QUANTIZED_LINEARS)):
            packed[name] = w.contiguous()
            continue
        prefix = name[: -len(".weight")]
        n, k = w.shape
        wg = w.float().reshape(n, k // group_size, group_size)  # [N, G, g]
        scale = (wg.abs().amax(dim=2) / ((maxq + 1) // 2 - 0.5)).clamp(min=1e-8)  # [N, G]; maps max|w| to ±7.5
        zero = (maxq + 1) // 2  # 8: symmetric grid 0..15 around 8
        q = torch.clamp(torch.round(wg / scale[..., None]) + zero, 0, maxq).to(torch.int32).reshape(n, k)  # [N, K]
        qt = q.t().contiguous().reshape(k // 8, 8, n)  # [K/8, 8, N]
        packed[f"{prefix}.qweight"] = (qt << shifts[None, :, None]).sum(dim=1, dtype=torch.int32)  # [K/8, N]
        # GPTQ v1 stores zero - 1 (the historical off-by-one that gptqmodel undoes when loading v1).
        z = torch.full((k // group_size, n // 8, 8), zero - 1, dtype=torch.int32, device=device)
        packed[f"{prefix}.qzeros"] = (z << shifts[None, None, :]).sum(dim=2, dtype=torch.int32)  # [G, N/8]
        packed[f"{prefix}.scales"] = scale.t().contiguous().to(torch.float16)  # [G, N]
        packed[f"{prefix}.g_idx"] = torch.arange(k, device=device, dtype=torch.int32) // group_size
    save_file({k: v.cpu() for k, v in packed.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": False,
                                  "sym": True, "checkpoint_format": "gptq", "pack_dtype": "int32"}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json" and f.is_file():
            shutil.copy(f, out / f.name)
    return out


@torch.no_grad()
def logit_check(ref_dir: Path, quant_dir: Path) -> dict:
    """Relative error of the GPTQ reload's logits against bf16 on one real-text prompt (catches a bad packing)."""
    from gptqmodel import BACKEND, GPTQModel
    from transformers import AutoModelForCausalLM

    from compress.bench.measure import prompts
    from compress.models import load_tokenizer

    ids = prompts(load_tokenizer(str(ref_dir)), 1, 64).cuda()
    ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.bfloat16, device_map="cuda")
    a = ref(ids).logits.float()
    del ref
    q = GPTQModel.load(str(quant_dir), device="cuda:0", backend=BACKEND.GPTQ_TORCH)
    b = q.model(ids).logits.float()
    del q
    torch.cuda.empty_cache()
    return {"rel_l2_logit_error": float((a - b).norm() / a.norm()),
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", choices=(*SHAPES, "smollm2"), default="tinyllama1b")
    ap.add_argument("--smollm2", help="SmolLM2-135M-Instruct .gguf path (for --model smollm2)")
    ap.add_argument("--tiers", default="bf16,int8,int8-wo,gptq")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--work", default="/tmp/gpu_bench")
    ap.add_argument("--skip-check", action="store_true", help="skip the GPTQ reload's logit check (large models)")
    ap.add_argument("--decoder", default="auto", help="compress bench --decoder (auto = graph on CUDA)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    from compress.bench import bench, make_bench_config, parse_batch_sizes
    from compress.evaluate.results import write_json_atomic
    from compress.models import checkpoint_dir, resolve
    from compress.quantize import make_config, quantize

    t_start = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    if args.model in SHAPES:
        base = build_random(args.model, work / f"{args.model}-bf16")
    else:
        if not args.smollm2:
            raise SystemExit("--model smollm2 needs --smollm2 PATH.gguf")
        base = Path(checkpoint_dir(resolve(args.smollm2)))
    timings["build_or_convert_s"] = round(time.perf_counter() - t0, 1)
    tiers = args.tiers.split(",")
    models, checks = {}, {}
    for tier in tiers:
        t0 = time.perf_counter()
        if tier == "bf16":
            models[tier] = str(base)
        elif tier in ("int8", "int8-wo"):
            dest = work / f"{args.model}-{tier}"
            if not (dest / "compress.json").is_file():
                quantize(str(base), make_config(method=tier), dest, overwrite=True, device="cuda", measure_quality=False)
            models[tier] = str(dest)
        elif tier == "gptq":
            dest = pack_gptq_rtn(base, work / f"{args.model}-gptq-rtn-g{args.group_size}", args.group_size)
            if not args.skip_check:
                checks["gptq"] = logit_check(base, dest)
            models[tier] = str(dest)
        else:
            raise SystemExit(f"unknown tier {tier}")
        timings[f"make_{tier}_s"] = round(time.perf_counter() - t0, 1)
        print(f"[{time.perf_counter() - t_start:6.0f}s] {tier} ready: {models[tier]}", flush=True)
    cfg = make_bench_config(batch_sizes=parse_batch_sizes(args.batch_sizes), prompt_len=args.prompt_len,
                            gen_len=args.gen_len, device="cuda", repeats=args.repeats, warmup=1,
                            decoder=args.decoder)
    result = bench(list(models.values()), cfg)
    result["gpu_bench"] = {
        "model": args.model, "tiers": dict(zip(models, models.values())), "random_weights": args.model in SHAPES,
        "shape": SHAPES.get(args.model),
        "gptq": f"RTN int4 sym g{args.group_size}, GPTQ v1 layout (no calibration)", "checks": checks,
        "setup_timings": timings, "wall_s": round(time.perf_counter() - t_start, 1),
    }
    write_json_atomic(args.out, result)
    print(json.dumps({"ratios_to_bf16": result["ratios_to_first"], "checks": checks, "timings": timings}, indent=1))
    for m in result["models"]:
        p = m["decode_path"]
        rows = ", ".join(f"b{r['batch_size']}: {r['decode_tok_s']['median']:.1f} tok/s {r['peak_memory_bytes'] / 2**30:.2f} GiB"
                         for r in m["batches"])
        print(f"{Path(m['spec']).name}: {p['loader']} {p['backend']} {p['decoder']} graphed={p['graphed']} "
              f"fallback={p['fallback']} | {rows}", flush=True)


if __name__ == "__main__":
    main()
