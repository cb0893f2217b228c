"""quantize: every method's save → reload round trip, GPTQ beating RTN, sizes, and bad input."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("quantized")
    arts = {}
    for m in METHODS:
        cfg = make_config(method=m, group_size=32, calib_samples=16, calib_seqlen=128)
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
    train, _ = split_heldout(load_texts())
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
        cfg = make_config(method=m, bits=4, group_size=128, calib_samples=32, calib_seqlen=512)
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
