"""`compress eval`: perplexity semantics, local lm-eval tasks run offline, recovery ratios, the result file."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from compress.data import load_texts, tokenize_stream
from compress.errors import CompressError
from compress.evaluate import harness
from compress.evaluate.perplexity import perplexity
from compress.evaluate.results import load_eval, recovery
from compress.evaluate.run import evaluate, make_eval_config
from compress.models import load_causal_lm, load_tokenizer


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, tokenizer):
    """A second tiny Llama (another seed): a 'compressed' model to compare with the first."""
    from compress.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny2") / "model", seed=1, tokenizer=tokenizer)


def test_sliding_window_equals_direct_computation(tiny_model):
    """Overlapping windows: each token is scored once, with the window's full left context."""
    model = load_causal_lm(str(tiny_model), device="cpu")
    tok = load_tokenizer(str(tiny_model))
    texts = load_texts()[:3]
    ctx, stride = 48, 16
    res = perplexity(model, tok, texts, context_len=ctx, stride=stride, max_tokens=150)
    ids = tokenize_stream(tok, texts, max_tokens=150)
    nll = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            # Direct: target t is scored by the first window (starts at multiples of stride) that
            # reaches it, with every earlier token of that window as context.
            begin = max(0, math.ceil((t - ctx + 1) / stride) * stride)
            w = ids[begin:t + 1][None]
            logits = model(w).logits[0, -2]
            nll += F.cross_entropy(logits[None], ids[t:t + 1]).item()
    assert res.tokens_scored == len(ids) - 1
    assert math.isclose(res.perplexity, math.exp(nll / (len(ids) - 1)), rel_tol=1e-4)
    assert res.context_len == ctx and res.stride == stride


def test_local_tasks_run_offline_in_real_lm_eval(tiny_model):
    assert {"stdlib_docstring_mc", "pydoc_keyword_cloze"} <= set(harness.local_tasks())
    model = load_causal_lm(str(tiny_model), device="cpu")
    tok = load_tokenizer(str(tiny_model))
    out = harness.run_tasks(model, tok, ["stdlib_docstring_mc", "pydoc_keyword_cloze"], limit=6, batch_size=4)
    for name, task in out.items():
        assert task["samples"] == 6, name
        assert set(task["metrics"]) == {"acc", "acc_norm"}
        for v in task["metrics"].values():
            assert 0.0 <= v <= 1.0 and (v * 6) == pytest.approx(round(v * 6))  # a count of correct answers / 6


def test_user_task_dir(tmp_path, tiny_model):
    """A user's own YAML task folder (as README documents) is found and run."""
    folder = tmp_path / "mytask"
    folder.mkdir()
    (folder / "data.jsonl").write_text("\n".join(json.dumps({"q": f"{a} plus {b} is", "choices": [str(a + b), str(a + b + 1)],
                                                             "label": 0}) for a, b in [(1, 2), (3, 4), (5, 6)]) + "\n")
    (folder / "utils.py").write_text(
        "from pathlib import Path\nimport datasets\n\n"
        "def load(**kwargs):\n"
        "    f = str(Path(__file__).with_name('data.jsonl'))\n"
        "    return datasets.DatasetDict({'test': datasets.load_dataset('json', data_files=f, split='train')})\n")
    (folder / "my_sums.yaml").write_text(
        "task: my_sums\ncustom_dataset: !function utils.load\noutput_type: multiple_choice\ntest_split: test\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    model = load_causal_lm(str(tiny_model), device="cpu")
    tok = load_tokenizer(str(tiny_model))
    out = harness.run_tasks(model, tok, ["my_sums"], task_dir=tmp_path, batch_size=2)
    assert out["my_sums"]["samples"] == 3 and "acc" in out["my_sums"]["metrics"]


def test_recovery_ratio_directions():
    hib = {"ppl:x": False, "t:acc": True}
    r = recovery({"ppl:x": 12.0, "t:acc": 0.45, "only:here": 1.0}, {"ppl:x": 10.0, "t:acc": 0.5}, hib)
    assert r == {"ppl:x": pytest.approx(10 / 12), "t:acc": pytest.approx(0.9)}


def test_eval_with_baseline_model_and_json(tmp_path, tiny_model, other_model):
    # Perplexity only: task metrics take the same recovery path (test_recovery_ratio_directions covers acc).
    cfg = make_eval_config(perplexity=["builtin"], context_len=64, max_tokens=256, device="cpu")
    base = evaluate(str(tiny_model), cfg, progress=False)
    (tmp_path / "base.json").write_text(base.model_dump_json())
    res = evaluate(str(other_model), cfg, baseline=str(tiny_model), progress=False)
    assert res.baseline.metrics == pytest.approx(base.metrics)
    assert res.recovery["ppl:builtin"] == pytest.approx(base.metrics["ppl:builtin"] / res.metrics["ppl:builtin"])
    assert res.recovery["bpb:builtin"] == pytest.approx(base.metrics["bpb:builtin"] / res.metrics["bpb:builtin"])
    from_json = evaluate(str(other_model), cfg, baseline=str(tmp_path / "base.json"), progress=False)
    assert from_json.recovery == pytest.approx(res.recovery)
    other = make_eval_config(perplexity=["builtin"], context_len=32, max_tokens=256, device="cpu")
    with pytest.raises(CompressError, match="different settings"):
        evaluate(str(other_model), other, baseline=str(tmp_path / "base.json"), progress=False)


def _cli(*args):
    """The real CLI entry point, in-process (a Python start per case would cost more than the case)."""
    from compress.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code


def test_eval_cli_writes_beside_model(tmp_path, tokenizer, capsys):
    from compress.testing import build_tiny_llama

    model = build_tiny_llama(tmp_path / "m", seed=2, tokenizer=tokenizer)
    r = _cli("eval", str(model), "--perplexity", "builtin", "--max-tokens", "200", "--context-len", "64",
             "--tasks", "stdlib_docstring_mc", "--limit", "3", "--device", "cpu")
    assert r == 0
    res = load_eval(model / "eval.json")
    assert res.schema_version == 1 and res.settings.context_len == 64 and res.settings.stride == 64
    assert set(res.metrics) == {"ppl:builtin", "bpb:builtin", "stdlib_docstring_mc:acc", "stdlib_docstring_mc:acc_norm"}
    assert res.tasks["stdlib_docstring_mc"].samples == 3
    assert "ppl:builtin" in capsys.readouterr().out  # the printed table


@pytest.mark.parametrize("args, message", [
    (["eval", "{tmp}/missing-model", "--output", "{tmp}/o.json"], "does not exist"),
    (["eval", "{model}", "--tasks", "no_such_task_xyz", "--output", "{tmp}/o.json"], "unknown task"),
    (["eval", "{model}", "--perplexity", "{tmp}/nope.txt", "--output", "{tmp}/o.json"], "not found"),
    (["eval", "{model}", "--context-len", "64", "--stride", "128", "--output", "{tmp}/o.json"], "stride"),
    (["eval", "{model}", "--baseline", "{tmp}/missing.json", "--output", "{tmp}/o.json"], "not found"),
])
def test_eval_bad_input_is_one_line(tmp_path, tiny_model, capsys, args, message):
    code = _cli(*[a.format(tmp=tmp_path, model=tiny_model) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o.json").exists()
