"""`compress export --format compressed-tensors`: GPTQ artifacts re-packed (never re-quantized) into
llm-compressor's pack-quantized format, reloaded by plain transformers + compressed-tensors (the real
library, on CPU); bits per weight from the files; refusals and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from compress.errors import CompressError
from compress.export import export_compressed_tensors
from compress.models import load_causal_lm, load_tokenizer
from compress.quantize import make_config, quantize
from compress.quantize.budget import bits_per_weight
from compress.quantize.verify import dequantized_reference, logits, probe_ids, relative_error
from tests.test_quantize_cli import run_cli as _cli


@pytest.fixture(scope="module")
def gptq_g64(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("ct")
    return {name: Path(quantize(str(tiny_model), make_config(method="gptq", bits=4, group_size=64, sym=sym,
                                                               calib_samples=16, calib_seqlen=128),
                                out / name, device="cpu", measure_quality=False).output)
            for name, sym in (("sym", True), ("asym", False))}


def _ct_logits(path: Path, tokenizer) -> torch.Tensor:
    model = load_causal_lm(str(path), device="cpu", dtype=torch.float32)  # plain from_pretrained underneath
    return logits(model, probe_ids(tokenizer))


@pytest.mark.parametrize("kind", ["sym", "asym"])
def test_gptq_round_trip_is_exact_and_sym_drops_the_zero_points(gptq_g64, kind, tmp_path):
    art = gptq_g64[kind]
    result = export_compressed_tensors(art, tmp_path / "ct")
    out = Path(result.output)
    tok = load_tokenizer(str(out))
    expect = logits(dequantized_reference(art), probe_ids(tok))
    assert relative_error(_ct_logits(out, tok), expect) < 1e-6  # the tiny source is fp32: scales move exactly
    assert result.max_abs_weight_change == 0.0

    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    weights = qc["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"]) == (4, 64, kind == "sym")
    assert qc["ignore"] == ["lm_head"]

    gptq_bits = bits_per_weight(art)["bits_per_weight"]  # codes + fp16 scales + 4-bit zeros per group of 64
    assert gptq_bits == pytest.approx(4 + (16 + 4) / 64)
    assert result.bits_per_weight == bits_per_weight(out)
    assert result.bits_per_weight["bits_per_weight"] == pytest.approx(4.25 if kind == "sym" else gptq_bits)
    assert 0 < result.bits_per_weight["shape_bits_per_weight"] < 0.01
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        zeros = [k for k in f.keys() if k.endswith("weight_zero_point")]
    assert (len(zeros) == 0) == (kind == "sym")


def test_bf16_checkpoint_reports_exactly_the_weight_change_of_its_scales(tmp_path, tokenizer):
    from compress.testing import build_tiny_llama

    src = build_tiny_llama(tmp_path / "bf16", seed=1, tokenizer=tokenizer, dtype=torch.bfloat16)
    cfg = make_config(method="gptq", bits=4, group_size=32, sym=True, calib_samples=16, calib_seqlen=128)
    art = quantize(str(src), cfg, tmp_path / "gptq", device="cpu", measure_quality=False).output
    result = export_compressed_tensors(art, tmp_path / "ct")
    assert result.bits_per_weight["bits_per_weight"] == pytest.approx(4 + 16 / 32)  # bf16 scales, no zero points
    ref = dequantized_reference(art)
    ct = load_causal_lm(result.output, device="cpu", dtype=torch.float32)
    got = logits(ct, probe_ids(tokenizer))  # compressed-tensors decompresses on the first forward
    change = max((ref.get_submodule(n).weight.float() - ct.get_submodule(n).weight.float()).abs().max().item()
                 for n, m in ref.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head")
    assert result.max_abs_weight_change == pytest.approx(change, rel=1e-3, abs=1e-12)  # fp16 scales → bf16
    assert (change > 0) == any("bfloat16" in n for n in result.notes)
    assert relative_error(got, logits(ref, probe_ids(tokenizer))) < 0.02


def test_budget_kept_layers_go_to_the_ignore_list(tmp_path, tiny_model, tokenizer):
    cfg = make_config(method="gptq", bits_budget=5.0, sym=False, calib_samples=16, calib_seqlen=128)
    art = Path(quantize(str(tiny_model), cfg, tmp_path / "b5", device="cpu", measure_quality=False).output)
    result = export_compressed_tensors(art, tmp_path / "ct")
    widths = json.loads((art / "compress.json").read_text())["config"]["backend"]["budget"]["widths"]
    kept = sorted(n for n, w in widths.items() if w != 4)
    assert kept, "the budget kept no layer: the test needs one"
    qc = json.loads((Path(result.output) / "config.json").read_text())["quantization_config"]
    assert qc["ignore"] == sorted(kept + ["lm_head"])
    # asym: the same codes, scales and zeros in another packing, kept weights as they are
    assert result.bits_per_weight["bits_per_weight"] == bits_per_weight(art)["bits_per_weight"]
    expect = logits(dequantized_reference(art), probe_ids(tokenizer))
    assert relative_error(_ct_logits(Path(result.output), tokenizer), expect) < 1e-6


def test_cli_writes_and_refuses_in_one_line(gptq_g64, tiny_model, tmp_path, capsys):
    out = tmp_path / "ct"
    code, stdout, _ = _cli(capsys, "export", str(gptq_g64["sym"]), "-o", str(out), "--format", "compressed-tensors")
    assert code == 0 and "bits per weight (from the files): 4.2500" in stdout

    bad = tmp_path / "actorder"
    shutil.copytree(gptq_g64["sym"], bad)
    config = json.loads((bad / "config.json").read_text())
    config["quantization_config"]["desc_act"] = True
    (bad / "config.json").write_text(json.dumps(config))
    cases = [
        ((str(bad), "-o", str(tmp_path / "x")), "act-order GPTQ is not exported"),
        ((str(tiny_model), "-o", str(tmp_path / "y")), "unquantized checkpoints are not exported"),
        ((str(gptq_g64["sym"]), "-o", str(out)), "already exists"),
    ]
    for args, message in cases:
        code, _, err = _cli(capsys, "export", *args, "--format", "compressed-tensors")
        assert code == 2 and message in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert not list(tmp_path.glob(".*tmp-*"))  # nothing half-written
    code, _, err = _cli(capsys, "export", str(gptq_g64["sym"]), "-o", str(tmp_path / "z"), "--format",
                        "compressed-tensors", "--dense-type", "q8_0")
    assert code == 2 and "--dense-type applies to --format gguf only" in err


def test_refuses_groups_that_do_not_divide_the_width(gptq_g64, tmp_path):
    with pytest.raises(CompressError, match="not a multiple of group size 48"):
        bad = tmp_path / "g48"
        shutil.copytree(gptq_g64["sym"], bad)
        config = json.loads((bad / "config.json").read_text())
        config["quantization_config"]["group_size"] = 48
        (bad / "config.json").write_text(json.dumps(config))
        export_compressed_tensors(bad, tmp_path / "out")
