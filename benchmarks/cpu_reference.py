"""A CPU-built bf16-trained reference for the llama.cpp rows of the int4 table (issue 16).

The GPU reference (benchmarks/gpu_reference.sh) is 576 wide: llama.cpp's k-quants need rows that are multiples of
256, so its Q4_K_M falls back to Q5_0/Q8_0 (5.55 bits per weight) and is no equal-bits peer there. This model is
built so that every decoder Linear is k-quantizable (512 wide, 1536 MLP, 4 layers, 8 heads / 4 KV heads, head 64;
a 4,096-token BPE trained on its own text) and small enough to train and score on a CPU. It is trained from random
weights (`compress.testing.train_tiny_llama`, AdamW, fixed seed) on the GPU reference's text without Austen: the
first --chars-per-source characters of the Python docs, the Python standard library, the Linux docs and Moby-Dick,
plus WikiText-2 valid; so WikiText-2 test and Austen are held out. Saved in bf16.

    .venv/bin/python benchmarks/cpu_reference.py --data ../shared/data --out out/cpu-ref \\
        --record benchmarks/results/cpu_reference.json
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from compress import runtime
from compress.data import load_texts
from compress.testing import train_tiny_llama, train_tokenizer

SOURCES = ("corpus/python_docs.txt.xz", "corpus/python_stdlib.txt.xz", "corpus/linux_docs.txt.xz",
           "corpus/mobydick.txt.xz", "wikitext-2/wiki.valid.tokens")
SHAPE = dict(hidden=512, layers=4, heads=8, kv_heads=4, intermediate=1536, max_positions=1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="the shared data folder (corpus/, wikitext-2/)")
    ap.add_argument("--out", required=True, help="where the model goes (its folder `model`)")
    ap.add_argument("--record", required=True, help="JSON: settings, time, hardware, versions")
    ap.add_argument("--chars-per-source", type=int, default=1_500_000)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    from cpu_decode import lscpu_flags  # benchmarks/ is on sys.path when this script runs

    texts = []
    for rel in SOURCES:
        budget, kept = args.chars_per_source, []
        for doc in load_texts(str(Path(args.data) / rel)):
            kept.append(doc[:budget])
            budget -= len(kept[-1])
            if budget <= 0:
                break
        texts += kept
    t0 = time.perf_counter()
    tok = train_tokenizer(args.vocab, texts)
    path = Path(args.out) / "model"
    blocks = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts) // args.seq_len
    train_tiny_llama(path, texts, tok, steps=args.steps, seq_len=args.seq_len, batch_size=args.batch, lr=args.lr,
                     n_blocks=blocks, progress=True, **SHAPE)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(path)
    record = dict(benchmark="cpu_reference", created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  settings=vars(args) | dict(shape=SHAPE, sources=SOURCES, training_blocks=blocks,
                                             training_tokens=args.steps * args.batch * args.seq_len),
                  parameters=sum(p.numel() for p in model.parameters()), seconds=round(time.perf_counter() - t0, 1),
                  hardware=runtime.hardware(), cpu=lscpu_flags(), versions=runtime.library_versions())
    Path(args.record).parent.mkdir(parents=True, exist_ok=True)
    Path(args.record).write_text(json.dumps(record, indent=2) + "\n")
    print(f"{path}: {record['parameters'] / 1e6:.1f}M parameters, {blocks} blocks of {args.seq_len}, "
          f"{record['seconds']:.0f} s")


if __name__ == "__main__":
    main()
