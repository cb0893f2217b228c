"""Which `--mse P` (gptqmodel's shrunk-scale search norm) to put in the quality table (issue 16).

For each P (0 = off) × group size × seed: `compress quantize --method gptq --mse P`, then KL(source ‖ quantized)
of next-token distributions on the first --kl-tokens tokens of each text, the same windows for every run
(compress.evaluate.perplexity.kl_to_source). Other options: `compress quantize` defaults, --calib-samples ×
--calib-seqlen.

    .venv/bin/python benchmarks/quality_mse_sweep.py --model tiny-trained --work out/quality \\
        --text ../shared/data/corpus/austen5.txt.xz --text ../shared/data/wikitext-2/wiki.test.tokens \\
        --out benchmarks/results/quality_mse_sweep_tiny_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from quality_table import _head, build_tiny_trained  # noqa: E402

from compress import runtime  # noqa: E402
from compress.data import load_texts, tokenize_stream  # noqa: E402
from compress.evaluate.perplexity import kl_to_source  # noqa: E402
from compress.models import checkpoint_dir, load_causal_lm, load_tokenizer, resolve  # noqa: E402
from compress.quantize import make_config, quantize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint dir, .gguf, or 'tiny-trained'")
    ap.add_argument("--p", default="0,1,2,2.4,3,4")
    ap.add_argument("--groups", default="128,32")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--text", action="append", required=True, help="data spec or .tokens file; repeatable")
    ap.add_argument("--kl-tokens", type=int, default=4096)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--calib-seqlen", type=int, default=256)
    ap.add_argument("--work", default="out/quality")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    spec = build_tiny_trained(Path(args.work) / "tiny-trained") if args.model == "tiny-trained" else args.model
    src = checkpoint_dir(resolve(spec))
    tok = load_tokenizer(src)
    ids = {Path(t).name.split(".")[0]: tokenize_stream(tok, _texts(t, 8 * args.kl_tokens), args.kl_tokens)
           for t in args.text}
    source = load_causal_lm(src, device="cpu")
    runs = []
    result = dict(benchmark="quality_mse_sweep", created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  model=str(spec), hardware=runtime.hardware(), versions=runtime.library_versions(),
                  settings={k: v for k, v in vars(args).items() if k != "out"}, runs=runs)
    for p in [float(x) for x in args.p.split(",")]:
        for group in [int(g) for g in args.groups.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                cfg = make_config(method="gptq", group_size=group, mse=p, seed=seed, calib_samples=args.calib_samples,
                                  calib_seqlen=args.calib_seqlen)
                res = quantize(str(spec), cfg, Path(args.work) / f"mse{p}-g{group}-s{seed}", overwrite=True,
                               device="cpu", measure_quality=False)
                model = load_causal_lm(res.output, device="cpu")
                runs.append(dict(mse=p, group_size=group, seed=seed) | {
                    f"kl:{name}": round(kl_to_source(source, model, x, args.context), 6) for name, x in ids.items()})
                print(json.dumps(runs[-1]), flush=True)
                Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def _texts(spec: str, chars: int) -> list[str]:
    return _head([Path(spec).read_text(encoding="utf-8")] if spec.endswith(".tokens") else load_texts(spec), chars)


if __name__ == "__main__":
    main()
