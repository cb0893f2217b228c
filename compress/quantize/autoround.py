"""AutoRound (the `auto-round` library's SignRound) behind `compress quantize --method autoround`.

SignRound (Cheng et al., 2023): per decoder block, learn a rounding offset in [-0.5, 0.5] for every
weight and a scale on each group's min/max (clipping), by signed gradient descent on the block's
output error against the unquantized block, on the calibration activations; `iters` steps per block.
It beat our GPTQ on KL at equal bits per weight in the issue-16 table (benchmarks/RESULTS.md).

Calibration: the same token blocks `gptq` gets (compress.data.token_blocks from the data spec's
training split), handed to auto-round as ready token ids with an all-ones attention mask, so the
two methods see equal data (auto-round's own dataset loader, its pad-token masking and its default
hub dataset are not used).

Artifact: auto-round's `auto_gptq` export, a GPTQ v1 checkpoint (qweight/qzeros/scales/g_idx,
zeros stored minus one), finished like a gptq artifact (compress.quantize.gptq.finish_checkpoint):
unquantized tensors and `dtype` back to the source dtype, `format`/`checkpoint_format` = gptq.
So it loads, serves, exports to GGUF and passes the reload check the way a gptq artifact does.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import multiprocessing
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from compress import runtime
from compress.errors import CompressError
from compress.quantize.config import QuantizeConfig
from compress.quantize.gptq import error_line, finish_checkpoint

INSTALL = "pip install auto-round==0.16.1"
BATCH_SIZE = 8  # auto-round's default calibration batch; recorded in the artifact


def _auto_round():
    try:
        import auto_round
    except ImportError as e:
        raise CompressError(f"--method autoround needs the auto-round library: {INSTALL}") from e
    logging.getLogger("autoround").setLevel(logging.WARNING)  # its per-block INFO lines; tqdm still shows progress
    return auto_round


def signround_args(cfg: QuantizeConfig) -> dict:
    """The SignRoundConfig arguments this run resolves to (lr None = auto-round's default schedule)."""
    return dict(bits=cfg.bits, group_size=cfg.group_size, sym=cfg.sym, iters=cfg.iters, lr=cfg.lr)


def calibration(calib_ids: torch.Tensor) -> list[dict]:
    """One {input_ids, attention_mask} per block, [1, L] each: auto-round batches them itself."""
    return [{"input_ids": row[None], "attention_mask": torch.ones_like(row[None])} for row in calib_ids]


def quantize_autoround(src: str, cfg: QuantizeConfig, calib_ids: torch.Tensor, out: Path, device: str,
                       source_dtype: str) -> dict:
    """Quantize checkpoint `src` into `out` (a GPTQ v1 checkpoint); returns the resolved backend settings.

    auto-round runs in a spawned child process: it keeps module-level state between runs (seen here: after a
    3-bit or per-channel run in the same process, a later 4-bit g32 run exported weights that reload to
    17x the source's perplexity, while each run alone is fine). A child per run keeps that state out of the
    caller's process."""
    if importlib.util.find_spec("auto_round") is None:  # fail in one line before a process starts (the child
        raise CompressError(f"--method autoround needs the auto-round library: {INSTALL}")  # imports it)
    args = signround_args(cfg)
    staging = out / ".autoround"
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(src, args, calib_ids, str(staging), device, cfg.seed, send),
                        name="compress-autoround")
    child.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:  # the child died before it could say why
        status, value = None, None
    child.join()
    if status is None:
        status, value = "error", f"the auto-round process died (exit code {child.exitcode})"

    if status == "refused":
        raise CompressError(f"auto-round cannot quantize {src}: {value}")
    if status == "error":
        raise CompressError(f"auto-round failed on {src}: {value}")
    _move_up(staging, out)
    backend = finish_checkpoint(out, cfg, source_dtype)
    return {"auto_round": args | {"lr_resolved": value, "batch_size": BATCH_SIZE, "format": "auto_gptq",
                                  "nsamples": len(calib_ids), "seqlen": int(calib_ids.shape[1])},
            "load_backend": backend}


def _child(src: str, args: dict, calib_ids: torch.Tensor, staging: str, device: str, seed: int, send) -> None:
    """The child process: build and run auto-round, save into `staging`; send (status, lr used or error line)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        ar = _auto_round()
        from auto_round.algorithms.quantization.sign_round.config import SignRoundConfig

        try:
            alg = SignRoundConfig(**args)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=runtime.compute_dtype(device))
            tokenizer = AutoTokenizer.from_pretrained(src)
            rounder = ar.AutoRound(model, tokenizer=tokenizer, alg_configs=alg, dataset=calibration(calib_ids),
                                   nsamples=len(calib_ids), seqlen=calib_ids.shape[1], batch_size=BATCH_SIZE,
                                   seed=seed, device_map=device)
        except Exception as e:  # noqa: BLE001 - an architecture or option auto-round refuses
            send.send(("refused", error_line(e)))
            return
        with _frozen_heap():
            rounder.quantize_and_save(staging, format="auto_gptq")
        send.send(("ok", alg.lr))
    except Exception as e:  # noqa: BLE001 - reported by the parent as one line
        send.send(("error", error_line(e)))
    finally:
        send.close()


@contextmanager
def _frozen_heap():
    """auto-round runs gc.collect() after every block and cache step; with torch, transformers and gptqmodel
    imported, each full collection walks millions of live objects (~1-2 s on a busy 2-core CPU, most of a
    tiny model's run). gc.freeze() moves the objects alive now (modules, the model) out of the collector's
    view; garbage made during the run is still collected."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _move_up(staging: Path, out: Path) -> None:
    """auto-round saves into <staging>/<model name>-w<bits>g<group>/: move that folder's files into `out`."""
    configs = sorted(staging.rglob("config.json"))
    if not configs:
        raise CompressError("auto-round wrote no config.json: nothing to publish")
    for f in configs[0].parent.iterdir():
        shutil.move(str(f), str(out / f.name))
    shutil.rmtree(staging)

