"""The report: quality vs latency vs size, drawn from real eval and bench results of tiny models."""

from __future__ import annotations

import base64
import re

import pytest

from compress.bench.run import make_bench_config, bench
from compress.errors import CompressError
from compress.evaluate.results import write_json_atomic
from compress.evaluate.run import evaluate, make_eval_config
from compress.report import write_report


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_model, tokenizer):
    from compress.testing import build_tiny_llama

    tmp = tmp_path_factory.mktemp("report")
    other = build_tiny_llama(tmp / "other", seed=4, tokenizer=tokenizer, layers=1)
    cfg = make_eval_config(perplexity=["builtin"], context_len=64, max_tokens=128, device="cpu")
    evals = []
    for i, m in enumerate((tiny_model, other)):
        r = evaluate(str(m), cfg, baseline=None if i == 0 else str(tmp / "eval0.json"), progress=False)
        evals.append(write_json_atomic(tmp / f"eval{i}.json", r.model_dump(mode="json")))
    b = bench([str(tiny_model), str(other)], make_bench_config(batch_sizes=[1, 2], prompt_len=8, gen_len=3, repeats=1,
                                                               warmup=0, device="cpu", isolate=False), progress=False)
    return tmp, evals, write_json_atomic(tmp / "bench.json", b), other


def test_report_renders_plots_and_table(results, tiny_model):
    tmp, evals, bench_file, other = results
    out = write_report(tmp / "r.html", evals, [bench_file], title="tiny report")
    page = out.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3  # quality vs latency (size as marker area), quality vs size, throughput by batch
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "<table>" in page and "tiny report" in page
    for label in (tiny_model.name, other.name):
        assert f"<td>{label}</td>" in page
    assert "ppl:builtin" in page and "recovery ppl:builtin" in page and "tok/s b2" in page
    # The same model in two bench runs keeps a row per run, labelled by the file, rather than one overwriting the other.
    (tmp / "again.json").write_text(bench_file.read_text())
    page = write_report(tmp / "r2.html", evals, [bench_file, tmp / "again.json"]).read_text()
    assert f"<td>{tiny_model.name}</td>" in page and f"<td>{tiny_model.name} [again]</td>" in page


def test_report_cli_and_bad_inputs(results, tmp_path, capsys):
    from compress.cli import main

    tmp, evals, bench_file, _ = results
    with pytest.raises(SystemExit) as exc:
        main(["report", "--eval", str(evals[0]), "--bench", str(bench_file), "--output", str(tmp_path / "a.html")])
    assert exc.value.code == 0 and (tmp_path / "a.html").is_file()
    with pytest.raises(CompressError, match="not a compress bench result"):
        write_report(tmp_path / "b.html", [], [evals[0]])
    with pytest.raises(CompressError, match="metric 'nope'"):
        write_report(tmp_path / "b.html", evals, [], metric="nope")
    with pytest.raises(CompressError, match="at least one"):
        write_report(tmp_path / "b.html", [], [])
    assert not (tmp_path / "b.html").exists()
