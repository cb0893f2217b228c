"""Does gptqmodel's `rotation="hadamard"` give a checkpoint that plain transformers reloads correctly? (issue 16)

Quantizes a tiny random Llama (hidden 128, 2 layers) at 8 bits g32 (so quantization error is small and a wrong
reload stands out) with and without gptqmodel 7.6's Hadamard rotation, saves it, and compares logits on the same
tokens: the source model, plain `AutoModelForCausalLM.from_pretrained` (what `compress` artifacts promise), and
gptqmodel's own loader (`GPTQModel.load`), as relative L2 errors.

Why it can fail: the rotation fuses an exact Hadamard H into `mlp.down_proj`'s weights, which must be applied
to down_proj's input activations at inference; gptqmodel's loader re-attaches that online transform
(`models/loader.py::_setup_rotation_online_had`), transformers' GPTQ integration knows nothing of it.

gptqmodel 7.6's rotation calls `.cuda()` unconditionally (`rotation/hadamard_utils.py::apply_exact_had_to_linear`);
on a machine without CUDA this script aliases `Tensor.cuda` to the identity for the run (same arithmetic, on CPU).

    .venv/bin/python benchmarks/quality_rotation_check.py --out benchmarks/results/quality_rotation_check.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from compress import runtime


def check(rotation: str | None, src: Path, work: Path, calib: list[dict], probe: torch.Tensor) -> dict:
    import gptqmodel as gm
    from transformers import AutoModelForCausalLM

    qc = gm.QuantizeConfig(bits=8, group_size=32, sym=True, rotation=rotation, offload_to_disk=False)
    model = gm.GPTQModel.load(str(src), qc, device="cpu", dtype=torch.float32)
    model.quantize(calib, batch_size=4)
    out = work / f"q-{rotation}"
    model.save(str(out))
    with torch.no_grad():
        source = AutoModelForCausalLM.from_pretrained(src).eval()(probe).logits
        plain = AutoModelForCausalLM.from_pretrained(out).eval()(probe).logits.float()
        own = gm.GPTQModel.load(str(out), device="cpu").model(probe).logits.float()

    def rel(a, b):
        return round(((a - b).norm() / b.norm()).item(), 5)

    return dict(rotation=rotation, plain_vs_source=rel(plain, source), gptqmodel_loader_vs_source=rel(own, source),
                plain_vs_gptqmodel_loader=rel(plain, own))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from compress.data import builtin_texts, token_blocks
    from compress.testing import build_tiny_llama, train_tokenizer

    cuda_aliased = not torch.cuda.is_available()
    if cuda_aliased:
        torch.Tensor.cuda = lambda self, *a, **k: self  # see the module docstring
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = train_tokenizer(512)
        src = build_tiny_llama(work / "src", tokenizer=tok)
        ids = token_blocks(tok, builtin_texts(), 16, 128, 0)
        calib = [{"input_ids": r.tolist(), "attention_mask": [1] * r.numel()} for r in ids]
        rows = [check(rot, src, work, calib, ids[:2, :64]) for rot in (None, "hadamard")]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = dict(benchmark="quality_rotation_check", created_at=now,
                  hardware=runtime.hardware(), versions=runtime.library_versions(), cuda_aliased=cuda_aliased,
                  model="tiny random Llama (hidden 128, 2 layers, untied), 8-bit g32 sym", rows=rows)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
