"""quantize: every method's save → reload round trip, GPTQ beating RTN, sizes, and bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from compress.artifacts import read_meta
from compress.data import load_texts, split_heldout, token_blocks
from compress.models import load_causal_lm, load_tokenizer
from compress.quantize import ROUNDTRIP_TOLERANCE, make_config, quantize
from compress.quantize.verify import dequantized_reference, logits, probe_ids, relative_error

METHODS = ["gptq", "rtn", "int8", "int8-wo"]
GPTQ_FAST = dict(group_size=32, calib_samples=16, calib_seqlen=128)


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("quantized")
    arts = {}
    for m in METHODS:
        cfg = make_config(method=m, **{"gptq": GPTQ_FAST, "rtn": {"group_size": 32}}.get(m, {}))
        arts[m] = quantize(str(tiny_model), cfg, out / m, device="cpu").output
    return arts


def _plain_transformers_logits(model_dir, ids, tmp_path):
    """Logits from a fresh process that loads with AutoModelForCausalLM and never imports compress."""
    torch.save(ids, tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}).eval()
        with torch.no_grad():
            out = m(torch.load({str(tmp_path / 'ids.pt')!r})).logits.float()
        assert not any(k == "compress" or k.startswith("compress.") for k in sys.modules), "compress imported"
        torch.save(out, {str(tmp_path / 'logits.pt')!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    return torch.load(tmp_path / "logits.pt")


@pytest.mark.parametrize("method", METHODS)
def test_roundtrip_logits_without_compress(method, tiny_artifacts, tiny_model, tmp_path):
    art = tiny_artifacts[method]
    tok = load_tokenizer(art)
    ids = probe_ids(tok)
    if method in ("gptq", "rtn"):
        reference = logits(dequantized_reference(art), ids)  # independent plain-torch dequantization
    else:  # the in-memory quantized model, before any save
        from transformers import AutoModelForCausalLM

        from compress.quantize.int8 import quantization_config

        qconfig, dtype = quantization_config(make_config(method=method))
        in_memory = AutoModelForCausalLM.from_pretrained(str(tiny_model), quantization_config=qconfig, dtype=dtype,
                                                         device_map="cpu").eval()
        reference = logits(in_memory, ids)
    reloaded = _plain_transformers_logits(art, ids, tmp_path)
    assert relative_error(reloaded, reference) < ROUNDTRIP_TOLERANCE
    if method in ("int8", "int8-wo"):
        assert torch.equal(reloaded, reference)  # same kernels, same weights: bit-identical
    meta = read_meta(art)
    assert meta.method == method and meta.kind == "quantized"
    assert meta.metrics["roundtrip_max_rel_logit_error"] < ROUNDTRIP_TOLERANCE
    assert meta.source.sha256 and meta.versions["transformers"] == "5.17.0"
    assert meta.config["method"] == method and "bits" in meta.config


def test_compress_json_records_what_applied_and_the_defaults(tiny_artifacts):
    """int8 methods record no GPTQ options; rtn no calibration; gptq every default it resolved."""
    configs = {m: read_meta(tiny_artifacts[m]).config for m in METHODS}
    gptq_only = {"act_order", "damp", "mse", "calib", "calib_samples", "calib_seqlen", "seed"}
    for m in ("int8", "int8-wo"):
        assert not (gptq_only | {"group_size", "sym", "bits_budget"}) & configs[m].keys(), configs[m]
        assert configs[m]["bits"] == 8
    assert not (gptq_only | {"bits_budget"}) & configs["rtn"].keys(), configs["rtn"]
    assert configs["rtn"]["group_size"] == 32 and configs["rtn"]["sym"] is True and configs["rtn"]["bits"] == 4
    assert {k: configs["gptq"][k] for k in gptq_only | {"sym", "bits"}} == dict(
        act_order=False, damp=0.01, mse=2.0, calib="mix", calib_samples=16, calib_seqlen=128, seed=0, sym=True,
        bits=4)  # the defaults the reference-model table chose (compress/quantize/config.py)
    assert configs["gptq"]["backend"]["gptqmodel"]["damp_percent"] == 0.01
    assert configs["gptq"]["backend"]["gptqmodel"]["mse"] == 2.0
    assert "bits_budget" not in configs["gptq"]
    train, _ = split_heldout(load_texts("mix"))  # the calibration blocks' fingerprint: gptq has one, rtn none
    calib = token_blocks(load_tokenizer(tiny_artifacts["gptq"]), train, 16, 128, seed=0)
    assert configs["gptq"]["calib_sha256"] == hashlib.sha256(calib.numpy().tobytes()).hexdigest()[:16]
    assert "calib_sha256" not in configs["rtn"]
    for m, sym in (("gptq", True), ("rtn", True)):  # the checkpoint itself agrees with what compress.json records
        qc = json.loads((Path(tiny_artifacts[m]) / "config.json").read_text())["quantization_config"]
        assert (qc["bits"], qc["group_size"], qc["sym"]) == (4, 32, sym)


ADVERTISED = {  # the combinations `compress quantize --help` advertises, each through the reload check
    "gptq-2bit": dict(method="gptq", bits=2),
    "gptq-3bit": dict(method="gptq", bits=3),
    "rtn-3bit-asym": dict(method="rtn", bits=3, sym=False),
    "gptq-8bit": dict(method="gptq", bits=8),
    "gptq-asym-act-order": dict(method="gptq", sym=False, act_order=True),
    "gptq-per-channel": dict(method="gptq", group_size=-1, damp=0.05),
    "rtn-per-channel": dict(method="rtn", group_size=-1),
}


@pytest.mark.parametrize("name", ADVERTISED)
def test_advertised_combinations_reload(name, tiny_model, tmp_path):
    from compress.quantize.budget import packed_bits

    opts = ADVERTISED[name]
    extra = {k: v for k, v in GPTQ_FAST.items() if opts["method"] == "gptq" and k not in opts}
    cfg = make_config(**opts, **extra)
    res = quantize(str(tiny_model), cfg, tmp_path / name, device="cpu", measure_quality=False)
    meta = read_meta(res.output)
    assert meta.metrics["roundtrip_max_rel_logit_error"] < ROUNDTRIP_TOLERANCE  # reloads to what was quantized
    assert {k: meta.config[k] for k in opts} == opts
    qc = json.loads((Path(res.output) / "config.json").read_text())["quantization_config"]
    assert (qc["bits"], qc["group_size"], qc["sym"], qc["desc_act"]) == (
        cfg.bits, cfg.group_size, cfg.sym, bool(cfg.act_order))
    # bits per weight from the files: codes + fp16 scales + packed zeros, as the formula says (hidden 128, mlp 256)
    shapes = [(128, 128)] * 2 + [(64, 128)] * 2 + [(256, 128)] * 2 + [(128, 256)]  # q,o / k,v / gate,up / down
    expected = sum(packed_bits(i, o, cfg.bits, cfg.group_size) * o * i for o, i in shapes) / sum(o * i for o, i in shapes)
    assert meta.metrics["bits_per_weight"] == pytest.approx(expected, abs=0.02)


def test_v2_label_on_v1_weights_is_caught(tiny_artifacts, tmp_path):
    """The optimum trap: `gptq_v2` written over v1 weights reloads silently wrong; our check sees it."""
    bad = tmp_path / "bad"
    shutil.copytree(tiny_artifacts["gptq"], bad)
    config = json.loads((bad / "config.json").read_text())
    config["quantization_config"]["checkpoint_format"] = config["quantization_config"]["format"] = "gptq_v2"
    (bad / "config.json").write_text(json.dumps(config))
    ids = probe_ids(load_tokenizer(bad))
    reference = logits(dequantized_reference(tiny_artifacts["gptq"]), ids)
    assert relative_error(logits(load_causal_lm(str(bad), device="cpu"), ids), reference) > ROUNDTRIP_TOLERANCE


def test_gptq_layer_error_below_rtn(tiny_artifacts, tiny_model, tokenizer):
    """Same layer, same calibration activations: GPTQ's output error ||(Ŵ − W) X|| is below RTN's."""
    source = load_causal_lm(str(tiny_model), device="cpu")
    train, _ = split_heldout(load_texts("mix"))  # gptq's default calibration
    calib = token_blocks(tokenizer, train, 16, 128, seed=0)  # what quantize() used (same defaults)
    inputs = []
    layer = source.model.layers[0].self_attn.q_proj  # layer 0 sees identical inputs in both runs
    handle = layer.register_forward_hook(lambda mod, args, out: inputs.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        source(calib)
    handle.remove()
    x = torch.cat(inputs)  # [tokens, in]
    w = layer.weight.detach()
    errors = {}
    for m in ("gptq", "rtn"):
        wq = dequantized_reference(tiny_artifacts[m]).model.layers[0].self_attn.q_proj.weight.detach()
        errors[m] = torch.linalg.norm(x @ (wq - w).t()).item()
    assert errors["gptq"] < 0.9 * errors["rtn"], errors


def test_mse_scale_search_reaches_gptqmodel_quantizer():
    """--mse P is what gptqmodel's Quantizer.find_params sees: on a trained-like weight (heavy tails) its
    shrunk-scale search gives a lower Σ(ŵ − w)² than the max-based scale, per group of 32."""
    import gptqmodel as gm
    from gptqmodel.quantization.quantizer import Quantizer
    from gptqmodel.quantization.quantizer import quantize as fake_quant

    from compress.quantize.gptq import backend_config

    torch.manual_seed(0)
    w = torch.distributions.StudentT(3.0).sample((256, 32))  # [groups, group_size]: heavy tails, like trained weights
    err = {}
    for mse in (0.0, 2.0):
        q = Quantizer(gm.QuantizeConfig(**backend_config(make_config(method="gptq", group_size=32, mse=mse, sym=True))))
        q.configure(perchannel=True)
        q.find_params(w, weight=True)
        err[mse] = ((fake_quant(w, q.scale, q.zero, q.maxq, False) - w) ** 2).sum().item()
    assert err[2.0] < 0.9 * err[0.0], err


def test_mse_artifact_reloads_and_records_it(tiny_artifacts, tiny_model, tmp_path):
    from safetensors.torch import load_file

    res = quantize(str(tiny_model), make_config(method="gptq", mse=0.0, **GPTQ_FAST), tmp_path / "max", device="cpu",
                   measure_quality=False)  # the scale from each group's max; the tiny artifact took the default 2.0
    meta = read_meta(tiny_artifacts["gptq"])
    assert meta.metrics["roundtrip_max_rel_logit_error"] < ROUNDTRIP_TOLERANCE  # reloads to what was quantized
    assert meta.config["mse"] == 2.0 and meta.config["backend"]["gptqmodel"]["mse"] == 2.0
    assert read_meta(res.output).config["mse"] == 0.0 and "mse" not in read_meta(res.output).config["backend"]["gptqmodel"]
    key = "model.layers.0.self_attn.q_proj.scales"
    scales = {k: load_file(next(Path(a).glob("*.safetensors")))[key].float() for k, a in
              (("mse", tiny_artifacts["gptq"]), ("max", res.output))}
    assert (scales["mse"] < scales["max"] - 1e-6).float().mean() > 0.2  # many groups took a shrunk scale


def test_calibration_text_not_in_config(tiny_artifacts):
    train, _ = split_heldout(load_texts())
    snippets = [t[:40] for t in train[:20]]
    for f in Path(tiny_artifacts["gptq"]).glob("*.json"):
        text = f.read_text()
        assert not any(s in text for s in snippets), f.name


# --- the real SmolLM2-135M-Instruct, from its GGUF file -------------------------------------------


@pytest.fixture(scope="module")
def smol_int4(tmp_path_factory, smollm2_gguf):
    out = tmp_path_factory.mktemp("smol")
    res = {}
    for m in ("rtn", "gptq"):
        calib = dict(calib_samples=32, calib_seqlen=512) if m == "gptq" else {}  # rtn takes no calibration
        cfg = make_config(method=m, bits=4, group_size=128, **calib)
        res[m] = quantize(str(smollm2_gguf), cfg, out / m, device="cpu")
    return res


@pytest.mark.slow
def test_smollm2_gptq_beats_rtn_and_halves_size(smol_int4, smollm2_gguf):
    from compress.models import checkpoint_dir, resolve

    gptq, rtn = smol_int4["gptq"], smol_int4["rtn"]
    assert gptq.perplexity <= rtn.perplexity, (gptq.perplexity, rtn.perplexity)
    source_bytes = sum(f.stat().st_size for f in Path(checkpoint_dir(resolve(str(smollm2_gguf)))).glob("*.safetensors"))
    for r in (gptq, rtn):
        assert r.size_bytes <= 0.5 * source_bytes, (r.method, r.size_bytes, source_bytes)
    meta = read_meta(gptq.output)
    assert meta.source.kind == "gguf" and meta.config["group_size"] == 64  # 128 does not divide 576 (groups.py)
    assert meta.config["group_size_requested"] == 128
    assert json.loads((Path(gptq.output) / "config.json").read_text())["quantization_config"]["format"] == "gptq"


def test_sym_grid_is_signed_peak(tiny_artifacts, tiny_model):
    """Symmetric RTN puts each group's largest-magnitude weight exactly on the grid (llama.cpp's Q4_0 rule: step =
    signed peak / −8, so scales take both signs), which leaves less squared error than gptqmodel's own symmetric
    grid (step 2·max|w|/15, the largest positive weight clipped); compress.json says which grid ran."""
    art = tiny_artifacts["rtn"]
    assert read_meta(art).config["backend"]["sym_grid"] == "signed-peak"
    w = load_causal_lm(str(tiny_model), device="cpu").model.layers[0].mlp.up_proj.weight.detach().float()
    wq = dequantized_reference(art).model.layers[0].mlp.up_proj.weight.detach().float()
    g = w.reshape(w.shape[0], -1, 32)
    peak = g.gather(2, g.abs().argmax(2, keepdim=True))
    on_grid = wq.reshape(g.shape).gather(2, g.abs().argmax(2, keepdim=True))
    assert torch.allclose(on_grid, peak, rtol=2e-3, atol=0)  # exact up to the fp16 scale
    assert (peak > 0).any() and (peak < 0).any()  # both signs of step occurred
    step = g.abs().amax(2, keepdim=True) * 2 / 15  # gptqmodel's symmetric RTN
    classic = (torch.clamp(torch.round(g / step) + 8, 0, 15) - 8) * step
    assert ((wq.reshape(g.shape) - g) ** 2).sum() < 0.95 * ((classic - g) ** 2).sum()
