"""The learned router: training on outcome rows separates prompt families, the decision rule (cheapest
tier with p >= keep x best, the heuristic for tiers without a classifier, the SLO's lower keep),
router.json round trip and one-line errors, `compress router train`, `compress manifest --router`,
and a real server that routes by it. CPU, no model except in the last test (two tiny random ones)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import httpx
import pytest
import yaml

from compress.cli import main
from compress.errors import CompressError
from compress.manifest import LocalTier, Manifest, Quality, build_manifest, load_manifest, write_manifest
from compress.serve.learned import (Outcome, TrainConfig, load_router, read_outcomes, train_router,
                                    write_router)
from compress.serve.router import Router
from compress.serve.slo import SLOConfig, SLOController

COUNTRIES = ["France", "Spain", "Italy", "Germany", "Poland", "Norway", "Sweden", "Finland", "Greece", "Turkey",
             "Egypt", "Kenya", "Ghana", "Peru", "Chile", "Canada", "Mexico", "Cuba", "Japan", "China", "India",
             "Nepal", "Iran", "Iraq", "Syria", "Israel", "Jordan", "Yemen", "Oman", "Qatar", "Austria", "Belgium",
             "Denmark", "Ireland", "Portugal", "Hungary", "Romania", "Bulgaria", "Serbia", "Croatia"]
HELD_OUT_COUNTRIES = ["Morocco", "Brazil", "Argentina", "Vietnam", "Thailand", "Australia"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def capital(country: str) -> str:
    return f"Question: What is the capital of {country}?\nAnswer: The capital of {country} is"


def sequence(i: int) -> str:
    if i % 2:
        return f"{i}, {i + 1}, {i + 2},"
    m = i % 9
    return ", ".join(MONTHS[m:m + 3]) + ","


def outcomes(small: str = "small", large: str = "large", seed: int = 0, small_on_easy: float = 0.95) -> list[Outcome]:
    """The small tier continues sequences but knows no capitals; the large one does both (5% noise)."""
    rng = random.Random(seed)
    rows = []
    for i in range(40):
        rows.append(Outcome(sequence(100 + 7 * i), small, rng.random() < small_on_easy, 4))
        rows.append(Outcome(sequence(100 + 7 * i), large, rng.random() < 0.95, 4))
    for c in COUNTRIES:
        rows.append(Outcome(capital(c), small, rng.random() < 0.05, 4))
        rows.append(Outcome(capital(c), large, rng.random() < 0.95, 4))
    return rows


def _tier(name, cost, **quality):
    return LocalTier(name=name, path=f"/m/{name}", method="gptq", cost_per_1k_tokens=cost, quality=Quality(**quality))


def test_training_separates_the_families_and_auto_routes_them():
    rows = outcomes()
    rf = train_router(rows)
    small, large = rf.tiers["small"].stats, rf.tiers["large"].stats
    distinct = len({r.prompt for r in rows})  # month sequences repeat: their rows are pooled
    assert (small.rows, small.prompts, large.rows) == (80, distinct, 80) and distinct < 80 and not small.constant
    assert small.cv_folds == 5 and small.cv_accuracy >= 0.9 > small.majority_accuracy  # held out, better than a guess
    assert small.train_accuracy >= 0.9
    # The penalty is chosen per tier: the prompt predicts the small tier's success, not the large one's.
    assert small.l2 < large.l2 == max(TrainConfig().l2_grid)
    assert train_router(outcomes()).tiers == rf.tiers  # deterministic

    from compress.serve.learned import LearnedRouter

    learned = LearnedRouter(rf)
    m = Manifest(tiers=[_tier("small", 0.001, tasks={"acc": 0.5}), _tier("large", 0.01, tasks={"acc": 0.9})])
    r = Router(m, learned=learned, keep=0.9)
    for i in (3, 5, 8, 11):  # sequences it has not seen
        p = learned.predict(sequence(900 + i), 4)
        assert p["small"] > 0.7 and p["large"] > 0.7, p
        d = r.route("auto", sequence(900 + i), 4)
        assert [t.name for t in d.tiers] == ["small", "large"] and d.predicted == pytest.approx(p)
    for c in HELD_OUT_COUNTRIES:
        p = learned.predict(capital(c), 4)
        assert p["small"] < 0.2 < 0.7 < p["large"], p
        d = r.route("auto", capital(c), 4)
        assert [t.name for t in d.tiers] == ["large"] and d.required_success == pytest.approx(0.9 * p["large"])
        assert "predicted success small 0." in d.describe() and d.describe().endswith("-> large")
    assert [t.name for t in r.route("small").tiers] == ["small"]  # explicit ids are untouched


def test_keep_is_the_slo_lever_and_tiers_without_a_classifier_use_the_heuristic():
    # The small tier is right on ~80% of sequences, the large on ~95%: a predicted ratio below 1.
    from compress.serve.learned import LearnedRouter

    learned = LearnedRouter(train_router(outcomes(small_on_easy=0.8, seed=3)))
    m = Manifest(tiers=[_tier("small", 0.001), _tier("large", 0.01)])
    prompt = sequence(901)
    p = learned.predict(prompt, 4)
    ratio = p["small"] / p["large"]
    assert 0.5 < ratio < 0.9, p
    base = ratio + 0.05  # just too strict for the small tier
    r = Router(m, learned=learned, keep=base)
    assert [t.name for t in r.route("auto", prompt, 4).tiers] == ["large"]
    slo = SLOController(SLOConfig({"interactive": 1.0}, min_samples=1))
    assert slo.route_floor(base, 0.0) == base
    slo.observe("interactive", 0.7, now=0.0)  # 70% of the target: TIGHT lowers keep by 0.15
    keep = slo.route_floor(base, 0.0)
    assert keep == pytest.approx(base - 0.15)
    assert [t.name for t in r.route("auto", prompt, 4, keep=keep).tiers] == ["small", "large"]

    # A tier the router has no classifier for ("mid") is judged by the heuristic: measured quality 0.69
    # of 0.70 passes the floor for these short prompts, so it is a candidate for both families.
    m3 = Manifest(tiers=[_tier("small", 0.001, tasks={"acc": 0.30}), _tier("mid", 0.004, tasks={"acc": 0.69}),
                         _tier("large", 0.01, tasks={"acc": 0.70})])
    r3 = Router(m3, learned=LearnedRouter(train_router(outcomes())), keep=0.9)
    assert [t.name for t in r3.route("auto", sequence(905), 4).tiers] == ["small", "mid", "large"]
    assert [t.name for t in r3.route("auto", capital("Brazil"), 4).tiers] == ["mid", "large"]


def test_one_class_tier_is_a_constant_prediction():
    rows = [Outcome(f"{i}, {i + 1},", "big", True) for i in range(12)] + [
        Outcome(f"{i}, {i + 1},", "tiny", i % 3 == 0) for i in range(12)]
    rf = train_router(rows)
    big = rf.tiers["big"]
    assert big.stats.constant and big.indices == [] and big.stats.cv_accuracy is None
    assert big.stats.success_rate == 1.0 and big.stats.train_accuracy == 1.0
    from compress.serve.learned import LearnedRouter

    p = LearnedRouter(rf).predict("anything at all")["big"]
    assert p == pytest.approx(12.5 / 13)  # (correct + 0.5) / (rows + 1)
    assert not rf.tiers["tiny"].stats.constant


def test_router_file_round_trip_and_one_line_errors(tmp_path):
    rf = train_router(outcomes(), training=TrainConfig(folds=3))
    path = write_router(rf, tmp_path / "router.json")
    loaded = load_router(path, ["small", "large", "other"])
    assert loaded.file == rf
    from compress.serve.learned import LearnedRouter

    for prompt in (capital("Brazil"), sequence(1001), ""):
        assert loaded.predict(prompt, 4) == pytest.approx(LearnedRouter(rf).predict(prompt, 4), abs=1e-6)
    raw = json.loads(path.read_text())
    assert raw["kind"] == "compress-router" and raw["schema_version"] == 1
    assert raw["tiers"]["small"]["stats"]["cv_folds"] == 3

    def bad(change, expected, tiers=None):
        p = tmp_path / "bad.json"
        p.write_text(json.dumps(change(json.loads(path.read_text()))))
        with pytest.raises(CompressError, match=expected) as e:
            load_router(p, tiers)
        assert "\n" not in str(e.value)

    bad(lambda r: {**r, "schema_version": 2}, "unknown schema_version 2")
    bad(lambda r: {**r, "kind": "eval"}, "not a compress router")
    bad(lambda r: {**r, "colour": "red"}, "colour: Extra inputs are not permitted")
    bad(lambda r: r, r"tier\(s\) 'small', 'large' not in the manifest \(it has: a, b\)", tiers=["a", "b"])
    bad(lambda r: {**r, "tiers": {"small": {**r["tiers"]["small"], "indices": [1 << 30]}}}, "indices but")
    bad(lambda r: {**r, "tiers": {"small": {**r["tiers"]["small"], "indices": [1 << 30], "values": [1.0]}}},
        "feature index out of range")
    with pytest.raises(CompressError, match="router not found"):
        load_router(tmp_path / "missing.json")
    (tmp_path / "garbled.json").write_text("{not json")
    with pytest.raises(CompressError, match="not valid JSON"):
        load_router(tmp_path / "garbled.json")


def test_outcome_files_are_checked_line_by_line(tmp_path):
    good = {"prompt": "1, 2,", "tier": "a", "correct": True}
    cases = {
        "no outcome rows": "\n\n",
        "line 2: missing key\\(s\\) tier": json.dumps(good) + "\n" + json.dumps({"prompt": "x", "correct": 1}),
        "line 1: not valid JSON": "{oops",
        "line 1: correct must be true/false": json.dumps({**good, "correct": "yes"}),
        "line 1: max_tokens must be a positive integer": json.dumps({**good, "max_tokens": 0}),
        "line 1: expected an object": "[1, 2]",
    }
    for expected, text in cases.items():
        p = tmp_path / "o.jsonl"
        p.write_text(text)
        with pytest.raises(CompressError, match=expected) as e:
            read_outcomes([p])
        assert "\n" not in str(e.value)
    with pytest.raises(CompressError, match="outcomes file not found"):
        read_outcomes([tmp_path / "none.jsonl"])
    p = tmp_path / "ok.jsonl"
    p.write_text(json.dumps({**good, "kind": "numbers", "max_tokens": 8}) + "\n")  # extra keys are ignored
    assert read_outcomes([p]) == [Outcome("1, 2,", "a", True, 8)]


def _write_outcomes(path: Path, rows: list[Outcome]) -> Path:
    path.write_text("".join(json.dumps({"prompt": r.prompt, "tier": r.tier, "correct": r.correct,
                                        "max_tokens": r.max_tokens}) + "\n" for r in rows))
    return path


def test_cli_router_train_and_manifest_router(tmp_path, tiny_model, capsys):
    data = _write_outcomes(tmp_path / "outcomes.jsonl", outcomes(small="tiny", large="big"))
    constant = _write_outcomes(tmp_path / "more.jsonl", [Outcome("hello", "other", False)])
    out = tmp_path / "r" / "router.json"
    with pytest.raises(SystemExit) as e:
        main(["router", "train", str(data), str(constant), "--output", str(out), "--folds", "4", "--l2", "0.5"])
    assert e.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "tiny" in printed and "note: other was never right here: a constant prediction" in printed
    rf = load_router(out)
    assert list(rf.tiers) == ["tiny", "big", "other"] and rf.file.training.folds == 4
    assert [m.stats.l2 for m in rf.file.tiers.values()] == [0.5, 0.5, None]  # given, not searched; constant
    assert rf.file.sources == [str(data), str(constant)]

    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit) as e:  # no outcome rows: one line, exit 2, nothing written
        main(["router", "train", str(tmp_path / "empty.jsonl"), "--output", str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "x.json").exists()

    # A router with a tier the manifest lacks is refused when the manifest is written.
    a, b = shutil.copytree(tiny_model, tmp_path / "tiny"), shutil.copytree(tiny_model, tmp_path / "big")
    tiers = tmp_path / "m" / "tiers.yaml"
    manifest_args = ["manifest", str(a), str(b), "--cost", "tiny=0.001", "--cost", "big=0.002", "--output", str(tiers)]
    with pytest.raises(SystemExit) as e:
        main([*manifest_args, "--router", str(out)])
    assert e.value.code == 2 and "tier(s) 'other' not in the manifest (it has: tiny, big)" in capsys.readouterr().err
    assert not tiers.exists()
    with pytest.raises(SystemExit) as e:  # an old-style manifest (no router) stays as it was
        main(manifest_args)
    assert e.value.code in (0, None) and "router" not in yaml.safe_load(tiers.read_text())
    assert load_manifest(tiers).router is None
    with pytest.raises(SystemExit) as e:  # --manifest checks the outcome tiers
        main(["router", "train", str(constant), "--output", str(tmp_path / "y.json"), "--manifest", str(tiers)])
    assert e.value.code == 2 and "tier(s) other in the outcomes are not in" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["router", "train", str(data), "--output", str(out), "--manifest", str(tiers)])
    assert e.value.code in (0, None)
    with pytest.raises(SystemExit) as e:
        main([*manifest_args, "--router", str(out)])
    assert e.value.code in (0, None)
    capsys.readouterr()

    # The manifest names the router relative to itself: the two move together.
    assert yaml.safe_load(tiers.read_text())["router"] == "../r/router.json"
    m = load_manifest(tiers)
    assert m.router == str(out.resolve())
    moved = shutil.copytree(tmp_path / "m", tmp_path / "elsewhere" / "m")
    shutil.copytree(tmp_path / "r", tmp_path / "elsewhere" / "r")
    assert load_manifest(moved / "tiers.yaml").router == str((tmp_path / "elsewhere/r/router.json").resolve())
    write_manifest(m, tmp_path / "m2" / "again.yaml")  # re-written elsewhere: still the same file
    assert yaml.safe_load((tmp_path / "m2" / "again.yaml").read_text())["router"] == "../r/router.json"
    assert load_manifest(tmp_path / "m2" / "again.yaml") == m
    tiers.write_text(tiers.read_text().replace("router: ../r/router.json", "router: gone.json"))
    with pytest.raises(CompressError, match="router not found at"):
        load_manifest(tiers)


@pytest.mark.slow  # starts its own server process
def test_server_routes_by_the_learned_router(tmp_path, tiny_model, tokenizer):
    from compress.testing import build_tiny_llama
    from tests.serve_helpers import Server

    small = shutil.copytree(tiny_model, tmp_path / "tiny-a")
    large = build_tiny_llama(tmp_path / "tiny-b", seed=1, tokenizer=tokenizer)
    router = write_router(train_router(outcomes(small="tiny-a", large="tiny-b")), tmp_path / "router.json")
    manifest = write_manifest(build_manifest([str(small), str(large)], costs=["tiny-a=0.001", "tiny-b=0.002"],
                                             router=router), tmp_path / "tiers.yaml")
    s = Server(manifest, "--max-wait-ms", "0", log=tmp_path / "server.log")
    try:
        def ask(prompt):
            r = httpx.post(s.url + "/v1/completions", timeout=60, headers={"cache-control": "no-store"},
                           json={"model": "auto", "prompt": prompt, "max_tokens": 4, "temperature": 0})
            assert r.status_code == 200, r.text
            return r.headers["x-compress-tier"], float(r.headers["x-compress-cost"]), r.json()["usage"]

        for i in (1, 4):
            tier, cost, use = ask(sequence(700 + i))
            assert tier == "tiny-a" and cost == pytest.approx(use["total_tokens"] / 1000 * 0.001, rel=1e-6)
        for c in ("Brazil", "Morocco"):
            tier, cost, use = ask(capital(c))
            assert tier == "tiny-b" and cost == pytest.approx(use["total_tokens"] / 1000 * 0.002, rel=1e-6)
    finally:
        assert s.stop() == 0
    log = (tmp_path / "server.log").read_text()
    assert "predicted success tiny-a 0." in log and "-> tiny-b" in log
