"""GPTQ and RTN through gptqmodel, saved in the GPTQ (v1) checkpoint format.

GPTQ: per decoder layer, gptqmodel collects each Linear's input Hessian H = 2 X Xᵀ from the
calibration activations, dampens it (`damp`·mean(diag H)), and quantizes columns in blocks with
lazy batch updates, compensating each column's rounding error on the columns not yet quantized
(Frantar et al., 2022). RTN rounds each group to the nearest grid point with no compensation,
and is packed identically, so the two compare on equal terms.

Checkpoint fix-ups done here, each checked by tests:
- non-quantized tensors (embeddings, norms) go back to the source dtype (quantizing on a CPU
  runs in fp32, which would otherwise double their size on disk);
- `format`/`checkpoint_format` must say `gptq` (v1), the layout the weights are in (optimum's
  quantizer has written `gptq_v2` over v1 weights, which reloads silently wrong);
- when some layer's input width is not a multiple of the group size, gptqmodel's fast CPU kernel
  (and some GPU kernels) cannot run it; the config then names the portable `torch` backend so a
  plain `from_pretrained` works everywhere. GPU users can override with `GPTQConfig(backend=...)`;
- a `--bits-budget` plan keeps some layers unquantized: gptqmodel skips them through negative
  `dynamic` overrides, and the config lists the quantized ones in `modules_in_block_to_quantize`
  (full names; optimum matches by suffix) so plain transformers builds the same mix.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch

from compress import runtime
from compress.errors import CompressError
from compress.quantize import grid
from compress.quantize.config import Method, QuantizeConfig

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _gptqmodel():
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
    logging.getLogger("gptqmodel").setLevel(logging.WARNING)
    import gptqmodel
    from gptqmodel.looper import loop_processor
    from gptqmodel.quantization import quantizer

    grid.install(quantizer.Quantizer)

    from compress.models import cache_dir

    # gptqmodel writes per-layer logs to ./logs of whatever directory the user is in; keep them in our cache.
    loop_processor._PROJECT_LOG_DIR = cache_dir() / "gptqmodel-logs"
    return gptqmodel


def backend_config(cfg: QuantizeConfig, keep: list[str] | None = None) -> dict:
    """The gptqmodel QuantizeConfig arguments this run resolves to (recorded in the artifact).
    `keep`: module names left unquantized (a `--bits-budget` plan), as gptqmodel negative overrides."""
    kw = dict(
        bits=cfg.base_bits,
        group_size=cfg.group_size,
        desc_act=cfg.act_order,
        sym=cfg.sym,
        damp_percent=cfg.damp,
        offload_to_disk=False,
    )
    if cfg.mse:  # gptqmodel's Quantizer.find_params: shrink the scale by p = 1, 0.99, ... 0.21, keep the best
        kw["mse"] = cfg.mse
    if cfg.method == Method.rtn.value:
        kw["weight_only"] = "rtn"
    if cfg.group_size == -1 and cfg.method == Method.gptq.value:
        kw["act_group_aware"] = False  # gptqmodel's group-aware reordering needs groups
    if keep:
        kw["dynamic"] = {f"-:^{re.escape(name)}$": {} for name in keep}
    return kw


def quantize_gptq(src: str, cfg: QuantizeConfig, calib_ids: torch.Tensor | None, out: Path,
                  device: str, source_dtype: str, widths: dict[str, int] | None = None) -> dict:
    """Quantize checkpoint `src` (dir or hub id) into `out`; returns extra resolved settings.
    `widths` (a `--bits-budget` plan): decoder Linear name → base bits or 16 (kept in the source dtype)."""
    gm = _gptqmodel()
    keep = sorted(n for n, w in (widths or {}).items() if w > cfg.base_bits)
    qkw = backend_config(cfg, keep)
    try:
        qc = gm.QuantizeConfig(**qkw)
        model = gm.GPTQModel.load(src, qc, device=device, dtype=runtime.compute_dtype(device))
    except CompressError:
        raise
    except Exception as e:  # noqa: BLE001 - unsupported architecture, bad checkpoint
        raise CompressError(f"gptqmodel cannot load {src} for quantization: {error_line(e)}") from e
    calibration = None
    if calib_ids is not None:
        calibration = [{"input_ids": row.tolist(), "attention_mask": [1] * row.numel()} for row in calib_ids]
    with grid.signed_sym():
        model.quantize(calibration, batch_size=4 if device == "cpu" else 8)
    model.save(str(out))
    for junk in ("quant_log.csv",):
        (out / junk).unlink(missing_ok=True)
    quantized = sorted(n for n, w in (widths or {}).items() if w == cfg.base_bits) if keep else None
    backend = finish_checkpoint(out, cfg, source_dtype, quantized)
    extra = {"gptqmodel": qkw, "load_backend": backend}
    if cfg.sym:
        extra["sym_grid"] = grid.SYM_GRID
    return extra


def finish_checkpoint(out: Path, cfg: QuantizeConfig, source_dtype: str, quantized: list[str] | None = None) -> str:
    """The fix-ups every GPTQ v1 artifact gets (gptq, rtn, autoround); returns the load backend named."""
    return _fix_config(out, cfg, _cast_unquantized(out, source_dtype), quantized)


def _cast_unquantized(out: Path, dtype_name: str) -> set[int]:
    """Cast float tensors that were not quantized back to the source dtype; return quantized input widths."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    dtype = _DTYPES.get(dtype_name, torch.bfloat16)
    in_widths: set[int] = set()
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            meta = f.metadata() or {"format": "pt"}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for k, t in tensors.items():
            if k.endswith(".g_idx"):
                in_widths.add(t.numel())
            elif t.is_floating_point() and not k.endswith(".scales") and t.dtype != dtype:
                tensors[k] = t.to(dtype)
        save_file(tensors, str(shard), metadata=meta)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = dtype_name
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return in_widths


def _fix_config(out: Path, cfg: QuantizeConfig, in_widths: set[int], quantized: list[str] | None) -> str:
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    qc = config.get("quantization_config")
    if not qc:
        raise CompressError("gptqmodel wrote no quantization_config: the checkpoint would load unquantized")
    qc["format"] = qc["checkpoint_format"] = "gptq"  # v1 layout, which gptqmodel.save writes
    if quantized is not None:  # plain transformers drops gptqmodel's `dynamic`; this it honours
        qc["modules_in_block_to_quantize"] = [quantized]
    ragged = cfg.group_size > 0 and any(w % cfg.group_size for w in in_widths)
    backend = "torch" if ragged else "auto"
    if ragged:
        qc["backend"] = backend
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    qcfg = out / "quantize_config.json"
    if qcfg.is_file():
        q = json.loads(qcfg.read_text())
        q["format"] = q["checkpoint_format"] = "gptq"
        qcfg.write_text(json.dumps(q, indent=2) + "\n")
    return backend


def error_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
