"""8-bit methods applied at load time by transformers, saved with `save_pretrained`.

- `int8`: bitsandbytes LLM.int8() (Dettmers et al., 2022): int8 weights with per-row scales; at run
  time, activation columns with outliers (> 6.0) go through an fp16 matmul. fp16 activations.
- `int8-wo`: torchao int8 weight-only, one scale per output channel; bf16 activations, dequantized
  inside the matmul (PyTorch's `_weight_int8pack_mm` on CPU, torchao/inductor kernels on GPU).
  Reloading needs torchao installed (a dependency of compress; transformers handles the rest).
"""

from __future__ import annotations

from pathlib import Path

import torch

from compress.errors import CompressError
from compress.quantize.config import Method, QuantizeConfig


def quantization_config(cfg: QuantizeConfig):
    from transformers import BitsAndBytesConfig, TorchAoConfig

    if cfg.method == Method.int8.value:
        return BitsAndBytesConfig(load_in_8bit=True), torch.float16
    from torchao.quantization import Int8WeightOnlyConfig

    return TorchAoConfig(Int8WeightOnlyConfig()), torch.bfloat16


def quantize_int8(src: str, cfg: QuantizeConfig, out: Path, device: str, probe: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Quantize at load time, save to `out`; return resolved settings and the in-memory model's probe logits."""
    from transformers import AutoModelForCausalLM

    from compress.quantize.verify import logits

    qconfig, dtype = quantization_config(cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(src, quantization_config=qconfig, dtype=dtype, device_map=device)
    except Exception as e:  # noqa: BLE001
        msg = (str(e).strip() or type(e).__name__).splitlines()[0][:300]
        raise CompressError(f"cannot quantize {src} with {cfg.method}: {msg}") from e
    reference = logits(model.eval(), probe)
    model.save_pretrained(str(out))
    return {"transformers_quantization_config": qconfig.to_dict(),
            "activation_dtype": str(dtype).removeprefix("torch.")}, reference
