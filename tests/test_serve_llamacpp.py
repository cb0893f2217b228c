"""A tier with `runtime: llamacpp` end to end: `compress export` → `compress bench --runtime llamacpp` → `compress
manifest --gguf` → a real `compress serve` process, driven by the official `openai` client. The llama.cpp tier
answers greedily exactly as llama-cpp-python alone does, streams, and is counted in the metrics under its own
tier name beside a torch tier in the same server. Skips where llama-cpp-python is not installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import yaml

from compress.errors import CompressError
from compress.export import export_gguf
from compress.manifest import build_manifest, load_manifest, write_manifest
from compress.models import load_tokenizer
from compress.quantize import make_config, quantize
from tests.serve_helpers import REPO, Server, metric

SKIP = "llama-cpp-python is not installed (`make llamacpp` builds it)"
PROMPTS = ["The quick brown fox jumps over", "def add(a, b):\n    return", "Once upon a time"]
NEW = 10


def _compress(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compress", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}, timeout=600)


@pytest.fixture(scope="module")
def tier(tmp_path_factory, tiny_model):
    """(source dir, int4 artifact dir, its GGUF export)."""
    pytest.importorskip("llama_cpp", reason=SKIP)
    root = tmp_path_factory.mktemp("llamacpp-tier")
    source = Path(shutil.copytree(tiny_model, root / "source"))
    art = quantize(str(tiny_model), make_config(method="rtn", bits=4, group_size=32), root / "rtn-w4g32",
                   device="cpu", measure_quality=False).output
    gguf = export_gguf(art, root / "rtn-w4g32.q4_0.gguf").output
    return source, Path(art), Path(gguf)


@pytest.fixture(scope="module")
def benched(tier):
    """`compress bench GGUF --runtime llamacpp` written as the tier's bench.json (what `compress manifest` reads)."""
    _, art, gguf = tier
    out = art / "bench.json"
    r = _compress("bench", str(gguf), "--runtime", "llamacpp", "--batch-sizes", "1,2", "--prompt-len", "16",
                  "--gen-len", "8", "--repeats", "2", "--threads", "1", "-o", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def manifest(tier, benched, tmp_path_factory):
    source, art, gguf = tier
    m = build_manifest([str(source), str(art)], names=[f"q4={art}"], ggufs=[f"q4={gguf}"], costs=["source=0.5"],
                       price_per_cpu_hour=0.10)
    return write_manifest(m, tmp_path_factory.mktemp("manifest") / "tiers.yaml")


@pytest.fixture(scope="module")
def server(manifest, tmp_path_factory):
    s = Server(manifest, "--max-batch", "4", "--max-wait-ms", "50", "--cache-ttl", "0",
               log=tmp_path_factory.mktemp("log") / "server.log")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def alone(tier):
    """Greedy ids from llama-cpp-python's own `Llama` on the same GGUF (flash attention on, as our context has it
    on a CPU), no end-of-generation stop (the requests below pass ignore_eos)."""
    import llama_cpp

    _, art, gguf = tier
    tok = load_tokenizer(art)
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=128, logits_all=True, verbose=False, n_threads=1,
                          flash_attn=True)
    out = {}
    for p in PROMPTS:
        ids = tok(p, add_special_tokens=False).input_ids
        llm.reset()
        llm.eval(ids)
        new = []
        for _ in range(NEW):
            new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([new[-1]])
        out[p] = (ids, new)
    return tok, out


def test_bench_and_manifest_record_the_llamacpp_runtime(tier, benched, manifest):
    _, art, gguf = tier
    assert benched["config"]["runtime"] == "llamacpp"
    entry = benched["models"][0]
    assert entry["decode_path"]["runtime"] == "llamacpp" and entry["size_bytes"] == gguf.stat().st_size
    for row in entry["batches"]:
        assert row["gen_len"] == 8 and row["decode_tok_s"]["median"] > 0 and row["peak_memory_bytes"] > 0
    m = load_manifest(manifest)
    q4, source = m.tier("q4"), m.tier("source")
    assert (q4.runtime, q4.gguf, q4.size_bytes) == ("llamacpp", str(gguf), gguf.stat().st_size)
    assert q4.performance.throughput_tokens_per_s == max(r["decode_tok_s"]["median"] for r in entry["batches"])
    assert q4.cost_source == "measured" and q4.cost_per_1k_tokens == pytest.approx(
        0.10 / (q4.performance.throughput_tokens_per_s * 3.6))
    assert source.runtime == "torch" and source.gguf is None
    # The same artifact as a torch tier: a llama.cpp bench is not its speed, so it is unknown, not borrowed.
    as_torch = build_manifest([str(art)], price_per_cpu_hour=0.10).tiers[0]
    assert as_torch.performance.throughput_tokens_per_s is None and as_torch.cost_per_1k_tokens is None


def test_openai_client_greedy_equals_llama_cpp_alone(server, alone):
    tok, ref = alone
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    for p, (ids, new) in ref.items():
        r = client.completions.create(model="q4", prompt=ids, max_tokens=NEW, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert r.choices[0].text == tok.decode(new, skip_special_tokens=True), p
        assert r.usage.completion_tokens == NEW and r.usage.prompt_tokens == len(ids)
        stream = client.completions.create(model="q4", prompt=ids, max_tokens=NEW, temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
        chunks = [c.choices[0] for c in stream if c.choices]
        assert "".join(c.text for c in chunks) == r.choices[0].text
        assert chunks[-1].finish_reason == "length"


def test_engine_process_serves_the_llamacpp_tier(manifest, alone, tmp_path):
    """`--engine-process`: the llama.cpp tier's engine in a child process answers as the thread one does."""
    tok, ref = alone
    s = Server(manifest, "--engine-process", "--cache-ttl", "0", log=tmp_path / "server.log")
    try:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        ids, new = next(iter(ref.values()))
        r = client.completions.create(model="q4", prompt=ids, max_tokens=NEW, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert r.choices[0].text == tok.decode(new, skip_special_tokens=True)
    finally:
        assert s.stop() == 0


def test_metrics_count_each_tier_apart(server, alone):
    tok, ref = alone
    before = httpx.get(server.url + "/metrics").text
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    ids = next(iter(ref.values()))[0]
    client.completions.create(model="q4", prompt=ids, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    client.completions.create(model="source", prompt=ids, max_tokens=3, temperature=0, extra_body={"ignore_eos": True})
    after = httpx.get(server.url + "/metrics").text
    for tier_name, n in (("q4", 5), ("source", 3)):
        grown = metric(after, "compress_generation_tokens_total", tier=tier_name) - metric(
            before, "compress_generation_tokens_total", tier=tier_name)
        assert grown == n, tier_name
    assert metric(after, "compress_time_to_first_token_seconds_count", tier="q4") > metric(before, "compress_time_to_first_token_seconds_count",
                                                                          tier="q4")


def test_bad_runtime_and_gguf_are_one_line_errors(tier, manifest, tmp_path):
    source, art, gguf = tier
    raw = yaml.safe_load(Path(manifest).read_text())
    raw["tiers"][0]["runtime"] = "vllm"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(CompressError) as e:
        load_manifest(bad)
    assert "runtime" in str(e.value) and "\n" not in str(e.value)
    r = _compress("serve", str(bad), "--device", "cpu")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "runtime" in r.stderr
    with pytest.raises(CompressError, match="is not a GGUF file"):
        build_manifest([str(art)], ggufs=[f"rtn-w4g32={art / 'config.json'}"])
    with pytest.raises(CompressError, match="unknown or remote"):
        build_manifest([str(art)], ggufs=[f"nope={gguf}"])
    r = _compress("bench", str(art), "--runtime", "llamacpp", "-o", str(tmp_path / "b.json"))
    assert r.returncode != 0 and "benches .gguf files" in r.stderr and "Traceback" not in r.stderr
    r = _compress("bench", str(gguf), "--runtime", "onnx", "-o", str(tmp_path / "b.json"))
    assert r.returncode != 0 and "runtime" in r.stderr and "Traceback" not in r.stderr


def _recipe(tmp_path, model, runtime):
    doc = {
        "schema_version": 1, "name": "tiny-llamacpp", "model": str(model), "device": "cpu",
        "output": str(tmp_path / "out"),
        "tiers": [{"name": "source"},
                  {"name": "rtn", "quantize": {"method": "rtn", "bits": 4, "group_size": 32}, "runtime": runtime}],
        "eval": {"perplexity": ["builtin"], "context_len": 64, "max_tokens": 128},
        "bench": {"batch_sizes": [1], "prompt_len": 8, "gen_len": 4, "repeats": 1, "warmup": 0},
        "price_per_hour": 0.1,
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_recipe_runtime_is_validated(tmp_path, tiny_model):
    from compress.recipe import load_recipe

    with pytest.raises(CompressError) as e:
        load_recipe(_recipe(tmp_path, tiny_model, "vllm"))
    assert "runtime" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_recipe_tier_on_llamacpp_is_exported_benched_and_costed(tmp_path, tiny_model):
    """`runtime: llamacpp` in a recipe: the tier is exported to GGUF, benched on llama.cpp, and the manifest serves
    and costs it from that bench; the source tier stays on torch."""
    pytest.importorskip("llama_cpp", reason=SKIP)
    from compress.pipeline import run_recipe
    from compress.recipe import load_recipe

    result = run_recipe(load_recipe(_recipe(tmp_path, tiny_model, "llamacpp")), log=lambda m: None)
    assert "export:rtn" in result.built
    rtn = result.output / "tiers" / "rtn"
    bench = json.loads((rtn / "bench.json").read_text())
    assert bench["config"]["runtime"] == "llamacpp" and bench["models"][0]["path"] == str((rtn / "model.gguf").resolve())
    m = load_manifest(result.manifest)
    assert (m.tier("rtn").runtime, m.tier("rtn").gguf) == ("llamacpp", str((rtn / "model.gguf").resolve()))
    assert m.tier("rtn").cost_source == "measured" and m.tier("source").runtime == "torch"
    assert m.tier("rtn").quality.perplexity is not None  # the artifact's eval: the same int4 weights as the GGUF
    from gguf import GGUFReader

    types = {t.name: t.tensor_type.name for t in GGUFReader(str(rtn / "model.gguf")).tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_q.weight"] == "Q4_0"  # head as llama.cpp's Q4_0
    from compress.report import collect

    models = collect([rtn / "eval.json"], [rtn / "bench.json"])  # the report: one row, quality beside speed
    assert list(models) == [str(rtn.resolve())] and models[str(rtn.resolve())]["metrics"]
    assert models[str(rtn.resolve())]["bench"][1]["decode_tok_s"]["median"] > 0
