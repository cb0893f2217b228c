"""The reload check (compress.quantize.verify) both ways, and the group size chosen for ragged widths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from compress.artifacts import read_meta
from compress.errors import CompressError
from compress.models import load_causal_lm, load_tokenizer
from compress.quantize import make_config, quantize
from compress.quantize.groups import fit_group_size
from compress.quantize.verify import ROUNDTRIP_TOLERANCE, check_roundtrip, gptq_references, logits, probe_ids


def _relabel_v2(src: Path, dst: Path) -> Path:
    """The optimum trap: `gptq_v2` written over v1 weights (every zero point off by one step)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"]["checkpoint_format"] = config["quantization_config"]["format"] = "gptq_v2"
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def ragged_rtn(tmp_path_factory, tokenizer):
    """A tiny Llama whose widths (96, 192) are not multiples of 64, quantized with --group-size 64."""
    from compress.testing import build_tiny_llama

    root = tmp_path_factory.mktemp("ragged")
    model = build_tiny_llama(root / "model", seed=1, tokenizer=tokenizer, hidden=96, intermediate=192)
    cfg = make_config(method="rtn", bits=4, group_size=64)
    return Path(quantize(str(model), cfg, root / "rtn", device="cpu", measure_quality=False).output)


def test_group_size_kept_when_it_divides_every_width():
    choice = fit_group_size(128, {576 * 2, 1536})
    assert choice.group_size == 128 and choice.note is None


def test_group_size_for_smollm2_widths():
    choice = fit_group_size(128, {576, 1536})
    assert choice.group_size == 64 and choice.requested == 128
    assert "576" in choice.note and "using 64" in choice.note


def test_group_size_unfittable_is_kept_and_said():
    choice = fit_group_size(64, {100, 200})  # 100 = 4·25: no power of two >= 16 divides it
    assert choice.group_size == 64 and "keeping 64" in choice.note


def test_ragged_widths_resolve_and_are_recorded(ragged_rtn, capfd):
    meta = read_meta(ragged_rtn)
    assert meta.config["group_size"] == 32 and meta.config["group_size_requested"] == 64
    assert "using 32" in meta.config["group_size_note"]
    qc = json.loads((ragged_rtn / "config.json").read_text())["quantization_config"]
    assert qc["group_size"] == 32 and "backend" not in qc  # the fast kernel runs it: no portable fallback


def test_bf16_kernel_emulation_matches_one_layer_exactly(ragged_rtn):
    """The bf16 reference computes a layer exactly as gptqmodel's CPU kernel does (same bits)."""
    from compress.quantize.verify import bf16_kernel, dequantized_reference

    reloaded = load_causal_lm(str(ragged_rtn), device="cpu")
    reference = dequantized_reference(ragged_rtn)
    name = "model.layers.1.mlp.down_proj"
    kernel, emulated = dict(reloaded.named_modules())[name], dict(reference.named_modules())[name]
    assert type(kernel).__name__ == "TorchAtenLinear"  # the bf16 int4pack kernel, not the portable one
    x = torch.randn(3, kernel.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), bf16_kernel(reference):
        assert torch.equal(kernel(x), emulated(x))
        assert not torch.equal(kernel(x), torch.nn.functional.linear(x, emulated.weight))  # fp32 differs


def test_reload_metrics_record_the_derived_tolerance(ragged_rtn):
    metrics = read_meta(ragged_rtn).metrics
    assert metrics["roundtrip_tolerance"] == max(ROUNDTRIP_TOLERANCE, 2 * metrics["roundtrip_bf16_noise"])
    assert metrics["roundtrip_max_rel_logit_error"] <= metrics["roundtrip_tolerance"]


def test_tolerance_follows_bf16_noise_and_still_refuses_a_step_shift():
    torch.manual_seed(0)
    fp32 = torch.randn(1, 8, 50) * 10
    scale = fp32.abs().max()
    bf16 = fp32 + 0.03 * scale * torch.randn_like(fp32).sign()  # bf16 arithmetic moved the logits 3%
    kernel_out = bf16 + 0.045 * scale * torch.randn_like(fp32).sign()  # chaotic drift: 4.5% off, within 2 × 3%
    metrics = check_roundtrip(kernel_out, {"fp32": fp32, "bf16-kernel": bf16}, "gptq")
    assert abs(metrics["roundtrip_tolerance"] - 0.06) < 1e-6
    with pytest.raises(CompressError, match="tolerance 2.0%"):  # no bf16 reference: the fixed tolerance
        check_roundtrip(kernel_out, {"fp32": fp32}, "gptq")
    with pytest.raises(CompressError, match="does not reload to the quantized model"):
        check_roundtrip(fp32 + 0.5 * scale, {"fp32": fp32, "bf16-kernel": bf16}, "gptq")


def test_v2_trap_refused_by_both_references(ragged_rtn, tmp_path):
    bad = _relabel_v2(ragged_rtn, tmp_path / "bad")
    ids = probe_ids(load_tokenizer(bad))
    refs = gptq_references(ragged_rtn, ids)
    with pytest.raises(CompressError, match=r"against the fp32 reference.*against the bf16-kernel reference"):
        check_roundtrip(logits(load_causal_lm(str(bad), device="cpu"), ids), refs, "rtn")


@pytest.mark.slow
def test_smollm2_g64_artifact_passes_and_its_v2_relabel_does_not(smollm2_gguf, tmp_path):
    """The issue's case: SmolLM2 int4 g64 reloads onto the bf16 CPU kernel, up to 3.5% off the fp32
    reference (GPTQ), and was refused. It passes within the bf16-derived tolerance; the v2 trap still fails."""
    cfg = make_config(method="rtn", bits=4, group_size=64)
    art = Path(quantize(str(smollm2_gguf), cfg, tmp_path / "rtn64", device="cpu", measure_quality=False).output)
    metrics = read_meta(art).metrics
    assert metrics["roundtrip_max_rel_logit_error"] <= metrics["roundtrip_tolerance"], metrics
    bad = _relabel_v2(art, tmp_path / "bad")
    ids = probe_ids(load_tokenizer(art))
    refs = gptq_references(art, ids)
    with pytest.raises(CompressError, match="does not reload"):
        check_roundtrip(logits(load_causal_lm(str(bad), device="cpu"), ids), refs, "rtn")


def test_half_dtype_reference_for_gpu_reloads_still_refuses_the_v2_trap(ragged_rtn, tmp_path, tokenizer):
    """On a GPU the reloaded model runs wholly in bf16, so the references add the dequantized model run in that
    dtype (here on the CPU, the same arithmetic): the tolerance follows its distance from fp32, and the v1/v2
    trap is still refused."""
    ids = probe_ids(tokenizer)
    refs = gptq_references(ragged_rtn, ids, "cpu", torch.bfloat16)
    assert set(refs) == {"fp32", "bf16-kernel", "bfloat16-model"}
    reloaded_bf16 = logits(load_causal_lm(str(ragged_rtn), device="cpu", dtype=torch.bfloat16), ids)
    metrics = check_roundtrip(reloaded_bf16, refs, "rtn")
    noise = max((refs[k] - refs["fp32"]).abs().max().item() for k in ("bf16-kernel", "bfloat16-model"))
    assert metrics["roundtrip_bf16_noise"] == pytest.approx(noise / refs["fp32"].abs().max().item())
    bad = _relabel_v2(ragged_rtn, tmp_path / "v2")
    with pytest.raises(CompressError, match="does not reload"):
        check_roundtrip(logits(load_causal_lm(str(bad), device="cpu", dtype=torch.bfloat16), ids), refs, "rtn")
