"""`--method autoround` (auto-round's SignRound): the artifact is a GPTQ v1 checkpoint that reloads, passes the
reload check, exports to GGUF and runs on the CPU kernels like a gptq artifact; compress.json records what applied.

Two artifacts (sym, asym) with 2 tuning steps on the random tiny model: ~50 s on 2 loaded cores, so the tests
that use them are marked slow. Quality on a trained model is in tests/test_quantize_quality.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from compress.artifacts import read_meta
from compress.cli import main
from compress.models import load_tokenizer
from compress.quantize import ROUNDTRIP_TOLERANCE, make_config, quantize
from compress.quantize.autoround import signround_args
from compress.quantize.budget import bits_per_weight, packed_bits
from compress.quantize.verify import dequantized_reference, logits, probe_ids, relative_error

FAST = dict(group_size=32, calib_samples=8, calib_seqlen=64, iters=2)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("autoround")
    return {name: Path(quantize(str(tiny_model), make_config(method="autoround", sym=sym, **FAST), out / name,
                                device="cpu", measure_quality=False).output)
            for name, sym in (("sym", True), ("asym", False))}


@pytest.mark.slow
def test_compress_json_records_what_applied(artifacts):
    meta = read_meta(artifacts["sym"])
    applied = {k: v for k, v in meta.config.items() if k not in ("backend", "device", "group_size_requested",
                                                                  "group_size_note", "calib_sha256")}
    assert applied == dict(method="autoround", bits=4, group_size=32, sym=True, calib="builtin", calib_samples=8,
                           calib_seqlen=64, seed=0, iters=2)  # no damp/act-order/budget/lr: they did not apply
    backend = meta.config["backend"]["auto_round"]
    assert backend["iters"] == 2 and backend["lr_resolved"] == pytest.approx(1 / 2)  # auto-round's default 1/iters
    assert backend["nsamples"] == 8 and backend["seqlen"] == 64 and backend["format"] == "auto_gptq"
    assert meta.config["device"] == "cpu" and meta.time_taken_s > 0
    measured = bits_per_weight(artifacts["sym"])["bits_per_weight"]  # from the safetensors headers
    assert meta.metrics["bits_per_weight"] == measured == pytest.approx(packed_bits(128, 128, 4, 32), abs=1e-3)


@pytest.mark.parametrize("opts", [dict(bits=3, group_size=32), dict(bits=4, group_size=-1)])
def test_other_advertised_widths_and_groups_reload(tiny_model, tmp_path, opts):
    """3 bits span 32-bit words; -1 is one scale per output channel (asym per channel is refused: see config)."""
    art = quantize(str(tiny_model), make_config(method="autoround", calib_samples=4, calib_seqlen=64, iters=1, **opts),
                   tmp_path / "art", device="cpu", measure_quality=False)
    metrics = read_meta(art.output).metrics
    assert metrics["roundtrip_max_rel_logit_error"] < ROUNDTRIP_TOLERANCE
    assert metrics["bits_per_weight"] == pytest.approx(packed_bits(128, 128, opts["bits"], opts["group_size"]), abs=0.05)


def test_lr_is_recorded_and_passed_only_when_given():
    cfg = make_config(method="autoround", lr=0.003)
    assert cfg.applied()["lr"] == 0.003 and cfg.applied()["iters"] == 200
    assert "lr" not in make_config(method="autoround").applied()
    from auto_round.algorithms.quantization.sign_round.config import SignRoundConfig

    alg = SignRoundConfig(**signround_args(cfg))  # the library takes every argument we pass (unknown ones raise)
    assert alg.lr == 0.003 and alg.iters == 200 and alg.bits == 4 and alg.group_size == 128 and alg.sym is True


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sym", "asym"])
def test_passes_the_reload_check_as_a_gptq_v1_checkpoint(artifacts, kind):
    art = artifacts[kind]
    metrics = read_meta(art).metrics  # quantize reloaded it with plain from_pretrained before publishing it
    assert metrics["roundtrip_max_rel_logit_error"] < ROUNDTRIP_TOLERANCE
    assert metrics["roundtrip_errors"]["fp32"] < metrics["roundtrip_tolerance"]
    config = json.loads((art / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq" and qc["sym"] is (kind == "sym")
    assert config["dtype"] == "float32"  # the tiny source's dtype, not auto-round's float16 label
    assert not (art / ".autoround").exists()


@pytest.mark.slow
def test_asym_reloads_without_compress(artifacts, tmp_path):
    """A fresh process with plain transformers (zero points are where a v1/v2 mix-up would show)."""
    from tests.test_quantize import _plain_transformers_logits

    art = artifacts["asym"]
    ids = probe_ids(load_tokenizer(art))
    reference = logits(dequantized_reference(art), ids)  # our plain-torch GPTQ v1 unpacker
    assert relative_error(_plain_transformers_logits(art, ids, tmp_path), reference) < ROUNDTRIP_TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sym", "asym"])
def test_exports_to_gguf(artifacts, kind, tmp_path):
    from tests.test_export import _gguf_transformers_logits

    from compress.export import export_gguf

    art = artifacts[kind]
    result = export_gguf(art, tmp_path / f"{kind}.gguf")
    assert result.file_type == ("Q4_0" if kind == "sym" else "Q4_1")
    ids = probe_ids(load_tokenizer(art))
    err = relative_error(_gguf_transformers_logits(tmp_path / f"{kind}.gguf", ids),
                         logits(dequantized_reference(art), ids))
    assert err == 0.0 if kind == "sym" else err < 1e-3  # Q4_0 is the sym GPTQ grid bit for bit


@pytest.mark.slow
def test_runs_on_the_cpu_kernels(artifacts):
    from compress.bench.fastpath import load_for_decode
    from compress.models import resolve
    from compress.quantize.verify import gptq_references

    model, path = load_for_decode(resolve(str(artifacts["sym"])), "cpu")  # what `compress bench`/serve load
    assert path.loader == "compress.quantize.cpu_kernels" and path.kernels.get("Int4Linear") == 14
    ids = probe_ids(load_tokenizer(artifacts["sym"]))
    assert relative_error(logits(model, ids), gptq_references(artifacts["sym"], ids)["fp32"]) < 0.05


def test_missing_library_is_one_line_with_the_install_command(tiny_model, tmp_path, capsys, monkeypatch):
    """auto-round is installed here; a None entry in sys.modules makes its import fail as if it were not."""
    monkeypatch.setitem(sys.modules, "auto_round", None)
    out = tmp_path / "art"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["quantize", str(tiny_model), "--method", "autoround", "--calib-samples", "4", "--calib-seqlen", "64",
              "--output", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "pip install auto-round==0.16.1" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
