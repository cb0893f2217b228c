"""Route (b): our engine (`EngineCore`: scheduling, chunked prefill, sampling) over llama.cpp running a tier's GGUF
export (`compress.serve.llamacpp_runner`). Skips where llama-cpp-python is not installed (`make llamacpp`)."""

from __future__ import annotations

import numpy as np
import pytest

from compress.errors import CompressError
from compress.export import export_gguf
from compress.models import load_tokenizer
from compress.quantize import make_config, quantize
from compress.serve.batcher import Batcher, EngineCore
from compress.serve.sequence import SamplingParams, Sequence

PROMPTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b",
           "Ça coûte 12,50 € — naïve café", "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory, tiny_model):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make llamacpp` builds it)")
    out = tmp_path_factory.mktemp("llamacpp-runner")
    art = quantize(str(tiny_model), make_config(method="rtn", bits=4, group_size=32), out / "rtn", device="cpu",
                   measure_quality=False).output
    export_gguf(art, out / "tier.gguf")
    return out / "tier.gguf", load_tokenizer(art), art


def _runner(gguf, max_batch=4):
    from compress.serve.llamacpp_runner import LlamaCppModel, LlamaCppRunner

    path, tok, _ = gguf
    return LlamaCppRunner(LlamaCppModel(path, max_batch=max_batch, max_context=256, threads=2), tok)


def _serve(runner, requests: list[tuple[list[int], SamplingParams]], prefill_budget=8) -> list[Sequence]:
    """Run requests through the engine until all finish (prompts chunked by a small prefill budget)."""
    core = EngineCore(runner, Batcher(max_batch=runner.model.max_batch, max_wait_s=0.0), prefill_budget=prefill_budget)
    seqs = [Sequence(f"r{i}", ids, params, arrival=0.0) for i, (ids, params) in enumerate(requests)]
    for s in seqs:
        core.batcher.add(s)
    for _ in range(1000):
        core.step()
        if all(s.finish_reason for s in seqs):
            return seqs
    raise AssertionError("the engine did not finish")


def _ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_engine_greedy_matches_llama_cpp_alone(gguf):
    """Batched, chunked, through our scheduler = each prompt greedily decoded by llama-cpp-python's own `Llama`
    (flash attention on, as the runner's context has it on a CPU); slots never leak into each other."""
    import llama_cpp

    path, tok, _ = gguf
    runner = _runner(gguf)
    greedy = SamplingParams(max_tokens=12, ignore_eos=True)
    seqs = _serve(runner, [(_ids(tok, p), greedy) for p in PROMPTS])
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                          flash_attn=True)
    for p, s in zip(PROMPTS, seqs):
        llm.reset()
        llm.eval(_ids(tok, p))
        alone = []
        for _ in range(12):
            alone.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([alone[-1]])
        assert s.output_ids == alone, p
        assert s.finish_reason == "length"
    assert sorted(runner.free) == [0, 1, 2, 3]  # every slot handed back
    again = _serve(runner, [(_ids(tok, PROMPTS[2]), greedy)])  # a reused slot starts clean
    assert again[0].output_ids == seqs[2].output_ids


def test_sampling_parameters_are_ours(gguf):
    """Seeded sampling repeats, stop ids end a sequence, prompt logprobs cover the prompt."""
    _, tok, _ = gguf
    runner = _runner(gguf)
    ids = _ids(tok, PROMPTS[0])
    sampled = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    a, b = _serve(runner, [(ids, sampled), (ids, sampled)])
    assert a.output_ids == b.output_ids and len(a.output_ids) == 10
    greedy = _serve(runner, [(ids, SamplingParams(max_tokens=10, ignore_eos=True))])[0].output_ids
    stop = _serve(runner, [(ids, SamplingParams(max_tokens=10, stop_token_ids=(greedy[3],), ignore_eos=True))])[0]
    assert stop.finish_reason == "stop" and stop.output_ids == greedy[:greedy.index(greedy[3])]
    scored = _serve(runner, [(ids, SamplingParams(max_tokens=1, prompt_logprobs=2, logprobs=2))])[0]
    assert len(scored.prompt_logprobs_out) == len(ids) and scored.prompt_logprobs_out[0] is None
    assert all(lp.logprob <= 0 and len(lp.top) == 2 for lp in scored.prompt_logprobs_out[1:])


def test_missing_file_is_a_clear_error(tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make llamacpp` builds it)")
    from compress.serve.llamacpp_runner import LlamaCppModel

    with pytest.raises(CompressError, match="is not a GGUF file"):
        LlamaCppModel(tmp_path / "nope.gguf")


def test_async_front_end_serves_the_gguf(gguf):
    """The GGUF behind `AsyncEngine`: concurrent requests stream their tokens and the tier's metrics count them."""
    import asyncio

    from compress.serve.llamacpp_runner import load_llamacpp_engine
    from compress.serve.metrics import ServeMetrics

    path, tok, art = gguf
    metrics = ServeMetrics()
    engine = load_llamacpp_engine("q4_0", path, art, max_batch=4, max_wait_s=0.005, max_queue=8,
                                  metrics=metrics, max_len=256, threads=2)
    engine.start()

    async def one(i):
        tokens = []
        async for ev in engine.generate(f"a{i}", _ids(tok, PROMPTS[i]), SamplingParams(max_tokens=6, ignore_eos=True)):
            tokens += ev.token_ids
        return tokens

    async def main():
        return await asyncio.gather(*(one(i) for i in range(3)))

    try:
        outs = asyncio.run(main())
    finally:
        engine.stop(timeout=30)
    assert [len(o) for o in outs] == [6, 6, 6]
    counted = metrics.registry.get_sample_value("compress_generation_tokens_total", {"tier": "q4_0", "class": "interactive"})
    assert counted == 18
