"""The HF runner: continuous batching (requests joining and leaving between steps) gives exactly
the greedy tokens of each request run alone, and those equal Hugging Face `generate` (fp32, CPU)."""

from __future__ import annotations

import pytest

from compress.models import load_causal_lm, load_tokenizer
from compress.serve.batcher import Batcher, EngineCore, SamplingParams, Sequence
from compress.serve.runner import HFRunner, _groups

PROMPTS = ["The quick brown fox", "In the beginning of the module there was", "def foo(x):\n    return", "Hi",
           "Python's standard library is very extensive, offering a wide range of facilities"]


def _run(model, tok, prompts, max_batch, join_after=2, max_tokens=(24, 9, 31, 17, 24), max_prefill_tokens=8192):
    runner = HFRunner(model, tok, "cpu", max_prefill_tokens=max_prefill_tokens)
    core = EngineCore(runner, Batcher(max_batch=max_batch, max_wait_s=0.0, max_queue=100))
    seqs = [Sequence(str(i), tok(p)["input_ids"], SamplingParams(max_tokens=max_tokens[i]), 0.0)
            for i, p in enumerate(prompts)]
    for s in seqs[:2]:
        core.batcher.add(s)
    steps, sizes = 0, []
    while core.batcher.has_work() or steps <= join_after:
        core.step()
        sizes.append(core.last_batch_size)
        steps += 1
        if steps == join_after:  # the rest arrive while the first two are decoding
            for s in seqs[2:]:
                core.batcher.add(s)
    return [s.output_ids for s in seqs], max(sizes)


@pytest.mark.parametrize("max_prefill_tokens", [8192, 20])  # 20: the joint prefills split into groups
def test_batched_greedy_equals_alone_and_hf_generate(tiny_model, max_prefill_tokens):
    """Two prompts prefilled together at step 1, three more (of different lengths) together at step 2."""
    model, tok = load_causal_lm(tiny_model, "cpu"), load_tokenizer(tiny_model)
    batched, biggest = _run(model, tok, PROMPTS, max_batch=8, max_prefill_tokens=max_prefill_tokens)
    assert biggest >= 4  # they really decoded together, with different lengths and join times
    for i, prompt in enumerate(PROMPTS):
        alone, _ = _run(model, tok, [prompt], max_batch=1, max_tokens=((24, 9, 31, 17, 24)[i],))
        assert batched[i] == alone[0], f"prompt {i}: batched greedy differs from alone"
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        ref = model.generate(ids, max_new_tokens=len(alone[0]), do_sample=False)[0, ids.shape[1]:].tolist()
        assert alone[0] == ref


def test_warmup_leaves_the_runner_empty_and_outputs_unchanged(tiny_model):
    model, tok = load_causal_lm(tiny_model, "cpu"), load_tokenizer(tiny_model)
    runner = HFRunner(model, tok, "cpu")
    runner.warmup()
    assert runner.rows == [] and runner.cache is None and runner.mask is None
    core = EngineCore(runner, Batcher(max_batch=2, max_wait_s=0.0, max_queue=10))
    s = Sequence("a", tok(PROMPTS[0])["input_ids"], SamplingParams(max_tokens=9), 0.0)
    core.batcher.add(s)
    while core.batcher.has_work():
        core.step()
    assert s.output_ids == _run(model, tok, [PROMPTS[0]], max_batch=1, max_tokens=(9,))[0][0]


def test_seeded_sampling_is_reproducible_and_top_p_tiny_is_greedy(tiny_model):
    model, tok = load_causal_lm(tiny_model, "cpu"), load_tokenizer(tiny_model)
    ids = tok("Once upon a time")["input_ids"]

    def sample(**kw):
        core = EngineCore(HFRunner(model, tok, "cpu"), Batcher(1, 0.0, 10))
        s = Sequence("s", ids, SamplingParams(max_tokens=12, **kw), 0.0)
        core.batcher.add(s)
        while core.batcher.has_work():
            core.step()
        return s.output_ids

    assert sample(temperature=1.0, seed=7) == sample(temperature=1.0, seed=7)
    assert sample(temperature=1.0, seed=7) != sample(temperature=1.0, seed=8)
    assert sample(temperature=1.0, top_p=1e-6, seed=1) == sample(temperature=0.0)


def test_prefill_groups_keep_order_and_the_padded_budget():
    seqs = [Sequence(str(i), [1] * n, SamplingParams(max_tokens=1), 0.0) for i, n in enumerate([3, 5, 2, 30, 4, 4])]
    groups = _groups(seqs, budget=12)
    assert [[s.id for s in g] for g in groups] == [["0", "1"], ["2"], ["3"], ["4", "5"]]
    assert all(len(g) * max(len(s.prompt_ids) for s in g) <= 12 for g in groups if len(g) > 1)
