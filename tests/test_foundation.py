"""Model resolution, data specs, the artifact format, and the CLI's error contract."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from compress.artifacts import ArtifactMeta, SourceInfo, atomic_dir, read_meta, write_meta
from compress.data import load_texts, split_heldout, token_blocks
from compress.errors import CompressError
from compress.evaluate.perplexity import perplexity
from compress.models import load_causal_lm, load_tokenizer, resolve


def test_resolve_kinds(tmp_path, tiny_model):
    assert resolve(str(tiny_model)).kind == "dir"
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    with pytest.raises(CompressError, match="does not exist"):
        resolve(str(tmp_path / "missing"))
    with pytest.raises(CompressError, match="not found"):
        resolve(str(tmp_path / "missing.gguf"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CompressError, match="is not a model"):
        resolve(str(tmp_path / "notes.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompressError, match="no config.json"):
        resolve(str(tmp_path / "empty"))


def test_data_specs(tmp_path):
    assert len(load_texts()) > 50  # built-in Python docs topics
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n" + json.dumps("two") + "\n")
    assert load_texts(str(tmp_path / "a.txt")) == ["hello world"]
    assert load_texts(str(tmp_path / "b.jsonl")) == ["one", "two"]
    assert sorted(load_texts(str(tmp_path))) == ["hello world", "one", "two"]
    with pytest.raises(CompressError, match="not found"):
        load_texts(str(tmp_path / "nope.txt"))
    (tmp_path / "bad.jsonl").write_text('{"body": 1}\n')
    with pytest.raises(CompressError, match="bad.jsonl:1"):
        load_texts(str(tmp_path / "bad.jsonl"))
    train, held = split_heldout(load_texts())
    assert train and held and not set(train) & set(held)


def test_token_blocks_and_too_little_data(tokenizer):
    blocks = token_blocks(tokenizer, load_texts(), n_blocks=4, seqlen=64, seed=1)
    assert blocks.shape == (4, 64)
    assert torch.equal(blocks, token_blocks(tokenizer, load_texts(), n_blocks=4, seqlen=64, seed=1))
    with pytest.raises(CompressError, match="too small"):
        token_blocks(tokenizer, ["just a few words"], n_blocks=2, seqlen=64)


def test_perplexity_equals_direct_computation(tiny_model):
    model = load_causal_lm(str(tiny_model), device="cpu")
    tok = load_tokenizer(str(tiny_model))
    texts = load_texts()[:3]
    res = perplexity(model, tok, texts, context_len=64, max_tokens=200)
    # Direct: disjoint 64-token windows, each scoring its positions 1..S-1 (as the GPTQ paper does).
    from compress.data import tokenize_stream

    ids = tokenize_stream(tok, texts, max_tokens=200)
    nll, n = 0.0, 0
    for b in range(0, len(ids) - 1, 64):
        w = ids[b:b + 64][None]
        with torch.no_grad():
            logits = model(w).logits[0, :-1]
        nll += F.cross_entropy(logits, w[0, 1:], reduction="sum").item()
        n += w.shape[1] - 1
    assert res.tokens_scored == n
    assert math.isclose(res.perplexity, math.exp(nll / n), rel_tol=1e-5)
    # Overlapping windows score every token after the first exactly once, with carried-over context.
    strided = perplexity(model, tok, texts, context_len=64, stride=32, max_tokens=200)
    assert strided.tokens_scored == len(ids) - 1
    assert strided.bits_per_byte > 0


def test_atomic_dir_and_meta(tmp_path):
    dest = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("boom")
    assert not dest.exists() and not list(tmp_path.iterdir())
    meta = ArtifactMeta(kind="quantized", method="rtn", source=SourceInfo(spec="m", kind="dir"), config={},
                        versions={}, time_taken_s=1.0, created_at="now")
    with atomic_dir(dest) as tmp:
        write_meta(tmp, meta)
    assert read_meta(dest).method == "rtn"
    with pytest.raises(CompressError, match="already exists"):
        with atomic_dir(dest):
            pass
    raw = json.loads((dest / "compress.json").read_text())
    raw["schema_version"] = 99
    (dest / "compress.json").write_text(json.dumps(raw))
    with pytest.raises(CompressError, match="unknown schema_version 99"):
        read_meta(dest)


def test_cli_bad_input_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "compress", "quantize", str(tmp_path / "nope"), "--method", "rtn",
                        "--output", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr


def test_exllama_kernels_are_recognised_as_fp16_only(tiny_model):
    """A bf16 GPTQ model that gptqmodel put on ExLlamaV2 (fp16 math) is reloaded with bf16 kernels on CUDA.
    No GPU here: the kernel is stood in for by a module of that class name, which is all the check reads."""
    from compress.models import _fp16_only_kernels

    model = load_causal_lm(str(tiny_model), device="cpu", dtype=torch.float32)
    assert not _fp16_only_kernels(model)
    model.model.layers[0].mlp.down_proj = type("ExllamaV2QuantLinear", (torch.nn.Module,), {})()
    assert _fp16_only_kernels(model)
