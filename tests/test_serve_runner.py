"""The engine's model runner over the slot KV cache (CPU, fp32, no graphs): continuous batching with joins,
leaves, aborts and chunked prefill gives each request exactly the greedy tokens of Hugging Face `generate` on
that request alone; slots are reused with no stale KV; sampling, penalties, logit bias and logprobs follow
their definitions (checked against transformers' own logits processors and the model's logits)."""

from __future__ import annotations

import pytest
import torch

from compress.models import load_causal_lm, load_tokenizer
from compress.serve.engine_core import EngineCore
from compress.serve.scheduler import Batcher
from compress.serve.sequence import SamplingParams, Sequence
from compress.serve.model_runner import ModelRunner, buckets

PROMPTS = ["The quick brown fox", "In the beginning of the module there was", "def foo(x):\n    return", "Hi",
           "Python's standard library is very extensive, offering a wide range of facilities",
           "import os\nimport sys\n\n\ndef main(argv):\n    parser = argparse.ArgumentParser(description="]
MAX_TOKENS = (24, 9, 31, 17, 24, 12)


@pytest.fixture(scope="module")
def model_tok(tiny_model):
    return load_causal_lm(tiny_model, "cpu"), load_tokenizer(tiny_model)


def _engine(model, tok, max_batch=3, budget=2048, max_len=256):
    runner = ModelRunner(model, tok, "cpu", max_batch=max_batch, max_len=max_len)
    return runner, EngineCore(runner, Batcher(max_batch=max_batch, max_wait_s=0.0, max_queue=100), prefill_budget=budget)


def _hf(model, tok, prompt, n, **kw):
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n if not kw.pop("eos", False) else 0,
                         do_sample=False, **kw)
    return out[0, ids.shape[1]:].tolist()


def _run_alone(model, tok, prompt, params):
    _, core = _engine(model, tok, max_batch=1)
    s = Sequence("x", tok(prompt)["input_ids"], params, 0.0)
    core.batcher.add(s)
    while core.batcher.has_work():
        core.step()
    return s


@pytest.mark.parametrize("budget", [2048, 7])  # 7: prompts prefill in chunks, interleaved with decode steps
def test_joins_leaves_aborts_and_chunks_give_hf_generate_tokens(model_tok, budget):
    """3 slots, 6 requests arriving at different steps (so slots are reused), one aborted mid-decode."""
    model, tok = model_tok
    runner, core = _engine(model, tok, max_batch=3, budget=budget)
    seqs = [Sequence(str(i), tok(p)["input_ids"], SamplingParams(max_tokens=MAX_TOKENS[i], ignore_eos=True), 0.0)
            for i, p in enumerate(PROMPTS)]
    arrive = {0: [0, 1], 2: [2], 3: [3, 4], 9: [5]}
    abort_at, sizes, step, slots_seen = 6, [], 0, set()
    while core.batcher.has_work() or step <= max(arrive):
        for i in arrive.get(step, []):
            core.batcher.add(seqs[i])
        if step == abort_at:
            core.batcher.abort(seqs[1])
        core.step()
        slots_seen |= {s.slot for s in core.batcher.running if s.slot is not None}
        sizes.append(core.last_batch_size)
        step += 1
    assert max(sizes) == 3 and slots_seen == {0, 1, 2}  # a full batch; six requests through three slots
    assert seqs[1].finish_reason == "abort" and 0 < len(seqs[1].output_ids) < MAX_TOKENS[1]
    assert runner.cache.num_free() == 3
    for i, prompt in enumerate(PROMPTS):
        if i == 1:
            assert seqs[1].output_ids == _hf(model, tok, prompt, len(seqs[1].output_ids))
            continue
        assert seqs[i].finish_reason == "length"
        assert seqs[i].output_ids == _hf(model, tok, prompt, MAX_TOKENS[i]), f"prompt {i}"
        assert seqs[i].text == tok.decode(seqs[i].output_ids, skip_special_tokens=True)


def test_a_reused_slot_keeps_no_stale_kv(model_tok):
    """A long request fills slot 0, then a short one takes the same slot: its answer is its own."""
    model, tok = model_tok
    runner, core = _engine(model, tok, max_batch=1)
    long = Sequence("long", tok(PROMPTS[5] * 3)["input_ids"], SamplingParams(max_tokens=30, ignore_eos=True), 0.0)
    short = Sequence("short", tok(PROMPTS[3])["input_ids"], SamplingParams(max_tokens=20, ignore_eos=True), 0.0)
    for s in (long, short):
        core.batcher.add(s)
        while core.batcher.has_work():
            core.step()
    assert runner.cache.num_free() == 1 and runner.cache.rows_in_use() == 0
    assert short.output_ids == _hf(model, tok, PROMPTS[3], 20)


def test_seeded_sampling_is_reproducible_whoever_shares_the_batch(model_tok):
    model, tok = model_tok

    def sample(n_neighbours=0, **kw):
        _, core = _engine(model, tok, max_batch=4)
        s = Sequence("s", tok("Once upon a time")["input_ids"], SamplingParams(max_tokens=12, **kw), 0.0)
        core.batcher.add(s)
        for j in range(n_neighbours):
            core.batcher.add(Sequence(f"n{j}", tok(PROMPTS[j])["input_ids"],
                                      SamplingParams(max_tokens=8, temperature=0.7), 0.0))
        while core.batcher.has_work():
            core.step()
        return s.output_ids

    a = sample(temperature=1.0, seed=7)
    assert a == sample(n_neighbours=3, temperature=1.0, seed=7)
    assert a != sample(temperature=1.0, seed=8)
    assert sample(temperature=1.0, top_p=1e-6, seed=1) == sample(temperature=0.0)
    assert sample(temperature=1.0, top_k=1, seed=3) == sample(temperature=0.0)


def test_penalties_bias_and_min_tokens_match_transformers_processors(model_tok):
    model, tok = model_tok
    p = PROMPTS[0]
    s = _run_alone(model, tok, p, SamplingParams(max_tokens=20, repetition_penalty=1.5, ignore_eos=True))
    assert s.output_ids == _hf(model, tok, p, 20, repetition_penalty=1.5)
    plain = _run_alone(model, tok, p, SamplingParams(max_tokens=20, ignore_eos=True)).output_ids
    assert s.output_ids != plain  # the penalty changed the answer
    first = plain[0]
    biased = _run_alone(model, tok, p, SamplingParams(max_tokens=20, ignore_eos=True, logit_bias=((first, -100.0),)))
    assert biased.output_ids[0] != first and first not in biased.output_ids
    assert biased.output_ids == _hf(model, tok, p, 20, sequence_bias={(first,): -100.0})
    # presence/frequency (OpenAI): a token already generated loses presence + frequency * count
    freq = _run_alone(model, tok, p, SamplingParams(max_tokens=20, ignore_eos=True, frequency_penalty=2.0))
    assert freq.output_ids != plain and len(set(freq.output_ids)) > len(set(plain))
    # min_tokens: eos (id 0 here) is banned until then; with eos as a stop token it would stop at once
    stop_first = _run_alone(model, tok, p, SamplingParams(max_tokens=10, stop_token_ids=(first,)))
    assert stop_first.output_ids == [] and stop_first.finish_reason == "stop"
    held = _run_alone(model, tok, p, SamplingParams(max_tokens=10, stop_token_ids=(first,), min_tokens=3))
    assert len(held.output_ids) >= 3 and held.output_ids[0] != first


def test_logprobs_equal_the_models_log_softmax(model_tok):
    model, tok = model_tok
    p = PROMPTS[4]
    s = _run_alone(model, tok, p, SamplingParams(max_tokens=6, logprobs=3, prompt_logprobs=2, ignore_eos=True))
    ids = tok(p)["input_ids"]
    full = torch.tensor([ids + s.output_ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(full).logits[0].float(), dim=-1)
    assert len(s.output_logprobs) == 6
    for j, t in enumerate(s.output_logprobs):
        row = lp[len(ids) - 1 + j]
        assert t.token_id == s.output_ids[j] and abs(t.logprob - row[t.token_id].item()) < 1e-4
        assert [i for i, _ in t.top] == row.topk(3).indices.tolist()
        assert t.token_id == t.top[0][0]  # greedy: the chosen token is the most likely
    assert s.prompt_logprobs_out[0] is None and len(s.prompt_logprobs_out) == len(ids)
    for j in range(1, len(ids)):
        t = s.prompt_logprobs_out[j]
        assert t.token_id == ids[j] and abs(t.logprob - lp[j - 1, ids[j]].item()) < 1e-4 and len(t.top) == 2


def test_prompt_only_request_scores_the_prompt_in_chunks(model_tok):
    """max_tokens 0 (echo scoring): the prompt's logprobs, no output; chunked the same as whole."""
    model, tok = model_tok
    ids = tok(PROMPTS[5])["input_ids"]
    runs = []
    for budget in (2048, 5):
        _, core = _engine(model, tok, max_batch=2, budget=budget)
        s = Sequence("e", ids, SamplingParams(max_tokens=0, prompt_logprobs=0), 0.0)
        core.batcher.add(s)
        while core.batcher.has_work():
            core.step()
        assert s.output_ids == [] and s.finish_reason == "length"
        runs.append([t.logprob for t in s.prompt_logprobs_out[1:]])
    assert runs[0] == pytest.approx(runs[1], abs=1e-5)


def test_bad_parameters_fail_alone(model_tok):
    model, tok = model_tok
    _, core = _engine(model, tok, max_batch=4)
    good = Sequence("good", tok(PROMPTS[0])["input_ids"], SamplingParams(max_tokens=5, ignore_eos=True), 0.0)
    bad = Sequence("bad", tok(PROMPTS[1])["input_ids"], SamplingParams(max_tokens=5, temperature=0.8, seed=2**64), 0.0)
    huge = Sequence("huge", [5] * 300, SamplingParams(max_tokens=5), 0.0)  # longer than the 256-token slots
    for s in (good, bad, huge):
        core.batcher.add(s)
    while core.batcher.has_work():
        core.step()
    assert bad.finish_reason == "error" and "seed" in bad.error
    assert huge.finish_reason == "error" and "context" in huge.error
    assert good.finish_reason == "length" and len(good.output_ids) == 5


def test_buckets():
    assert buckets(32, 1) == [1, 2, 4, 8, 16, 32]
    assert buckets(24, 1) == [1, 2, 4, 8, 16, 24]
    assert buckets(2049, 128) == [128, 256, 512, 1024, 2048, 2049]


def test_two_engines_in_two_threads_keep_their_own_caches(tiny_model):
    """Several tiers in one server: each engine thread's attention reads its own slots (the step context is
    thread-local), so two engines stepping at the same time answer as each would alone."""
    import threading

    from compress.testing import build_tiny_llama

    other = build_tiny_llama(tiny_model.parent / "other", seed=1, tokenizer=load_tokenizer(tiny_model))
    models = [load_causal_lm(p, "cpu") for p in (tiny_model, other)]
    tok = load_tokenizer(tiny_model)
    results: dict[int, list[list[int]]] = {}

    def serve(i):
        _, core = _engine(models[i], tok, max_batch=2)
        seqs = [Sequence(f"{i}-{j}", tok(p)["input_ids"], SamplingParams(max_tokens=16, ignore_eos=True), 0.0)
                for j, p in enumerate(PROMPTS[:2])]
        for s in seqs:
            core.batcher.add(s)
        while core.batcher.has_work():
            core.step()
        results[i] = [s.output_ids for s in seqs]

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert results[i] == [_hf(models[i], tok, p, 16) for p in PROMPTS[:2]]
