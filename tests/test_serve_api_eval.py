"""`compress eval URL#MODEL` against a real `compress serve` on 127.0.0.1: perplexity through echo +
logprobs, and a local multiple-choice task through lm-eval's own `local-completions` model, give
what `compress eval` gives on the model directly."""

from __future__ import annotations

import pytest

from compress.evaluate.run import evaluate, make_eval_config
from compress.manifest import build_manifest, write_manifest
from tests.serve_helpers import Server


@pytest.mark.slow  # starts its own server process and runs lm-eval twice
def test_remote_eval_matches_local_eval(tiny_model, tmp_path):
    s = Server(write_manifest(build_manifest([str(tiny_model)]), tmp_path / "tiers.yaml"), "--max-batch", "8",
               log=tmp_path / "server.log")
    try:
        import httpx

        tier = httpx.get(s.url + "/health").json()["tiers"][0]
        kw = dict(perplexity=["builtin"], tasks=["stdlib_docstring_mc"], limit=12, context_len=64, max_tokens=300,
                  batch_size=4, device="cpu")
        remote = evaluate(f"{s.url}/v1#{tier}", make_eval_config(**kw, tokenizer=str(tiny_model)), progress=False)
        local = evaluate(str(tiny_model), make_eval_config(**kw), progress=False)
    finally:
        assert s.stop() == 0
    assert remote.model.kind == "remote" and remote.settings.device == "remote"
    assert set(remote.metrics) == set(local.metrics)
    assert remote.perplexity["builtin"].tokens_scored == local.perplexity["builtin"].tokens_scored
    assert remote.metrics["ppl:builtin"] == pytest.approx(local.metrics["ppl:builtin"], rel=1e-4)
    assert remote.tasks["stdlib_docstring_mc"].samples == 12
    for m in ("acc", "acc_norm"):  # the same items, scored through the server: within 0.5 points
        assert abs(remote.metrics[f"stdlib_docstring_mc:{m}"] - local.metrics[f"stdlib_docstring_mc:{m}"]) <= 0.005


def test_endpoint_spec_needs_a_tokenizer_and_an_output(tmp_path):
    from compress.errors import CompressError
    from compress.evaluate.remote import parse_spec
    from compress.evaluate.run import default_output

    assert parse_spec("http://127.0.0.1:8000/v1#tiny") == ("http://127.0.0.1:8000/v1", "tiny")
    assert parse_spec("/models/tiny") is None
    with pytest.raises(CompressError, match="--tokenizer"):
        evaluate("http://127.0.0.1:9/v1#tiny", make_eval_config(perplexity=["builtin"]))
    with pytest.raises(CompressError, match="--output"):
        default_output("http://127.0.0.1:9/v1#tiny")
