"""Benchmark for `compress quantize` on the real SmolLM2-135M-Instruct (from its GGUF), on this machine.

For the source model and each method (int8, int8-wo, rtn int4 g128, gptq int4 g128): quantization
time, size on disk (safetensors), and WikiText-2 test perplexity on a stated prefix, every model
loaded the way users load it (plain from_pretrained through compress.models). Writes JSON to --out.

    .venv/bin/python benchmarks/quantize_smollm2.py --wikitext ../shared/data/wikitext-2/wiki.test.tokens \
        --out benchmarks/results/quantize_smollm2_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from compress import runtime
from compress.artifacts import dir_size_bytes
from compress.evaluate.perplexity import perplexity
from compress.models import checkpoint_dir, load_causal_lm, load_tokenizer, resolve
from compress.quantize import make_config, quantize
from compress.testing import smollm2_gguf

PLANS = [
    ("int8", dict(method="int8")),
    ("int8-wo", dict(method="int8-wo")),
    ("rtn-w4g128", dict(method="rtn", bits=4, group_size=128)),
    ("gptq-w4g128", dict(method="gptq", bits=4, group_size=128)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wikitext", required=True, help="wiki.test.tokens")
    ap.add_argument("--tokens", type=int, default=8192, help="WikiText-2 test prefix, in tokens")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--work", default="out/bench-quantize")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    device = runtime.default_device()
    gguf = smollm2_gguf()
    src = checkpoint_dir(resolve(str(gguf)))
    text = [Path(args.wikitext).read_text(encoding="utf-8")]
    rows = []

    def measure(name, model_dir, quant_s, method):
        model = load_causal_lm(model_dir, device=device)
        tok = load_tokenizer(model_dir)
        t0 = time.perf_counter()
        ppl = perplexity(model, tok, text, context_len=args.context, max_tokens=args.tokens, progress=True)
        row = dict(name=name, method=method, size_bytes=dir_size_bytes(model_dir, "*.safetensors"),
                   quantize_time_s=quant_s, eval_time_s=round(time.perf_counter() - t0, 1), **ppl.to_dict())
        print(json.dumps(row))
        rows.append(row)

    measure("source (bf16 weights, fp32 compute)", src, None, "none")
    for name, plan in PLANS:
        calib = dict(calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen) if plan["method"] == "gptq" else {}
        cfg = make_config(**plan, **calib)
        res = quantize(str(gguf), cfg, Path(args.work) / name, overwrite=True, device=device, measure_quality=False)
        measure(name, res.output, res.time_s, cfg.method)

    result = dict(
        benchmark="quantize_smollm2", created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model=gguf.name, device=device, hardware=runtime.hardware(), versions=runtime.library_versions(),
        settings=dict(wikitext_tokens=args.tokens, context=args.context, stride=args.context,
                      calib="builtin (Python docs topics, training split)", calib_samples=args.calib_samples,
                      calib_seqlen=args.calib_seqlen, threads=torch.get_num_threads()),
        rows=rows,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
