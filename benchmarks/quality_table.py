"""Side-by-side int4 quality table (issue 16): our quantizers and the peers, scored on the same texts and windows.

Rows (pick with --rows): bf16 (the source as stored), rtn (symmetric, signed-peak grid), rtn-asym, gptq-gptqmodel
(gptqmodel's own defaults: sym, no scale search, damp 0.05, on the built-in docs; since session 9 on our signed-peak
symmetric grid, compress/quantize/grid.py, so session 8's rows are the ones on gptqmodel's grid), gptq-ours
(`compress quantize --method gptq --asym`: --mse 2.0, --calib mix; the defaults until session 12), gptq-ours-sym
(the same with --sym, the default since: the Q4_0-exportable grid), budget (`--bits-budget`, defaults otherwise: asym
until session 12, sym since), autoround (auto-round called directly, its own tokenization of the calibration texts),
autoround-ours (`compress quantize --method autoround`: the same library on our calibration blocks, --autoround-iters
steps), nf4 (bitsandbytes, block 64), hqq (the hqq library), torchao-int4
(Int4WeightOnlyConfig). Session 8's candidates, each changing ONE thing from gptq-old (the defaults until then: sym,
no scale search, the built-in docs): gptq-mse (--mse 2.4: gptqmodel's shrunk-scale search; P from
quality_mse_sweep.py), gptq-asym (--asym), gptq-actorder (--act-order), gptq-mix (--calib mix, the four-domain
offline text); gptq-best combines the ones expected to help (mix + asym + mse 2.4). Each at every
--groups size (nf4: bitsandbytes' block 64 only); calibrated rows once per --seeds seed, the others once.
A row whose library is missing or refuses this model/device is recorded with the reason (`skipped`), and one that
fails while being scored with its error (`error`), not dropped.

Columns: WikiText-2 test perplexity (whole file unless --max-tokens), perplexity on each --heldout text (the first
--heldout-max-tokens tokens if given), mean
KL(source ‖ row) of next-token distributions on --kl-tokens tokens of the first held-out text (same windows
for every row), bits per weight of the decoder Linear layers computed from the files (scales/zeros included;
rows that only quantize in memory, from the in-memory tensors), size on disk, quantization time. Also the
share of the model's decoder weights within 5% of a step of their block's Q4_1 grid point (1.0 = the weights
already sit on a 4-bit grid, as in the SmolLM2 GGUF; ~0.1 = a bf16-trained model).

    # CPU, the tiny model trained here on real text (what benchmarks/RESULTS.md records):
    .venv/bin/python benchmarks/quality_table.py --model tiny-trained --work out/quality \\
        --wikitext ../shared/data/wikitext-2/wiki.test.tokens --heldout ../shared/data/corpus/austen5.txt.xz \\
        --out benchmarks/results/quality_table_tiny_cpu.json
    # GPU, the bf16-trained reference (benchmarks/gpu_reference.sh builds it), every row, full WikiText-2:
    python benchmarks/quality_table.py --model out/reference --device cuda --groups 128,64 --seeds 0,1,2 ...
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from compress import runtime
from compress.artifacts import dir_size_bytes, read_meta
from compress.data import load_texts, tokenize_stream
from compress.evaluate.perplexity import kl_to_source, perplexity
from compress.models import checkpoint_dir, load_causal_lm, load_tokenizer, resolve
from compress.quantize import make_config, quantize
from compress.quantize.budget import decoder_linears
from cpu_decode import lscpu_flags  # benchmarks/ is on sys.path when this script runs

OLD = dict(sym=True, mse=0.0, calib="builtin")  # `compress quantize --method gptq` defaults until session 8
CANDIDATES = {  # one change each from the old defaults (issue 16's open defaults), then the combination
    "gptq-old": OLD, "gptq-mse": OLD | dict(mse=2.4), "gptq-asym": OLD | dict(sym=False),
    "gptq-actorder": OLD | dict(act_order=True), "gptq-mix": OLD | dict(calib="mix"),
    "gptq-best": dict(calib="mix", sym=False, mse=2.4),
}
CALIBRATED = {"gptq-gptqmodel", "gptq-ours", "gptq-ours-sym", "budget", "autoround", "autoround-ours", *CANDIDATES}
ALL_ROWS = ("bf16,rtn,rtn-asym,gptq-gptqmodel,gptq-ours,gptq-ours-sym,budget,autoround,autoround-ours,nf4,hqq,"
            "torchao-int4," + ",".join(CANDIDATES))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint dir, .gguf, artifact, or 'tiny-trained'")
    ap.add_argument("--rows", default=ALL_ROWS)
    ap.add_argument("--groups", default="128,32")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--wikitext", required=True, help="wiki.test.tokens")
    ap.add_argument("--heldout", action="append", default=[], help="held-out corpus text (data spec); repeatable")
    ap.add_argument("--calib", default=None, help="calibration text for every calibrated row (default: each "
                    "method's own; the gptq-old/candidate rows fix theirs)")
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--budget", type=float, default=4.5)
    ap.add_argument("--autoround-iters", type=int, default=200, help="AutoRound's tuning steps per block (its default)")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of each text")
    ap.add_argument("--heldout-max-tokens", type=int, default=None,
                    help="score only the first N tokens of each --heldout text (WikiText-2 stays as --max-tokens says)")
    ap.add_argument("--kl-tokens", type=int, default=16384)
    ap.add_argument("--device", default=None)
    ap.add_argument("--work", default="out/quality")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    device = args.device or runtime.default_device()
    work = Path(args.work)
    model_spec = build_tiny_trained(work / "tiny-trained") if args.model == "tiny-trained" else args.model
    src = checkpoint_dir(resolve(model_spec))
    tok = load_tokenizer(src)
    texts = {"wikitext2-test": [Path(args.wikitext).read_text(encoding="utf-8")]}
    texts |= {Path(h).name.split(".")[0]: load_texts(h) for h in (args.heldout or ["builtin"])}
    for name in texts:  # tokenizing a whole 4 MB novel per row to keep its first N tokens costs minutes
        if cap := max_tokens(name, args):
            texts[name] = _head(texts[name], 8 * cap)
    kl_ids = tokenize_stream(tok, next(v for k, v in texts.items() if k != "wikitext2-test"), args.kl_tokens)
    source = load_causal_lm(src, device=device)
    model_info = dict(spec=str(model_spec), q41_grid_share=q41_grid_share(source))
    rows: list[dict] = []
    result = dict(benchmark="quality_table", created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  model=model_info, device=device, hardware=runtime.hardware(), cpu=lscpu_flags(), versions=versions(),
                  settings={k: v for k, v in vars(args).items() if k != "out"}, rows=rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for row in args.rows.split(","):
        for group in [int(g) for g in args.groups.split(",")] if row != "bf16" else [None]:
            if row == "nf4" and group != int(args.groups.split(",")[0]):
                continue  # bitsandbytes' block size is fixed at 64: one nf4 row
            for seed in [int(s) for s in args.seeds.split(",")] if row in CALIBRATED else [None]:
                rows.append(run_row(row, group, seed, src, model_spec, tok, texts, kl_ids, source, args, device, work))
                print(json.dumps(rows[-1]), flush=True)
                result["complete"] = False  # written after every row: an interrupted run keeps what it measured
                Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    result["complete"] = True
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def run_row(row, group, seed, src, model_spec, tok, texts, kl_ids, source, args, device, work) -> dict:
    out = dict(row=row, group_size=64 if row == "nf4" else group, seed=seed)  # nf4: bitsandbytes' fixed block
    t0 = time.perf_counter()
    try:
        model, files = build(row, group, seed, src, model_spec, tok, args, device, work)
    except Exception as e:  # noqa: BLE001 - a peer that does not install or refuses: recorded, not dropped
        return out | dict(skipped=_reason(e))
    out["quantize_time_s"] = round(time.perf_counter() - t0, 1)
    try:
        out["bits_per_weight"] = linear_bits(model, files)
        out["size_bytes"] = dir_size_bytes(files, "*.safetensors") if files else None
        for name, text in texts.items():
            r = perplexity(model, tok, text, context_len=args.context, max_tokens=max_tokens(name, args))
            out[f"ppl:{name}"], out[f"tokens:{name}"] = round(r.perplexity, 4), r.tokens_scored
        out["kl_to_source"] = round(kl_to_source(source, model, kl_ids, args.context), 5)
    except Exception as e:  # noqa: BLE001 - a row that builds but fails to score (a kernel, out of memory): recorded
        out["error"] = _reason(e)
    del model
    return out


def max_tokens(name: str, args) -> int | None:
    """Tokens of text `name` to score: --max-tokens for WikiText-2, --heldout-max-tokens (else --max-tokens) for others."""
    return args.max_tokens if name == "wikitext2-test" else (args.heldout_max_tokens or args.max_tokens)


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"


def _head(docs: list[str], chars: int) -> list[str]:
    """The leading documents up to `chars` characters (more than --max-tokens tokens at ≤ 8 chars/token)."""
    out, n = [], 0
    for d in docs:
        out.append(d[: chars - n])
        n += len(out[-1])
        if n >= chars:
            break
    return out


def build(row, group, seed, src, model_spec, tok, args, device, work):
    """(model ready to score, artifact dir or None)."""
    calib = dict(calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, seed=seed)
    if args.calib:  # else each method's own default (gptq: mix)
        calib["calib"] = args.calib
    plans = {
        "rtn": dict(method="rtn", group_size=group),
        "rtn-asym": dict(method="rtn", group_size=group, sym=False),
        "gptq-ours": dict(method="gptq", group_size=group, sym=False, **calib),
        "gptq-ours-sym": dict(method="gptq", group_size=group, sym=True, **calib),
        "gptq-gptqmodel": dict(method="gptq", group_size=group, damp=0.05, sym=True, mse=0.0,
                               **({"calib": "builtin"} | calib)),
        "budget": dict(method="gptq", group_size=group, bits_budget=args.budget, **calib),
        "autoround-ours": dict(method="autoround", group_size=group, iters=args.autoround_iters, **calib),
    } | {name: dict(method="gptq", group_size=group, **(calib | change)) for name, change in CANDIDATES.items()}
    if row == "bf16":
        return load_causal_lm(src, device=device), Path(src)
    if row in plans:
        dest = work / f"{row}-g{group}-s{seed}"
        res = quantize(str(model_spec), make_config(**plans[row]), dest, overwrite=True, device=device,
                       measure_quality=False)
        return load_causal_lm(res.output, device=device), Path(res.output)
    if row == "autoround":
        return build_autoround(src, tok, group, seed, args, device, work)
    return build_peer(row, group, src, device, work), None


def build_peer(row, group, src, device, work):
    """Peers that quantize in memory (scored in memory): bitsandbytes NF4 (transformers), HQQ (the hqq library:
    transformers 5.17 says HQQ is "not available yet"), torchao int4 weight-only (tinygemm layout on GPU; on CPU
    torchao 0.18 needs the mslk package, which does not install here, so the row records that)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if row == "nf4":
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        return AutoModelForCausalLM.from_pretrained(src, quantization_config=qc, dtype=torch.bfloat16,
                                                    device_map=device).eval()
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).to(device).eval()
    if row == "hqq":
        from hqq.core.quantize import BaseQuantizeConfig
        from hqq.models.hf.base import AutoHQQHFModel

        AutoHQQHFModel.quantize_model(model, quant_config=BaseQuantizeConfig(nbits=4, group_size=group),
                                      compute_dtype=torch.bfloat16, device=device)
    elif row == "torchao-int4":
        from torchao.quantization import Int4WeightOnlyConfig, quantize_

        quantize_(model, Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d"))
    else:
        raise ValueError(f"unknown row {row}")
    return model


def build_autoround(src, tok, group, seed, args, device, work):
    from auto_round import AutoRound
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    dest = work / f"autoround-g{group}-s{seed}"
    ar = AutoRound(model, tok, bits=4, group_size=group, sym=True, nsamples=args.calib_samples,
                   seqlen=args.calib_seqlen, seed=seed, dataset=load_texts(args.calib), iters=args.autoround_iters,
                   device_map=device)
    ar.quantize_and_save(str(dest), format="auto_gptq")
    dest = next(p.parent for p in sorted(dest.rglob("config.json")))  # auto-round adds a <model>-w4g<G> folder
    return load_causal_lm(str(dest), device=device), dest


def linear_bits(model, files) -> float | None:
    """Bits per decoder-Linear weight: from the files when there are any, else from the in-memory tensors."""
    if files is not None and any(Path(files).glob("*.safetensors")):
        meta = Path(files) / "compress.json"
        if meta.is_file() and "bits_per_weight" in read_meta(files).metrics:
            return read_meta(files).metrics["bits_per_weight"]
        from compress.quantize.budget import bits_per_weight

        try:
            return bits_per_weight(files)["bits_per_weight"]
        except Exception:  # noqa: BLE001 - a layout bits_per_weight does not know: fall back to memory
            pass
    head = model.get_output_embeddings()
    params = nbytes = 0
    for name, module in model.named_modules():
        if ".layers." not in f".{name}" or module is head or list(module.children()):
            continue
        tensors = list(module.state_dict().values())
        if not any(t.dim() == 2 for t in tensors if isinstance(t, torch.Tensor)):
            continue
        params += _linear_params(module)
        nbytes += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return round(8 * nbytes / params, 4) if params else None


def _linear_params(module) -> int:
    for a, b in (("in_features", "out_features"), ("infeatures", "outfeatures")):
        if hasattr(module, a) and hasattr(module, b):
            return getattr(module, a) * getattr(module, b)
    return module.weight.numel()


@torch.no_grad()
def q41_grid_share(model, tol: float = 0.05) -> float:
    """Share of decoder Linear weights within `tol` of a step of their 32-block's Q4_1 grid point."""
    near = total = 0
    for layer in decoder_linears(model).values():
        w = layer.weight.float().reshape(-1, 32)
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
        step = ((hi - lo) / 15).clamp_min(1e-12)
        frac = (w - lo) / step
        near += ((frac - frac.round()).abs() < tol).sum().item()
        total += w.numel()
    return round(near / total, 4)


def build_tiny_trained(path: Path) -> str:
    """The tests' tiny Llama trained on real text (stdlib sources + Python docs), rebuilt once."""
    from compress.data import builtin_texts, split_heldout
    from compress.testing import stdlib_sources, train_tiny_llama, train_tokenizer

    if not (path / "config.json").is_file():
        code = stdlib_sources(600_000)
        docs_train, _ = split_heldout(builtin_texts())
        tok = train_tokenizer(512, code + docs_train)
        train_tiny_llama(path, code + docs_train, tok, steps=250)
    return str(path)


def versions() -> dict:
    import importlib.metadata as md

    v = runtime.library_versions()
    for pkg in ("auto-round", "hqq", "bitsandbytes", "torchao", "gptqmodel"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    return v


if __name__ == "__main__":
    main()
