"""GPU benchmark: distill SmolLM2-135M-Instruct (30 layers) into a half-depth student in a fixed time.

Self-contained for the lent H100 (Python 3.12, torch 2.11, transformers 5.17, accelerate 1.15; no
network). Beyond those it needs this repository (the `compress` package travels with the working
tree), pydantic (+ pydantic_core, annotated-types, typing-inspection) and gguf wheels on PYTHONPATH.

Steps:

  # 1. here (CPU machine): build the training text, ~31 MB of real text, xz-compressed (~6 MB)
  python benchmarks/gpu_distill.py prepare --out .gpu/distill_train.txt.xz

  # 2. on the GPU, one call per mode (each call <= ~9.5 min wall; KD first, then CE-only):
  python benchmarks/gpu_distill.py run --mode kd --teacher /tmp/m/model.gguf --train distill_train.txt.xz \
      --mix wiki.valid.tokens --mix-repeat 4 --wikitext wiki.test.tokens --max-time 390 --out $OUT/distill_kd.json
  python benchmarks/gpu_distill.py run --mode ce ... --out $OUT/distill_ce.json

  # 3. here: draw them
  python benchmarks/gpu_distill.py plot distill_kd.json distill_ce.json ... --png benchmarks/results/gpu_distill.png

  # issue 8: the same run on 1 and 2 GPUs (DDP, FSDP), same global batch and steps
  python benchmarks/gpu_distill.py scale --teacher /tmp/m/model.gguf --train distill_train.txt.xz \
      --mix wiki.valid.tokens --runs 1 2 2:fsdp --max-steps 300 --out $OUT/distill_scale.json

What a `run` measures (written as JSON to --out): teacher, initial (truncated, untrained) student and
final student perplexity on the first --wiki-tokens tokens of WikiText-2 test (1,024-token windows
without overlap) and on the held-out 5% of the corpus pieces; parameters; training tokens/s;
greedy decode tokens/s (batch 1, 128 new tokens, median of 3 after a warm-up) for teacher and
student. kd = forward KL on the teacher's logits; ce = the same student trained with cross-entropy
on the same data for the same wall time (it skips the teacher forward, so it sees more tokens).
Training text: the five files of shared/data/corpus (Python docs, CPython stdlib, Linux docs,
Austen, Moby Dick), plus --mix (WikiText-2 *valid*, repeated --mix-repeat times) when given;
WikiText-2 *test* is only evaluated.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# compress.runtime turns Rust tokenizer threads off by default (safe with forking data loaders); this
# script does not fork, and tokenizing ~31 MB on one thread would take minutes.
os.environ["TOKENIZERS_PARALLELISM"] = "true"

CORPUS = ["python_docs", "python_stdlib", "linux_docs", "austen5", "mobydick"]


def prepare(args) -> None:
    src = Path(args.corpus)
    parts = []
    for name in args.names.split(","):
        with lzma.open(src / f"{name}.txt.xz", "rt", encoding="utf-8", errors="replace") as f:
            parts.append(f.read())
    text = "\n\n".join(parts)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(out, "wt", encoding="utf-8", preset=6) as f:
        f.write(text)
    print(f"{out}: {len(text) / 1e6:.1f}M characters, {out.stat().st_size / 1e6:.1f} MB compressed")


def wikitext(path: str) -> list[str]:
    # The tokenized release: keep the text as it is (with <unk>), as the GPTQ papers evaluate it.
    return [Path(path).read_text(encoding="utf-8")]


def train_data(args) -> list[str]:
    """The corpus, plus --mix repeated --mix-repeat times (weights a small in-domain source up; its copies
    hash alike, so they land together on one side of the held-out split)."""
    return [args.train] + [args.mix] * (args.mix_repeat if args.mix else 0)


def describe_data(args) -> str:
    mix = f" + {Path(args.mix).name} x{args.mix_repeat}" if args.mix and args.mix_repeat else ""
    return f"{Path(args.train).name}{mix}; 5% of the pieces held out (by content hash)"


def distill_config(args, output: Path, **run_specific):
    """The settings `run` and `scale` share (the flags of `training_flags`), plus each one's own."""
    from compress.distill import make_config

    run_specific.setdefault("grad_accum", args.grad_accum)
    return make_config(
        teacher=args.teacher, output=str(output), student_layers=args.student_layers, data=train_data(args),
        seq_len=args.seq_len, lr=args.lr, warmup_steps=args.warmup_steps,
        eval_tokens=args.eval_tokens, layer_selection=args.layer_selection, device=args.device, compile=args.compile,
        eval_every=0, save_every=0, seed=0, overwrite=True, progress=True, **run_specific,
    )


def decode_tok_s(model, tokenizer, new_tokens: int = 128) -> float:
    import torch

    ids = tokenizer("The history of the Python programming language", return_tensors="pt").input_ids.to(model.device)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    model.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)  # warm-up
    times = []
    for _ in range(3):
        sync()
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        sync()
        times.append(time.perf_counter() - t)
        assert out.shape[1] - ids.shape[1] == new_tokens
    return new_tokens / statistics.median(times)


def run(args) -> None:
    import torch

    from compress import models, runtime
    from compress.distill import distill
    from compress.distill.student import count_params, derive_student
    from compress.evaluate.perplexity import perplexity

    t0 = time.time()
    torch.backends.cuda.matmul.allow_tf32 = True
    ref = models.resolve(args.teacher)
    models.checkpoint_dir(ref)  # GGUF -> cached bf16 checkpoint (about 35 s once per machine)
    tok = models.load_tokenizer(ref)
    dev = args.device
    dtype = runtime.compute_dtype(dev)
    teacher = models.load_causal_lm(ref, device=dev, dtype=dtype)
    wiki = wikitext(args.wikitext)
    ppl = lambda m: perplexity(m, tok, wiki, context_len=1024, max_tokens=args.wiki_tokens).perplexity  # noqa: E731
    res: dict = {"mode": args.mode, "teacher": args.teacher, "student_layers": args.student_layers,
                 "wiki_subset": f"first {args.wiki_tokens} tokens of wiki.test.tokens, 1024-token windows, no overlap"}
    res["teacher_wiki_ppl"] = ppl(teacher)
    res["teacher_params"] = count_params(teacher)
    teacher.cpu()
    if dev == "cuda":
        torch.cuda.empty_cache()
    res["setup_s"] = round(time.time() - t0, 1)

    out_dir = Path(args.work) / f"student-{args.mode}"
    cfg = distill_config(
        args, output=out_dir, loss=args.loss, temperature=args.temperature,
        ce_weight=1.0 if args.mode == "ce" else args.ce_weight, max_steps=args.max_steps,
        max_time=None if args.max_steps else args.max_time,
        batch_size=args.batch_size, num_processes=args.num_processes, freeze_embeddings=args.freeze_embeddings,
    )
    res["train_data"] = describe_data(args)
    result = distill(cfg)
    m = result.metrics
    # the untrained student: the same layers the run kept (greedy: chosen on the training text)
    student0 = derive_student(teacher, args.student_layers, None, keep=m["kept_layers"]).to(dev, dtype).eval()
    res["kept_layers"], res["layer_selection"] = m["kept_layers"], args.layer_selection
    res["initial_student_wiki_ppl"] = ppl(student0)
    res["student_params"] = count_params(student0)
    del student0, teacher
    res["distill"] = {k: v for k, v in m.items() if k not in {"loss_curve", "history"}}
    res["loss_curve"] = m["loss_curve"]
    res["corpus_heldout"] = {"teacher_ppl": m["teacher_ppl"], "initial_student_ppl": m["initial_student_ppl"],
                             "student_ppl": m["student_ppl"], "tokens": m["heldout_tokens"]}

    teacher = models.load_causal_lm(ref, device=dev, dtype=dtype)
    student = models.load_causal_lm(str(out_dir), device=dev, dtype=dtype)
    res["student_wiki_ppl"] = ppl(student)
    res["student_over_teacher_wiki"] = res["student_wiki_ppl"] / res["teacher_wiki_ppl"]
    res["decode_tok_s"] = {"teacher": decode_tok_s(teacher, tok), "student": decode_tok_s(student, tok)}
    res["config"] = cfg.model_dump()
    res["versions"] = runtime.library_versions()
    res["hardware"] = runtime.hardware()
    res["total_s"] = round(time.time() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in {"loss_curve", "config", "distill"}}, indent=1))


def scale(args) -> None:
    """Issue 8: the same distillation (same student, data, global batch and steps) on 1 and on N GPUs.

    The global batch is fixed (--global-batch sequences per optimizer step); each of N processes takes
    global/N of it (packing.batch_indices gives process r the r-th slice of every global micro-batch), so
    every run sees the same tokens in the same steps. Written after each run, so a cut-off call keeps
    what finished."""
    import torch

    from compress import models, runtime
    from compress.distill import distill

    models.checkpoint_dir(models.resolve(args.teacher))  # GGUF -> cached checkpoint once, before timing
    out = {"what": "same student, data, global batch and steps; tokens/s over the training loop (final "
                   "validation excluded); held-out = validation split of the training text",
           "train_data": describe_data(args), "global_batch": args.global_batch, "seq_len": args.seq_len,
           "grad_accum": args.grad_accum, "max_steps": args.max_steps, "gpus_visible": torch.cuda.device_count(),
           "versions": runtime.library_versions(), "hardware": runtime.hardware(), "runs": []}
    for spec in args.runs:  # N[:ddp|fsdp[:ACCUM]]: N processes, each ACCUM micro-steps (default --grad-accum)
        parts = spec.split(":")
        n, parallel = int(parts[0]), (parts + ["ddp"])[1]
        accum = int(parts[2]) if len(parts) > 2 else args.grad_accum
        per_step = args.global_batch * args.grad_accum  # sequences per optimizer step, the same in every run
        if per_step % (n * accum):
            raise SystemExit(f"{per_step} sequences per step do not split over {n} processes x {accum} micro-steps")
        # packing.batch_indices numbers blocks by global micro-step, so every split sees the same blocks per step
        cfg = distill_config(args, output=Path(args.work) / f"scale-{n}-{parallel}-a{accum}", loss="fkl",
                             ce_weight=0.0, max_steps=args.max_steps, batch_size=per_step // (n * accum),
                             num_processes=n, parallel=parallel, grad_accum=accum)
        t = time.time()
        m = distill(cfg).metrics
        run = {"processes": n, "parallel": parallel, "grad_accum": accum, "batch_per_process": per_step // (n * accum),
               "wall_s": round(time.time() - t, 1),
               **{k: m[k] for k in ("steps", "tokens_seen", "train_time_s", "tokens_per_s", "tokens_per_s_steady",
                                    "teacher_ppl", "initial_student_ppl", "student_ppl", "heldout_kd", "kept_layers")}}
        out["runs"].append(run)
        base = out["runs"][0]
        run["speedup"] = run["tokens_per_s"] / base["tokens_per_s"]
        run["scaling_efficiency"] = run["speedup"] / (n / base["processes"])
        if run["tokens_per_s_steady"] and base["tokens_per_s_steady"]:  # past the first 5 steps (warm-up)
            run["speedup_steady"] = run["tokens_per_s_steady"] / base["tokens_per_s_steady"]
            run["scaling_efficiency_steady"] = run["speedup_steady"] / (n / base["processes"])
        run["ppl_vs_first_pct"] = 100 * (run["student_ppl"] / base["student_ppl"] - 1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(json.dumps(run), flush=True)


def label(r: dict) -> str:
    """A run's settings in a few words, for the plot."""
    c = r["config"]
    mix = r.get("train_data", "").split("; ")[0].split(" + ")[1:]  # e.g. ["wiki.valid.tokens x10"]
    extra = [f"{c['student_layers']}L", f"lr {c['lr']:g}"] + [m.replace(".tokens", "") for m in mix]
    extra += ["frozen emb"] if c.get("freeze_embeddings") else []
    extra += [f"b{c['batch_size']}x{c['grad_accum']}"] if (c["batch_size"], c["grad_accum"]) != (8, 4) else []
    extra += ["compiled"] if c.get("compile") else []
    extra += [f"+ CE x{c['ce_weight']:g}"] if r["mode"] == "kd" and c.get("ce_weight") else []
    extra += [f"{r['distill']['train_time_s']:.0f}s"]
    return f"{r['mode']} ({', '.join(extra)})"


def plot(args) -> None:
    """Draw the runs against the teacher (run on the CPU machine, from the JSON files the GPU calls wrote)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(Path(p).read_text()) for p in args.results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1, 1.4]})
    for r in runs:
        curve = r["loss_curve"]  # [step, loss, kd, ce]
        tokens_per_step = r["distill"]["tokens_seen"] / max(1, r["distill"]["steps"])
        a.plot([c[0] * tokens_per_step / 1e6 for c in curve], [c[3] for c in curve], label=label(r))
    a.set_xlabel("training tokens (M)")
    a.set_ylabel("cross-entropy on the training batch (nats)")
    a.legend(fontsize=7)
    t = runs[0]
    labels = ["teacher"] + [label(r) for r in runs]
    wiki = [t["teacher_wiki_ppl"]] + [r["student_wiki_ppl"] for r in runs]
    held = [t["corpus_heldout"]["teacher_ppl"]] + [r["corpus_heldout"]["student_ppl"] for r in runs]
    y = range(len(labels))
    b.barh([i - 0.2 for i in y], wiki, height=0.4, label="WikiText-2 test subset")
    b.barh([i + 0.2 for i in y], held, height=0.4, label="held-out corpus")
    b.set_yticks(list(y), labels, fontsize=7)
    b.invert_yaxis()
    b.set_xscale("log")
    b.set_xlabel("perplexity (log scale)")
    b.axvline(1.25 * t["teacher_wiki_ppl"], ls="--", c="C0", lw=1, label="1.25x teacher (wiki)")
    b.axvline(1.25 * t["corpus_heldout"]["teacher_ppl"], ls=":", c="C1", lw=1, label="1.25x teacher (held-out)")
    b.legend(fontsize=7)
    fig.suptitle("SmolLM2-135M-Instruct (30 layers) -> half-depth students, H100, <= 8 min of training each")
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")


def training_flags(p: argparse.ArgumentParser) -> None:
    """The flags `run` and `scale` share (what `distill_config` reads)."""
    p.add_argument("--teacher", required=True, help="SmolLM2-135M-Instruct .gguf or checkpoint dir")
    p.add_argument("--train", required=True, help="training text (prepare's output)")
    p.add_argument("--mix", help="extra training text, weighted up (e.g. wiki.valid.tokens)")
    p.add_argument("--mix-repeat", type=int, default=4)
    p.add_argument("--out", required=True)
    p.add_argument("--student-layers", type=int, default=15)
    p.add_argument("--layer-selection", choices=("greedy", "even"), default="greedy")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--eval-tokens", type=int, default=262_144)
    p.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only for a dry run (gloo)")
    p.add_argument("--compile", action="store_true", help="torch.compile forwards and loss (compile time counts)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared/data/corpus"))
    pp.add_argument("--names", default=",".join(CORPUS),
                    help="corpus files to join (issue 16's reference leaves austen5 out: its held-out prose)")
    pp.add_argument("--out", required=True)
    pr = sub.add_parser("run")
    training_flags(pr)
    pr.add_argument("--mode", choices=["kd", "ce"], required=True)
    pr.add_argument("--wikitext", required=True, help="wiki.test.tokens")
    pr.add_argument("--work", default="/tmp/distill-bench")
    pr.add_argument("--max-time", type=float, default=300.0, help="training seconds")
    pr.add_argument("--max-steps", type=int, default=None,
                    help="train this many steps instead of --max-time seconds (a rebuild that does not depend on speed)")
    pr.add_argument("--batch-size", type=int, default=8)
    pr.add_argument("--loss", default="fkl")
    pr.add_argument("--temperature", type=float, default=1.0)
    pr.add_argument("--ce-weight", type=float, default=0.0)
    pr.add_argument("--freeze-embeddings", action="store_true", help="train only the decoder layers")
    pr.add_argument("--wiki-tokens", type=int, default=32_768)
    pr.add_argument("--num-processes", type=int, default=1,
                    help="data-parallel GPUs (issue 8); --batch-size is per GPU, so halve it to keep the global batch")
    ps = sub.add_parser("scale", help="issue 8: one distillation on 1 and on N GPUs, same tokens")
    training_flags(ps)
    ps.add_argument("--work", default="/tmp/distill-scale")
    ps.add_argument("--runs", nargs="+", default=["1", "2", "2:fsdp"],
                    help="PROCESSES[:ddp|fsdp] per run; the first is the baseline")
    ps.add_argument("--max-steps", type=int, default=300)
    ps.add_argument("--global-batch", type=int, default=8, help="sequences per micro-step over all processes")
    pl = sub.add_parser("plot")
    pl.add_argument("results", nargs="+", help="JSON files written by run")
    pl.add_argument("--png", required=True)
    args = p.parse_args()
    {"prepare": prepare, "run": run, "scale": scale, "plot": plot}[args.cmd](args)


if __name__ == "__main__":
    main()
