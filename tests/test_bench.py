"""`compress bench`: every field of the result file, ratios to the first model, the decode-path choice, errors."""

from __future__ import annotations

import json
import numpy as np
import pytest
import torch

from compress.bench.measure import _percentile
from compress.bench.run import load_bench, parse_batch_sizes
from compress.errors import CompressError

STATS = {"median", "min", "max", "stdev"}


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory, tiny_model, tokenizer):
    """A real two-model CLI run: tiny Llama (seed 0) and a wider one, batch sizes 1 and 2, a few tokens."""
    from compress.testing import build_tiny_llama

    tmp = tmp_path_factory.mktemp("bench")
    wide = build_tiny_llama(tmp / "wide", seed=3, tokenizer=tokenizer, hidden=256, intermediate=512)
    out = tmp / "bench.json"
    from compress.cli import main

    # The CLI in-process; each model still runs in its own worker subprocess (the default, isolate=True).
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(tiny_model), str(wide), "--batch-sizes", "1,2", "--prompt-len", "8", "--gen-len", "4",
              "--repeats", "3", "--warmup", "1", "--threads", "1", "--device", "cpu", "--output", str(out)])
    assert exc.value.code == 0
    return out, wide


def test_bench_json_has_every_field(bench_json, tiny_model):
    path, wide = bench_json
    res = load_bench(path)
    assert res["schema_version"] == 1 and res["kind"] == "bench"
    assert res["config"]["batch_sizes"] == [1, 2] and res["config"]["device"] == "cpu"
    assert {"torch", "transformers", "python"} <= set(res["versions"])
    assert {"machine", "cpu_count", "torch_threads"} <= set(res["hardware"]) and res["hardware"]["torch_threads"] == 1
    assert [m["path"] for m in res["models"]] == [str(tiny_model), str(wide)]
    for m in res["models"]:
        assert m["size_bytes"] > 0 and m["params"] > 0 and m["load_s"] > 0 and m["torch_threads"] == 1
        path = m["decode_path"]
        # CPU: eager with a dynamic cache (see compress.bench.fastpath); the choice is recorded.
        assert path["device"] == "cpu" and path["cache"] == "dynamic" and path["decoder"] == "generate"
        assert path["compile"] is False and path["graphed"] is False
        assert path["compiled"] is False and path["kernels"] == {"Linear": 15}  # 7 per layer × 2 + lm_head
        assert [row["batch_size"] for row in m["batches"]] == [1, 2]
        for row in m["batches"]:
            assert row["prompt_len"] == 8 and row["gen_len"] == 4 and row["repeats"] == 3 and row["warmup"] == 1
            for key in ("ttft_s", "tpot_s", "decode_tok_s"):
                assert set(row[key]) == STATS and row[key]["min"] <= row[key]["median"] <= row[key]["max"]
                assert row[key]["min"] > 0
            assert {"p50", "p95"} <= set(row["e2e_s"]) and row["e2e_s"]["p50"] <= row["e2e_s"]["p95"] <= row["e2e_s"]["max"]
            # tokens/s is batch / time-per-token, run by run; the median of 3 maps through exactly.
            assert row["decode_tok_s"]["median"] == pytest.approx(row["batch_size"] / row["tpot_s"]["median"])
            assert row["ttft_s"]["median"] < row["e2e_s"]["p50"]
            assert row["peak_memory_kind"] == "cpu_peak_rss_process" and row["peak_memory_bytes"] > 50 * 2**20
    first, second = res["ratios_to_first"]
    assert first["size"] == 1.0 and all(v == pytest.approx(1.0) for r in first["batches"].values() for v in r.values())
    assert second["size"] == pytest.approx(res["models"][1]["size_bytes"] / res["models"][0]["size_bytes"])
    r1 = second["batches"]["1"]
    b0, b1 = res["models"][0]["batches"][0], res["models"][1]["batches"][0]
    assert r1["decode_tok_s"] == pytest.approx(b1["decode_tok_s"]["median"] / b0["decode_tok_s"]["median"])


def test_percentile_matches_numpy():
    xs = [0.3, 0.1, 0.9, 0.4, 0.25]
    for q in (0, 50, 95, 100):
        assert _percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_parse_batch_sizes():
    assert parse_batch_sizes("1,8, 32") == [1, 8, 32]
    for bad in ("1,x", "0", "", "-2"):
        with pytest.raises(CompressError, match="batch-sizes"):
            parse_batch_sizes(bad)


def _main(argv, capsys):
    """The real CLI entry point, in-process (saves a Python start per case)."""
    from compress.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["bench", "{tmp}/missing", "--output", "{tmp}/b.json"], "does not exist"),
    (["bench", "{model}", "--batch-sizes", "1,x", "--output", "{tmp}/b.json"], "batch-sizes"),
    (["bench", "{model}", "--batch-sizes", "0", "--output", "{tmp}/b.json"], "batch-sizes"),
    (["bench", "{model}", "--device", "tpu", "--output", "{tmp}/b.json"], "--device"),
    (["bench", "{model}", "--gen-len", "1", "--output", "{tmp}/b.json"], "gen_len"),
    (["bench", "{model}", "--decoder", "maybe", "--output", "{tmp}/b.json"], "--decoder"),
    (["bench", "{model}", "--decoder", "graph", "--device", "cpu", "--output", "{tmp}/b.json"], "needs --device cuda"),
])
def test_bench_bad_input_is_one_line(tmp_path, tiny_model, capsys, args, message):
    code, err = _main([a.format(tmp=tmp_path, model=tiny_model) for a in args], capsys)
    assert code == 2 and message in err and err.strip().count("\n") == 0
    assert not (tmp_path / "b.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_bench_cuda_without_gpu(tmp_path, tiny_model, capsys):
    code, err = _main(["bench", str(tiny_model), "--device", "cuda", "--output", str(tmp_path / "b.json")], capsys)
    assert code == 2 and "no CUDA GPU" in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fast_path_replays_one_cuda_graph(tiny_model):
    from compress.bench.run import make_bench_config, measure_model

    entry = measure_model(str(tiny_model), make_bench_config(batch_sizes=[1], prompt_len=8, gen_len=8, device="cuda",
                                                             isolate=False, repeats=1))
    path = entry["decode_path"]
    assert path["decoder"] == "graph" and path["cache"] == "static" and path["graphed"], json.dumps(path)
    assert entry["batches"][0]["peak_memory_kind"] == "cuda_max_memory_allocated"


def test_static_greedy_loop_matches_generate(tiny_model):
    """The loop the CUDA graph records is plain greedy decoding: same tokens as transformers' generate (run eagerly here)."""
    from transformers import AutoModelForCausalLM

    from compress.bench.static_decode import StaticGreedy

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    prompt = torch.randint(3, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    want = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=9, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[:, 7:]
    loop = StaticGreedy(model, batch_size=2, max_len=20, device="cpu", graph=False)
    for _ in range(2):  # the second run reuses the filled cache: stale entries past the prompt must not leak in
        (start, first, end), got = loop.run(prompt, 9, sync=lambda: None)
        assert torch.equal(got, want) and start <= first <= end
    with pytest.raises(ValueError, match="exceed the cache"):
        loop.run(prompt, 20, sync=lambda: None)
