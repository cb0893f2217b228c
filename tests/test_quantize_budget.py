"""`--bits-budget`: per-layer widths from measured sensitivity, the budget respected on disk, plain reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress.artifacts import read_meta
from compress.quantize import ROUNDTRIP_TOLERANCE, make_config, quantize
from compress.quantize.budget import bits_per_weight, choose_widths, packed_bits, rtn_weight


def test_rtn_weight_matches_grid():
    """The sensitivity score rounds on the signed-peak grid our symmetric GPTQ/RTN use (grid.py): each group's
    largest-magnitude weight is exact, step = that weight / 8 at 4 bits, 16 levels; the other sign reaches 7 steps."""
    w = torch.randn(8, 64)
    q = rtn_weight(w, 4, 32, sym=True)
    for g in range(2):
        block, qb = w[:, g * 32:(g + 1) * 32], q[:, g * 32:(g + 1) * 32]
        peak = block.gather(1, block.abs().argmax(1, keepdim=True))
        assert torch.allclose(qb.gather(1, block.abs().argmax(1, keepdim=True)), peak)
        step = peak.abs() / 8
        inside = block.abs() <= 7.5 * step  # on either side of zero, within the grid's reach
        err = (qb - block).abs()
        assert (err[inside] <= (step / 2 + 1e-6).expand_as(block)[inside]).all()
        assert (err <= step + 1e-6).all()
        assert all(len(torch.unique(row)) <= 16 for row in qb)


def test_knapsack_prefers_sensitive_layers_and_respects_the_budget():
    shapes = {"a": (128, 128), "b": (128, 128), "c": (256, 128), "d": (128, 256)}
    scores = {"a": 10.0, "b": 0.1, "c": 5.0, "d": 0.2}
    plan = choose_widths(shapes, scores, budget=7.0, base_bits=4, group_size=128)  # room for "a" alone
    assert plan.planned_bits_per_weight <= 7.0
    assert plan.widths["a"] == 16 and plan.widths["b"] == 4  # the most sensitive per bit goes first
    loose = choose_widths(shapes, scores, budget=4.2, base_bits=4, group_size=128)
    assert set(loose.widths.values()) == {4} and loose.planned_bits_per_weight == pytest.approx(
        packed_bits(128, 128, 4, 128), abs=1e-3)


@pytest.fixture(scope="module")
def budget_artifact(tmp_path_factory, tiny_model):
    cfg = make_config(method="gptq", bits_budget=5.0, calib_samples=16, calib_seqlen=128)
    return quantize(str(tiny_model), cfg, tmp_path_factory.mktemp("budget") / "b5", device="cpu")


def test_budget_respected_on_disk_and_recorded(budget_artifact):
    art = Path(budget_artifact.output)
    measured = bits_per_weight(art)  # from the safetensors headers: codes, scales, zeros, kept weights
    assert measured["bits_per_weight"] <= 5.0
    assert measured["bits_per_weight"] > packed_bits(128, 128, 4, 128)  # the spare bits were spent
    meta = read_meta(art)
    assert meta.config["bits_budget"] == 5.0 and "bits" not in meta.config
    widths = meta.config["backend"]["budget"]["widths"]
    assert set(widths.values()) == {4, 32} and len(widths) == 14  # 2 layers × 7 linears; the tiny source is fp32
    assert meta.metrics["bits_per_weight"] == measured["bits_per_weight"] == budget_artifact.bits_per_weight
    qc = json.loads((art / "config.json").read_text())["quantization_config"]
    assert sorted(qc["modules_in_block_to_quantize"][0]) == sorted(n for n, w in widths.items() if w == 4)
    from safetensors import safe_open

    with safe_open(str(next(art.glob("*.safetensors"))), "pt") as f:
        keys = set(f.keys())
    for name, w in widths.items():  # each layer is stored at the width the plan gave it
        assert (f"{name}.qweight" in keys) == (w == 4) and (f"{name}.weight" in keys) == (w == 32), name


def test_budget_artifact_reloads_with_plain_transformers(budget_artifact, tmp_path):
    from tests.test_quantize import _plain_transformers_logits

    from compress.models import load_tokenizer
    from compress.quantize.verify import dequantized_reference, logits, probe_ids, relative_error

    art = budget_artifact.output
    ids = probe_ids(load_tokenizer(art))
    reference = logits(dequantized_reference(art), ids)
    assert relative_error(_plain_transformers_logits(art, ids, tmp_path), reference) < ROUNDTRIP_TOLERANCE
    assert read_meta(art).metrics["roundtrip_max_rel_logit_error"] < ROUNDTRIP_TOLERANCE
