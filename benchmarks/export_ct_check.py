"""Does a compressed-tensors export score what its GPTQ artifact scores? (issue 16: the ≤ 4.25-bit row)

`compress export --format compressed-tensors` moves a GPTQ artifact's codes and scales into llm-compressor's
pack-quantized format without re-quantizing; a `--sym` artifact then has no zero points, so group 64 is 4.25 bits
per weight. The only change is a bf16 checkpoint's scales: gptqmodel stores fp16, loaders cast them to bf16. This
script measures both files on the same windows: WikiText-2 perplexity, KL(artifact ‖ export) per token, the
largest weight change, bits per weight and size on disk (from the files).

    python benchmarks/export_ct_check.py --artifact /tmp/ct/smol-gptq-sym-g64 \\
        --wikitext ../shared/data/wikitext-2/wiki.test.tokens --max-tokens 32768 \\
        --out benchmarks/results/export_ct_check_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch


def main() -> None:
    from compress import runtime
    from cpu_decode import lscpu_flags  # benchmarks/ is on sys.path when this script runs
    from compress.data import tokenize_stream
    from compress.evaluate.perplexity import kl_to_source, perplexity
    from compress.export import export_compressed_tensors
    from compress.models import load_causal_lm, load_tokenizer
    from compress.quantize.budget import bits_per_weight

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", required=True, help="a GPTQ-format artifact (compress quantize --method gptq)")
    ap.add_argument("--wikitext", required=True, help="wiki.test.tokens")
    ap.add_argument("--max-tokens", type=int, default=None, help="score the first N tokens (default: all)")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--kl-tokens", type=int, default=8192)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="activation dtype of both (default: what compress eval uses on the device)")
    ap.add_argument("--work", default=None, help="where the export goes (default: ARTIFACT-ct beside it)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    art = Path(args.artifact)
    device = args.device or runtime.default_device()
    ct_dir = Path(args.work or f"{art}-ct")
    t0 = time.perf_counter()
    exported = export_compressed_tensors(art, ct_dir, overwrite=True)
    export_s = time.perf_counter() - t0
    tok = load_tokenizer(str(art))
    texts = [Path(args.wikitext).read_text(encoding="utf-8")]
    rows = {}
    models = {}
    for name, path in (("gptq", art), ("compressed-tensors", ct_dir)):
        model = load_causal_lm(str(path), device=device, dtype=getattr(torch, args.dtype) if args.dtype else None)
        ppl = perplexity(model, tok, texts, context_len=args.context, max_tokens=args.max_tokens, progress=True)
        rows[name] = {"path": str(path), "wikitext2_ppl": ppl.perplexity, "tokens": ppl.tokens_scored,
                      "dtype": str(next(model.parameters()).dtype), **bits_per_weight(path),
                      "size_bytes": sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors")}
        models[name] = model
        print(name, json.dumps(rows[name]))
    ids = tokenize_stream(tok, texts, args.kl_tokens)
    kl = kl_to_source(models["gptq"], models["compressed-tensors"], ids, args.context)
    result = {
        "what": "compressed-tensors export of a GPTQ artifact against the artifact, same windows",
        "command": "python benchmarks/export_ct_check.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "device": device, "hardware": runtime.hardware(), "cpu": lscpu_flags(),
        "versions": runtime.library_versions(),
        "export": {**exported.to_dict(), "seconds": round(export_s, 2)},
        "rows": rows,
        "ppl_relative_change": rows["compressed-tensors"]["wikitext2_ppl"] / rows["gptq"]["wikitext2_ppl"] - 1,
        "kl_gptq_to_export": kl, "kl_tokens": len(ids),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ppl_relative_change", "kl_gptq_to_export")}))


if __name__ == "__main__":
    main()
