"""The packed CPU kernels (compress.quantize.cpu_kernels): same weights as the artifact, bf16 arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress.models import load_tokenizer
from compress.quantize import make_config, quantize
from compress.quantize.cpu_kernels import Int4Linear, Int8Linear, fast_cpu_reason, load_cpu_fast
from compress.quantize.verify import gptq_references, logits, probe_ids, relative_error


def test_int4_linear_is_the_gptq_weight_in_bf16():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (64, 128), generator=g)
    s = torch.rand(4, 64, generator=g) * 0.02 + 0.001
    z = torch.randint(5, 11, (4, 64), generator=g)  # asymmetric zero points
    x = torch.randn(3, 128, generator=g)
    w = (s.repeat_interleave(32, 0) * (q.t().float() - z.repeat_interleave(32, 0).float())).t()  # [N, K]
    out = Int4Linear(q, s, z, 32)(x).float()
    exact = torch.nn.functional.linear(x, w)
    assert (out - exact).abs().max() <= 0.02 * exact.abs().max()  # bf16 rounding of x, s and the offset only


def test_int8_linear_matches_dequantized():
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-128, 128, (48, 96), generator=g, dtype=torch.int8)
    s = torch.rand(48, generator=g) * 0.01
    x = torch.randn(2, 96, generator=g)
    exact = torch.nn.functional.linear(x, q.float() * s[:, None])
    assert (Int8Linear(q, s)(x).float() - exact).abs().max() <= 0.02 * exact.abs().max()


def test_fast_loader_reproduces_the_artifact(tiny_model, tmp_path):
    art = Path(quantize(str(tiny_model), make_config(method="rtn", group_size=32), tmp_path / "rtn", device="cpu",
                        measure_quality=False).output)
    import json

    config = json.loads((art / "config.json").read_text())
    assert fast_cpu_reason(config) is None
    assert "act-order" in fast_cpu_reason(config | {"quantization_config": config["quantization_config"] | {"desc_act": True}})
    ids = probe_ids(load_tokenizer(art))
    fast = load_cpu_fast(art)
    assert {type(m).__name__ for m in fast.modules()} >= {"Int4Linear"}
    refs = gptq_references(art, ids)
    assert relative_error(logits(fast, ids), refs["fp32"]) < 0.05  # a bf16 model against the fp32 reference
    from compress.bench.fastpath import load_for_decode
    from compress.models import resolve

    model, path = load_for_decode(resolve(str(art)), "cpu")  # `compress bench` on a CPU takes the packed kernels
    assert path.loader == "compress.quantize.cpu_kernels" and path.kernels.get("Int4Linear") == 14


@pytest.mark.parametrize("config,needle", [
    ({"quantization_config": {"quant_method": "bitsandbytes"}}, "bitsandbytes"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 48}}, "group size 48"),
    ({}, "dense"),
])
def test_fast_cpu_reason_says_why_not(config, needle):
    assert needle in fast_cpu_reason(config)
