"""`quantize(model, config, output)`: one verb for every method.

Flow: resolve MODEL → (GGUF: convert once) → calibration blocks from the data spec's training
split → method backend writes a checkpoint into a temporary directory → reload that checkpoint
the way users will (plain `from_pretrained`) and measure perplexity on the data spec's held-out
split → write `compress.json` → rename into place.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from compress import runtime
from compress.artifacts import ArtifactMeta, SourceInfo, atomic_dir, check_output, dir_size_bytes, now_iso, write_meta
from compress.data import load_texts, split_heldout, token_blocks
from compress.errors import CompressError
from compress.models import (ModelRef, checkpoint_dir, config_dtype, fingerprint, load_causal_lm, load_tokenizer,
                             read_config, resolve)
from compress.quantize import budget, verify
from compress.quantize.config import Method, QuantizeConfig, make_config

__all__ = ["QuantizeConfig", "QuantizeResult", "make_config", "quantize", "quality_check"]

QUALITY_TOKENS = 1024  # held-out tokens for the quick quality figure: a sanity check, not a benchmark
QUALITY_CONTEXT = 512
ROUNDTRIP_TOLERANCE = verify.ROUNDTRIP_TOLERANCE  # the reload check's rule lives in verify.py


@dataclass
class QuantizeResult:
    output: str
    method: str
    bits: int | None  # None: per-layer widths from --bits-budget
    group_size: int | None
    size_bytes: int
    time_s: float
    perplexity: float | None
    bits_per_weight: float | None = None  # decoder Linear layers, scales and zeros included (from the files)

    def to_dict(self) -> dict:
        return asdict(self)


def quantize(model: str, cfg: QuantizeConfig, output: str | Path, overwrite: bool = False,
             device: str | None = None, measure_quality: bool = True) -> QuantizeResult:
    output = Path(output)
    check_output(output, overwrite)
    device = device or runtime.default_device()
    ref = resolve(model)
    src = checkpoint_dir(ref)
    widths = _check_quantizable(ref, src)
    cfg, group_choice = _fit_groups(cfg, widths)
    tokenizer = load_tokenizer(ref)
    train_texts, heldout_texts = split_heldout(load_texts(cfg.calib))
    calib_ids = None
    if cfg.uses_calibration:
        calib_ids = token_blocks(tokenizer, train_texts, cfg.calib_samples, cfg.calib_seqlen, cfg.seed,
                                 source="calibration data")
    source_dtype = _source_dtype(ref)
    t0 = time.perf_counter()
    plan = _budget_plan(src, cfg, calib_ids, device, 32 if source_dtype == "float32" else 16)
    with atomic_dir(output, overwrite) as tmp:
        probe = verify.probe_ids(tokenizer)
        packed = cfg.packed
        if cfg.method == Method.autoround.value:
            from compress.quantize.autoround import quantize_autoround

            extra = quantize_autoround(src, cfg, calib_ids, tmp, device, source_dtype)
            references = verify.gptq_references(tmp, probe, device, runtime.compute_dtype(device))
        elif packed:
            from compress.quantize.gptq import quantize_gptq

            extra = quantize_gptq(src, cfg, calib_ids, tmp, device, source_dtype, plan.widths if plan else None)
            if plan:
                extra["budget"] = {"widths": plan.widths, "scores": plan.scores,
                                   "planned_bits_per_weight": plan.planned_bits_per_weight}
            references = verify.gptq_references(tmp, probe, device, runtime.compute_dtype(device))
        else:
            from compress.quantize.int8 import quantize_int8

            extra, reference = quantize_int8(src, cfg, tmp, device, probe)
            references = {"in-memory": reference}
        tokenizer.save_pretrained(str(tmp))
        elapsed = time.perf_counter() - t0
        reloaded = load_causal_lm(str(tmp), device=device)
        roundtrip = verify.check_roundtrip(verify.logits(reloaded, probe), references, cfg.method)
        ppl = quality_check(reloaded, heldout_texts, tokenizer) if measure_quality else None
        del reloaded
        resolved = cfg.applied() | {"backend": _jsonable(extra), "device": device}
        if calib_ids is not None:  # which tokens calibrated: `mix` and dataset specs can differ between environments
            resolved["calib_sha256"] = hashlib.sha256(calib_ids.numpy().tobytes()).hexdigest()[:16]
        if group_choice is not None:  # the requested size and why it changed (compress.quantize.groups)
            resolved |= {"group_size_requested": group_choice.requested, "group_size_note": group_choice.note}
        metrics = dict(roundtrip)
        bpw = budget.bits_per_weight(tmp) if packed else None
        if bpw:
            metrics |= bpw
        if ppl is not None:
            metrics |= {"heldout_perplexity": ppl, "heldout_tokens": QUALITY_TOKENS}
        write_meta(tmp, ArtifactMeta(
            kind="quantized", method=cfg.method,
            source=SourceInfo(spec=ref.spec, kind=ref.kind, sha256=fingerprint(ref)),
            config=resolved, versions=runtime.library_versions(), time_taken_s=round(elapsed, 3),
            created_at=now_iso(), metrics=metrics,
        ))
        size = dir_size_bytes(tmp, "*.safetensors")
    return QuantizeResult(str(output), cfg.method, cfg.bits, cfg.group_size, size, round(elapsed, 2), ppl,
                          bpw["bits_per_weight"] if bpw else None)


def _budget_plan(src: str, cfg: QuantizeConfig, calib_ids, device: str, keep_bits: int):
    """A `--bits-budget` run's per-layer widths, from sensitivity measured on the calibration blocks."""
    if cfg.bits_budget is None:
        return None
    return budget.plan(src, calib_ids, cfg.bits_budget, cfg.base_bits, cfg.group_size, cfg.sym, device, keep_bits)


def quality_check(model, texts: list[str], tokenizer) -> float:
    """Quick perplexity on held-out text: a sanity figure printed with each result, not a benchmark."""
    from compress.evaluate.perplexity import perplexity

    return round(perplexity(model, tokenizer, texts, context_len=QUALITY_CONTEXT, max_tokens=QUALITY_TOKENS).perplexity, 4)


def _fit_groups(cfg: QuantizeConfig, widths: set[int]):
    """GPTQ/RTN/AutoRound: the group size that divides every layer width (compress.quantize.groups), on stderr."""
    if not cfg.packed:
        return cfg, None
    from compress.quantize.groups import fit_group_size

    choice = fit_group_size(cfg.group_size, widths)
    if choice.note:
        print(f"note: {choice.note}", file=sys.stderr, flush=True)
    return cfg.model_copy(update={"group_size": choice.group_size}), choice


def _check_quantizable(ref: ModelRef, src: str) -> set[int]:
    """Fail before any work when the model has no Linear layers outside the LM head; return their input widths."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(src)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001
        msg = (str(e).strip() or type(e).__name__).splitlines()[0][:300]
        raise CompressError(f"{ref.spec} is not a causal LM that transformers can build: {msg}") from e
    head = skeleton.get_output_embeddings()
    linears = [n for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
    if not linears:
        raise CompressError(f"{ref.spec} has no Linear layers to quantize (outside the LM head)")
    return {m.in_features for n, m in skeleton.named_modules() if n in linears}


def _source_dtype(ref: ModelRef) -> str:
    name = config_dtype(read_config(ref)) or "bfloat16"
    return name if name in ("bfloat16", "float16", "float32") else "bfloat16"


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))
