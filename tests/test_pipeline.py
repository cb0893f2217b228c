"""Recipes, `compress run` and `compress gate` on a tiny model."""

from __future__ import annotations

import json

import pytest
import yaml

from compress.cli import main
from compress.errors import CompressError
from compress.pipeline import run_recipe
from compress.recipe import load_recipe


def _recipe(tmp_path, model, gates, name="r.yaml"):
    doc = {
        "schema_version": 1, "name": "tiny", "model": str(model), "device": "cpu",
        "output": str(tmp_path / "out"),
        "tiers": [{"name": "source"},
                  {"name": "rtn", "quantize": {"method": "rtn", "bits": 4, "group_size": 32}}],
        "eval": {"perplexity": ["builtin"], "context_len": 64, "max_tokens": 192},
        "bench": {"batch_sizes": [1], "prompt_len": 8, "gen_len": 4, "repeats": 1, "warmup": 0, "decoder": "generate"},
        "gates": gates, "price_per_hour": 0.1,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _cli(capsys, *argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d.update(tierz=[]), "tierz: unknown key"),
    (lambda d: d["tiers"][1]["quantize"].update(bitz=4), "bitz: unknown key"),
    (lambda d: d["eval"].update(max_tokens="many"), "max_tokens"),
    (lambda d: d.pop("model"), "missing required key 'model'"),
    (lambda d: d.update(schema_version=7), "unknown schema_version 7"),
    (lambda d: d["tiers"].append({"name": "x", "from": "nope"}), "must name an earlier tier"),
])
def test_recipe_validation_errors_are_one_line(tmp_path, capsys, tiny_model, edit, expected):
    path = _recipe(tmp_path, tiny_model, {})
    doc = yaml.safe_load(path.read_text())
    edit(doc)
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CompressError, match=expected.split(":")[0]):
        load_recipe(path)
    code, _, err = _cli(capsys, "run", str(path))
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_shipped_recipes_validate():
    for name in ("recipes/quick-cpu.yaml", "recipes/full-gpu.yaml"):
        assert load_recipe(name).baseline == "source"


@pytest.mark.slow
def test_run_then_rerun_skips_and_gates(tmp_path, capsys, tiny_model):
    loose = _recipe(tmp_path, tiny_model, {"default": {"min_recovery": {"ppl:*": 0.5}, "max_p95_s": 600}})
    first = run_recipe(load_recipe(loose), log=lambda m: None)
    out = first.output
    assert set(first.built) == {f"{s}:{t}" for s in ("build", "eval", "bench") for t in ("source", "rtn")}
    for t in ("source", "rtn"):
        assert (out / "tiers" / t / "eval.json").is_file() and (out / "tiers" / t / "bench.json").is_file()
    manifest = yaml.safe_load(first.manifest.read_text())
    assert {t["name"] for t in manifest["tiers"]} == {"source", "rtn"}
    for t in manifest["tiers"]:  # measured values reach the manifest; cost derives from price and throughput
        assert t["quality"]["perplexity"] > 1 and t["performance"]["throughput_tokens_per_s"] > 0
        assert t["cost_per_1k_tokens"] > 0 and t["cost_source"] == "measured"
    page = first.report.read_text()
    assert "<h2>Gates</h2>" in page and "data:image/png;base64," in page and "Tiers and cost" in page
    assert first.passed and {g.rule for g in first.gates} == {"min_recovery", "max_p95_s"}

    second = run_recipe(load_recipe(loose), log=lambda m: None)
    assert second.built == [] and len(second.skipped) == 6

    code, stdout, _ = _cli(capsys, "gate", str(out), "--recipe", str(loose))
    assert code == 0 and "pass" in stdout
    strict = _recipe(tmp_path, tiny_model, {"rtn": {"min_recovery": {"ppl:*": 1.5}}}, name="strict.yaml")
    code, stdout, _ = _cli(capsys, "gate", str(out), "--recipe", str(strict))
    assert code == 1 and "FAIL" in stdout
    unknown_metric = _recipe(tmp_path, tiny_model, {"rtn": {"min_recovery": {"acc:*": 0.9}}}, name="u.yaml")
    code, _, err = _cli(capsys, "gate", str(out), "--recipe", str(unknown_metric))
    assert code == 2 and "no measured metric" in err
    code, _, err = _cli(capsys, "gate", str(tmp_path / "missing"), "--recipe", str(loose))
    assert code == 2 and "not found" in err
    checks = json.loads((out / "gates.json").read_text())
    assert all(c["passed"] for c in checks)
