"""WikiText-2 test perplexity of GGUF files run by llama.cpp (llama-cpp-python), on the same text and context.

Compares our Q4_0 export of a GPTQ g32 artifact with llama.cpp's own Q4_0 (round to nearest, made here by
`llama_cpp.llama_model_quantize` from an F16 export of the same source). The text is tokenized once by the
first model's llama.cpp tokenizer and cut into non-overlapping windows of --ctx tokens; every token after
the first of a window is scored (llama.cpp's `perplexity` tool scores only each window's second half; this
script scores all, so compare figures from this script with each other only). Every file's tensor types are
recorded (llama.cpp's Q4_0 stores SmolLM2's tied 576-wide embedding as Q8_0, our export keeps it F16).

    python benchmarks/cpu_gguf_ppl.py --text /work/shared/data/wikitext-2/wiki.test.tokens \
        --gguf source-f16=SRC.gguf --gguf ours-gptq-q4_0=FILE --quantize-from-f16 SRC.gguf --ctx 512 \
        --out benchmarks/results/cpu_gguf_ppl.json
"""

from __future__ import annotations

import argparse
import math
import os
import time
from datetime import datetime, timezone

import numpy as np


def quantize_q4_0(f16_path: str, out_path: str) -> None:
    """llama.cpp's own Q4_0 of an F16 GGUF (what its users get)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    rc = llama_cpp.llama_model_quantize(f16_path.encode(), out_path.encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed ({rc})")


def tensor_types(path: str) -> dict[str, int]:
    from collections import Counter

    from gguf import GGUFReader

    return dict(Counter(t.tensor_type.name for t in GGUFReader(path).tensors))


def nll_windows(path: str, ids: list[int], ctx: int, threads: int, every: int = 1,
                offset: int = 0) -> tuple[float, int]:
    """Summed NLL and count over the text's non-overlapping ctx windows (every `every`-th one, from window `offset`)."""
    import llama_cpp
    from tqdm import tqdm

    llm = llama_cpp.Llama(model_path=path, n_ctx=ctx, n_batch=ctx, logits_all=True, verbose=False,
                          n_threads=threads, n_threads_batch=threads)
    total, count = 0.0, 0
    starts = list(range(0, len(ids) - ctx + 1, ctx))[offset::every]
    for start in tqdm(starts, desc=os.path.basename(path), unit="window"):
        window = ids[start:start + ctx]
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[: ctx - 1], dtype=np.float64)  # predicts window[1:]
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= logp[np.arange(ctx - 1), window[1:]].sum()
        count += ctx - 1
    return total, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", required=True)
    ap.add_argument("--gguf", action="append", required=True, help="NAME=FILE")
    ap.add_argument("--quantize-from-f16", help="F16 GGUF to make llama.cpp's own Q4_0 from (added as llamacpp-q4_0)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=0, help="0 = the whole text")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=1,
                    help="score every K-th window (1 = all): an even sample of the whole text when time is short")
    ap.add_argument("--offset", type=int, default=0, help="with --every K: start at window OFFSET (0..K-1); the K runs "
                    "together score every window once (add their nll_sum and tokens_scored)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import llama_cpp

    models = dict(spec.split("=", 1) for spec in args.gguf)
    if args.quantize_from_f16:
        target = os.path.splitext(args.quantize_from_f16)[0] + "-llamacpp-q4_0.gguf"
        quantize_q4_0(args.quantize_from_f16, target)
        first, *rest = models.items()  # scored second, right after the first (our) file
        models = dict([first, ("llamacpp-q4_0", target), *rest])
    text = open(args.text, encoding="utf-8").read()
    first = llama_cpp.Llama(model_path=next(iter(models.values())), n_ctx=64, verbose=False, vocab_only=True)
    ids = first.tokenize(text.encode(), add_bos=False, special=False)
    ids = ids[: args.max_tokens] if args.max_tokens else ids
    from cpu_decode import lscpu_flags, write_json  # benchmarks/ is on sys.path when this script runs

    result = {"kind": "cpu_gguf_ppl", "schema_version": 1, "text": args.text, "ctx": args.ctx,
              "tokens": len(ids), "every": args.every, "offset": args.offset, "threads": args.threads,
              "load_average": [list(os.getloadavg())],
              "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": lscpu_flags(),
              "llama_cpp_python": llama_cpp.__version__, "complete": False, "rows": []}
    for name, path in models.items():  # the JSON is rewritten after every row, so a long run keeps its rows
        t0 = time.perf_counter()
        nll, n = nll_windows(path, ids, args.ctx, args.threads, args.every, args.offset)
        result["rows"].append({"name": name, "file": path, "size_bytes": os.path.getsize(path),
                               "tensor_types": tensor_types(path), "tokens_scored": n, "nll_sum": round(nll, 4),
                               "perplexity": round(math.exp(nll / n), 4), "time_s": round(time.perf_counter() - t0, 1)})
        result["load_average"].append(list(os.getloadavg()))
        result["complete"] = len(result["rows"]) == len(models)
        print(result["rows"][-1], flush=True)
        write_json(args.out, result)


if __name__ == "__main__":
    main()
