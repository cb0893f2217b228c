"""The tier manifest: measured values read from eval/bench JSON (unknown stays null), cost from a
price per hour, ordering, write -> load round trip, and one-line errors for bad manifests."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from compress.cli import main
from compress.errors import CompressError
from compress.manifest import LocalTier, RemoteTier, build_manifest, load_manifest, write_manifest


@pytest.fixture
def two_models(tmp_path, tiny_model):
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    shutil.copytree(tiny_model, fast)
    shutil.copytree(tiny_model, slow)
    (fast / "bench.json").write_text(json.dumps({"device": "cuda", "tokens_per_s": 2000.0, "ms_per_token": 0.5,
                                                 "peak_memory_bytes": 123456}))
    (fast / "eval.json").write_text(json.dumps({"perplexity": 27.5, "bits_per_byte": 0.91,
                                                "tasks": {"arc_easy": {"acc": 0.41, "acc_stderr": 0.01}}}))
    (slow / "bench.json").write_text(json.dumps({"device": "cuda", "throughput_tokens_per_s": 500.0}))
    return fast, slow


def test_measurements_cost_and_order(two_models):
    fast, slow = two_models
    m = build_manifest([str(slow), str(fast)], price_per_gpu_hour=3.6)
    assert [t.name for t in m.tiers] == ["fast", "slow"]  # cheapest first
    f, s = m.tiers
    assert f.cost_per_1k_tokens == pytest.approx(3.6 / (2000 * 3600) * 1000) and f.cost_source == "measured"
    assert s.cost_per_1k_tokens == pytest.approx(3.6 / (500 * 3600) * 1000)
    assert f.quality.perplexity == 27.5 and f.quality.bits_per_byte == 0.91
    assert f.quality.tasks == {"arc_easy/acc": 0.41}
    assert f.performance.memory_bytes == 123456 and f.performance.latency_ms_per_token == 0.5
    assert f.method == "source" and f.size_bytes > 0
    # unknowns stay unknown
    assert s.quality.perplexity is None and s.performance.memory_bytes is None and s.quality.tasks == {}


def test_unknown_cost_without_price_or_bench(two_models, tiny_model):
    m = build_manifest([str(tiny_model)])
    assert m.tiers[0].cost_per_1k_tokens is None and m.tiers[0].performance.throughput_tokens_per_s is None
    fast, _ = two_models
    cpu_only = build_manifest([str(fast)], price_per_cpu_hour=0.1)  # bench ran on cuda: no CPU cost
    assert cpu_only.tiers[0].cost_per_1k_tokens is None


def test_manual_cost_names_remote_and_round_trip(tmp_path, two_models):
    fast, slow = two_models
    m = build_manifest([str(fast), str(slow), "http://10.0.0.5:8000/v1#meta-llama/Llama-3.1-8B"],
                       names=[f"small={fast}", f"big=http://10.0.0.5:8000/v1#meta-llama/Llama-3.1-8B"],
                       costs=["small=0.01", "big=0.5"], api_key_envs=["big=BIG_KEY"], price_per_gpu_hour=2.0,
                       slos=["interactive=2", "batch=60"])
    assert [t.name for t in m.tiers] == ["slow", "small", "big"]
    big = m.tier("big")
    assert isinstance(big, RemoteTier) and big.url == "http://10.0.0.5:8000/v1"
    assert big.model == "meta-llama/Llama-3.1-8B" and big.api_key_env == "BIG_KEY" and big.cost_source == "manual"
    path = write_manifest(m, tmp_path / "tiers.yaml")
    loaded = load_manifest(path)
    assert loaded == m and isinstance(loaded.tiers[1], LocalTier)
    assert {c: s.p95_s for c, s in loaded.slo.items()} == {"interactive": 2.0, "batch": 60.0}
    for bad, expected in ((["chat=2"], "slo.chat"), (["interactive=-1"], "expected a positive number"),
                          (["interactive=soon"], "expected a positive number")):
        with pytest.raises(CompressError, match=expected) as e:
            build_manifest([str(fast)], slos=bad)
        assert "\n" not in str(e.value)


def _write(tmp_path, raw) -> str:
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(raw))
    return str(p)


def test_bad_manifests_are_one_line_errors(tmp_path, tiny_model):
    good = build_manifest([str(tiny_model)]).model_dump(mode="json")
    cases = {
        "unknown schema_version 2": {**good, "schema_version": 2},
        "tiers.0.local.colour: Extra inputs are not permitted": {
            **good, "tiers": [{**good["tiers"][0], "colour": "red"}]},
        "artifact not found": {**good, "tiers": [{**good["tiers"][0], "path": str(tmp_path / "gone")}]},
        "duplicate tier name": {**good, "tiers": good["tiers"] * 2},
        "Extra inputs are not permitted": {**good, "tierz": []},
        "slo.interactive.p95_s": {**good, "slo": {"interactive": {"p95_s": 0}}},
        "slo.interactive.p50_s: Extra inputs": {**good, "slo": {"interactive": {"p95_s": 1, "p50_s": 1}}},
    }
    for expected, raw in cases.items():
        with pytest.raises(CompressError, match=expected) as e:
            load_manifest(_write(tmp_path, raw))
        assert "\n" not in str(e.value)
    with pytest.raises(CompressError, match="manifest not found"):
        load_manifest(tmp_path / "none.yaml")
    with pytest.raises(CompressError, match="expected URL#MODEL_ID"):
        build_manifest(["http://host:8000/v1"])
    with pytest.raises(CompressError, match="does not exist"):
        build_manifest([str(tmp_path / "missing")])


def test_cli_writes_manifest_and_fails_in_one_line(tmp_path, tiny_model, capsys):
    out = tmp_path / "tiers.yaml"
    with pytest.raises(SystemExit) as e:
        main(["manifest", str(tiny_model), "--output", str(out), "--name", f"tiny={tiny_model}",
              "--cost", "tiny=0.002"])
    assert e.value.code in (0, None)
    assert load_manifest(out).tiers[0].cost_per_1k_tokens == 0.002
    with pytest.raises(SystemExit) as e:
        main(["manifest", str(tmp_path / "nope"), "--output", str(tmp_path / "x.yaml")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and not (tmp_path / "x.yaml").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 9\ntiers: []\n")
    with pytest.raises(SystemExit) as e:
        main(["serve", str(bad)])
    assert e.value.code == 2 and "unknown schema_version 9" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["serve", str(out), "--slo-p95", "2", "--slo-window", "0"])
    assert e.value.code == 2 and "--slo-window: Input should be greater than 0" in capsys.readouterr().err


def test_a_remote_tier_takes_its_quality_from_an_eval_file(tmp_path, tiny_model):
    """`compress eval URL#MODEL --output FILE` writes the same eval JSON as a local eval; `--eval NAME=FILE`
    puts it in the manifest (here the JSON comes from a local eval of the tiny model: same format)."""
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(tiny_model), "--perplexity", "builtin", "--max-tokens", "200", "--context-len", "64",
              "--device", "cpu", "--output", str(tmp_path / "remote-eval.json")])
    assert exc.value.code == 0
    remote = "http://127.0.0.1:9/v1#big"
    m = build_manifest([str(tiny_model), remote], evals=[f"big={tmp_path / 'remote-eval.json'}"])
    big = m.tier("big")
    assert big.quality.perplexity is not None and big.quality.perplexity > 1
    assert big.quality.source == str(tmp_path / "remote-eval.json")
    (tmp_path / "not-eval.json").write_text("{}")
    for evals, expected in ((["nobody=x.json"], "unknown tier"), ([f"big={tmp_path / 'not-eval.json'}"], "not an eval JSON")):
        with pytest.raises(CompressError, match=expected):
            build_manifest([remote], evals=evals)
