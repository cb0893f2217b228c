"""llama.cpp rows for the int4 quality table (issue 16): the same texts, token ids and windows as quality_table.py.

Rows, each a GGUF file run by llama.cpp (llama-cpp-python):
- `llamacpp-f16`: our F16 export of the source (`compress export --format gguf`), llama.cpp's own baseline;
- `llamacpp-q4_0`, `llamacpp-q4_k_m` (--llama-types): llama.cpp's quantizer (`llama_model_quantize`, round to
  nearest / k-quants) applied to that F16, i.e. what a llama.cpp user gets;
- `NAME-q4_0` for every `--artifact NAME=DIR`: our int4 artifact exported without re-quantizing (g32 sym → Q4_0,
  asym → Q4_1; the embedding/head as --dense-type), e.g. `compress quantize --method gptq --group-size 32`;
- `llamacpp-TYPE-torch` with --torch-rows: each llama.cpp quantization dequantized by transformers' GGUF loader
  (compress.models, cached as bf16) and scored in PyTorch on --device, first: the format's weights without
  llama.cpp's runtime (which rounds activations to 8 bits in its dot products), in seconds on a GPU where
  llama.cpp's CPU rows take minutes each (--torch-only: those rows alone);
- `--llama-dense-type q8_0` names them `llamacpp-TYPE-dense-q8_0`: llama.cpp's quantizations with the embedding and
  head at Q8_0, as our exports write them with --dense-type q8_0, so that only the decoder's Linear layers differ.

Scoring matches quality_table.py exactly: the texts are tokenized once with the source's HF tokenizer
(compress.data.tokenize_stream), cut by compress.evaluate.perplexity.score_stream into the same disjoint windows,
and each window's ids are fed to llama.cpp, so a perplexity here compares with one there. KL(source ‖ row) uses
the source in PyTorch (--device) on the same --kl-tokens ids. Bits per weight: the decoder's Linear tensors of
the GGUF (blk.*), block scales included.

    python benchmarks/quality_llamacpp.py --model /tmp/ref/student-kd --artifact gptq-ours-g32=/tmp/ref/q/gptq-g32 \\
        --wikitext wiki.test.tokens --heldout austen5.txt.xz --heldout builtin --heldout-max-tokens 131072 \\
        --threads 16 --work /tmp/ref/gguf --out quality_table_reference_llamacpp.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from compress import runtime
from compress.data import load_texts, tokenize_stream
from compress.evaluate.perplexity import kl_to_source, score_stream
from compress.models import checkpoint_dir, load_causal_lm, load_tokenizer, resolve
from cpu_decode import lscpu_flags  # benchmarks/ is on sys.path when this script runs

LINEAR_SUFFIXES = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_gate.weight",
                   "ffn_up.weight", "ffn_down.weight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the source checkpoint dir (bf16/fp32)")
    ap.add_argument("--artifact", action="append", default=[], help="NAME=DIR: our int4 artifact, exported")
    ap.add_argument("--wikitext", required=True)
    ap.add_argument("--heldout", action="append", default=[])
    ap.add_argument("--heldout-max-tokens", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=None, help="cap every text (a smoke run; not for the table)")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--kl-tokens", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default=None, help="where the source runs for KL")
    ap.add_argument("--llama-types", default="q4_0,q4_k_m", help="llama.cpp's own quantizations of the F16 export")
    ap.add_argument("--dense-type", default="f16", choices=["f16", "q8_0"],
                    help="how our exports write the unquantized embedding/head (q8_0: as llama.cpp's Q4_0 does)")
    ap.add_argument("--llama-dense-type", default="auto", choices=["auto", "q8_0"],
                    help="the embedding and head of llama.cpp's quantizations: its own choice (auto: Q4_0 writes the "
                    "embedding Q4_0 and the head Q6_K) or q8_0, as --dense-type q8_0 writes ours")
    ap.add_argument("--torch-rows", action="store_true", help="also score llama.cpp's files in PyTorch (first)")
    ap.add_argument("--torch-only", action="store_true",
                    help="only those PyTorch rows: no llama.cpp runner (minutes per row on a small CPU)")
    ap.add_argument("--llama-wikitext-only", action="store_true",
                    help="llama.cpp rows score WikiText-2 (and KL) only: ~half the CPU time; PyTorch rows score all")
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.torch_only and args.artifact:
        ap.error("--torch-only scores llama.cpp's own quantizations; --artifact exports are scored by llama.cpp")
    import llama_cpp

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src = checkpoint_dir(resolve(args.model))
    tok = load_tokenizer(src)
    streams = {"wikitext2-test": tokenize_stream(tok, [Path(args.wikitext).read_text(encoding="utf-8")],
                                                   args.max_tokens)}
    for h in args.heldout:
        streams[Path(h).name.split(".")[0]] = tokenize_stream(tok, load_texts(h), args.max_tokens or args.heldout_max_tokens)
    kl_ids = tokenize_stream(tok, load_texts(args.heldout[0]), args.kl_tokens)
    device = args.device or runtime.default_device()
    source = load_causal_lm(src, device=device)
    files = build_files(src, args, work)
    rows: list[dict] = []
    result = dict(benchmark="quality_table", runner="llama.cpp", llama_cpp_python=llama_cpp.__version__,
                  created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), model=dict(spec=args.model),
                  device=f"llama.cpp CPU, {args.threads} threads", hardware=runtime.hardware(), cpu=lscpu_flags(),
                  settings={k: v for k, v in vars(args).items() if k != "out"}, rows=rows, complete=False)
    jobs = [(f"{n}-torch", p, s, score_torch) for n, (p, s) in files.items()
            if (args.torch_rows or args.torch_only) and n.startswith("llamacpp-q")]
    jobs += [] if args.torch_only else [(n, p, s, score_file) for n, (p, s) in files.items()]
    for name, path, made_s, score in jobs:
        rows.append(score(name, path, made_s, streams, kl_ids, source, tok, args))
        print(json.dumps(rows[-1]), flush=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    result["complete"] = True
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def build_files(src, args, work: Path) -> dict[str, tuple[str, float]]:
    """name → (GGUF path, seconds to make it); a file that cannot be made is recorded by score_file."""
    from compress.export import export_gguf

    files: dict[str, tuple[str, float]] = {}
    t0 = time.perf_counter()
    f16 = work / "source-f16.gguf"
    export_gguf(src, f16, overwrite=True)
    files["llamacpp-f16"] = (str(f16), time.perf_counter() - t0)
    suffix = "" if args.llama_dense_type == "auto" else f"-dense-{args.llama_dense_type}"
    for kind in args.llama_types.split(","):
        name, ftype = f"llamacpp-{kind}{suffix}", f"LLAMA_FTYPE_MOSTLY_{kind.upper()}"
        t0 = time.perf_counter()
        out = work / f"{name}.gguf"
        made = llama_quantize(str(f16), str(out), ftype, args.llama_dense_type)
        files[name] = (str(out) if made else f"failed: {ftype}",
                       time.perf_counter() - t0)
    for spec in args.artifact:
        name, path = spec.split("=", 1)
        t0 = time.perf_counter()
        out = work / f"{name}.gguf"
        try:
            export_gguf(path, out, overwrite=True, dense_type=args.dense_type)
            files[f"{name}-gguf"] = (str(out), time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - a refused layout is a row with its reason
            files[f"{name}-gguf"] = (f"failed: {str(e).strip().splitlines()[0][:200]}", 0.0)
    return files


def llama_quantize(f16: str, out: str, ftype: str, dense: str = "auto") -> bool:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    if dense != "auto":
        params.token_embedding_type = params.output_tensor_type = getattr(llama_cpp, f"GGML_TYPE_{dense.upper()}")
    return llama_cpp.llama_model_quantize(f16.encode(), out.encode(), params) == 0


def score_file(name, path, made_s, streams, kl_ids, source, tok, args) -> dict:
    row = dict(row=name, group_size=block(name), seed=None, file=path)
    if path.startswith("failed"):
        return row | dict(skipped=path)
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=args.context, n_batch=args.context, n_ubatch=args.context,
                          logits_all=True, verbose=False, n_threads=args.threads, n_threads_batch=args.threads)

    def logits(window: torch.Tensor) -> torch.Tensor:
        llm.reset()
        llm.eval(window.tolist())
        return torch.from_numpy(np.asarray(llm.scores[: len(window)], dtype=np.float32))

    if args.llama_wikitext_only:
        streams = {"wikitext2-test": streams["wikitext2-test"]}
    return scored(row, made_s, logits, streams, kl_ids, source, tok, args)


@torch.no_grad()
def score_torch(name, path, made_s, streams, kl_ids, source, tok, args) -> dict:
    """A llama.cpp file's weights, dequantized to bf16 by transformers, scored in PyTorch on the same windows."""
    row = dict(row=name, group_size=block(name), seed=None, file=path, runner="pytorch (GGUF dequantized to bf16)")
    if path.startswith("failed"):
        return row | dict(skipped=path)
    model = load_causal_lm(path, device=source.device.type)
    return scored(row, made_s, lambda w: model(w[None].to(model.device)).logits[0].float(), streams, kl_ids, source,
                  tok, args)


def scored(row: dict, made_s: float, logits, streams, kl_ids, source, tok, args) -> dict:
    """`row` with its file's facts, a perplexity per text and KL to the source; `logits(window ids [S])` → [S, V]."""
    def window_nll(window: torch.Tensor, n_new: int) -> float:
        lg = logits(window)[:-1]
        return F.cross_entropy(lg[-n_new:], window[1:][-n_new:].to(lg.device), reduction="sum").item()

    path = row["file"]
    row |= dict(quantize_time_s=round(made_s, 1), size_bytes=os.path.getsize(path), **gguf_bits(path))
    for text, ids in streams.items():
        r = score_stream(ids, tok, args.context, args.context, window_nll)
        row[f"ppl:{text}"], row[f"tokens:{text}"] = round(r.perplexity, 4), r.tokens_scored
    row["kl_to_source"] = round(kl_to_source(source, logits, kl_ids, args.context), 5)
    return row


def block(name: str) -> int | None:
    """The row's group: Q4_0/Q4_1 (and our exports) scale blocks of 32; F16 none; k-quants mix types (see the file's
    linear_types), so none."""
    return None if name.startswith("llamacpp-f16") or "_k" in name else 32


def gguf_bits(path: str) -> dict:
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(path)
    params = nbytes = 0
    types: Counter = Counter()
    for t in reader.tensors:
        if t.name.startswith("blk.") and t.name.endswith(LINEAR_SUFFIXES):
            params += int(np.prod(t.shape))
            nbytes += int(t.n_bytes)
            types[t.tensor_type.name] += 1
    return dict(bits_per_weight=round(8 * nbytes / params, 4), linear_types=dict(types),
                tensor_types=dict(Counter(t.tensor_type.name for t in reader.tensors)))


if __name__ == "__main__":
    main()
