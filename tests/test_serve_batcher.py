"""Scheduler logic with a fake runner and a fake clock (no model: a real one would make these
tests slow and their timing nondeterministic)."""

from __future__ import annotations

import pytest

from compress.serve.batcher import Batcher, EngineCore, QueueFull, SamplingParams, Sequence


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeRunner:
    """Each sequence emits a scripted list of tokens; token ids are characters (detokenize = join)."""

    eos_ids = {0}

    def __init__(self, scripts: dict[str, list[int]], max_context: int = 1000, fail_on_decode: bool = False):
        self.scripts, self.max_context, self.fail_on_decode = scripts, max_context, fail_on_decode
        self.rows: list[Sequence] = []
        self.decode_batches: list[list[str]] = []
        self.removed: list[str] = []

    def _next(self, seq):
        return self.scripts[seq.id][len(seq.output_ids)]

    def prefill(self, seqs):
        self.rows += seqs
        return [self._next(s) for s in seqs]

    def decode(self, seqs):
        assert [s.id for s in seqs] == [s.id for s in self.rows]
        if self.fail_on_decode:
            raise RuntimeError("CUDA out of memory")
        self.decode_batches.append([s.id for s in seqs])
        return [self._next(s) for s in seqs]

    def remove(self, seqs):
        ids = {s.id for s in seqs}
        self.removed += sorted(ids & {s.id for s in self.rows})
        self.rows = [s for s in self.rows if s.id not in ids]

    def detokenize(self, ids):
        return "".join(chr(i) for i in ids)


def seq(sid, max_tokens=10, stop=(), arrival=0.0):
    return Sequence(sid, [1, 2, 3], SamplingParams(max_tokens=max_tokens, stop=tuple(stop)), arrival)


def text(s):
    return [ord(c) for c in s]


def test_idle_engine_holds_first_request_until_max_wait_or_full_batch():
    clock = FakeClock()
    b = Batcher(max_batch=3, max_wait_s=0.05, max_queue=10)
    core = EngineCore(FakeRunner({"a": text("xyz"), "b": text("xyz"), "c": text("xyz")}), b, clock)
    b.add(seq("a", arrival=0.0))
    assert b.wait_time(0.0) == pytest.approx(0.05)
    assert core.step() == [] and not b.running  # not due yet: waits for company
    clock.t = 0.02
    b.add(seq("b", arrival=0.02))
    clock.t = 0.05  # the first request's wait bound is reached: both are admitted together
    assert b.wait_time(clock.t) == 0.0
    events = core.step()
    assert [e.seq.id for e in events] == ["a", "b"] and [s.id for s in b.running] == ["a", "b"]
    # a full batch is admitted without waiting
    b2 = Batcher(max_batch=2, max_wait_s=10.0, max_queue=10)
    b2.add(seq("a"))
    b2.add(seq("b"))
    assert b2.wait_time(0.0) == 0.0


def test_requests_join_a_running_batch_at_the_next_step():
    clock = FakeClock()
    runner = FakeRunner({"a": text("abcdef"), "b": text("uvw")})
    b = Batcher(max_batch=4, max_wait_s=1.0, max_queue=10)
    core = EngineCore(runner, b, clock)
    b.add(seq("a"))
    clock.t = 1.0
    core.step()  # a admitted (prefill)
    b.add(seq("b", arrival=1.0))
    assert b.wait_time(1.0) == 0.0  # no waiting for company while a batch runs
    core.step()  # a decodes, b joins with its prefill
    core.step()  # both decode together
    assert runner.decode_batches == [["a"], ["a", "b"]]
    assert core.last_batch_size == 2


def test_max_batch_and_queue_bound():
    b = Batcher(max_batch=1, max_wait_s=0.0, max_queue=2)
    runner = FakeRunner({k: text("zzzz") for k in "abcd"})
    core = EngineCore(runner, b, FakeClock())
    b.add(seq("a"))
    b.add(seq("b"))
    with pytest.raises(QueueFull):
        b.add(seq("c"))
    core.step()  # a takes the only slot; b keeps waiting; a place in the queue is free again
    assert [s.id for s in b.running] == ["a"] and b.num_waiting() == 1
    b.add(seq("c"))


def test_finish_on_eos_length_and_stop_string_with_holdback():
    runner = FakeRunner({"eos": text("hi") + [0], "len": text("abcdefgh"), "stop": text("ab##cd")})
    b = Batcher(max_batch=8, max_wait_s=0.0, max_queue=10)
    core = EngineCore(runner, b, FakeClock())
    seqs = [seq("eos"), seq("len", max_tokens=3), seq("stop", stop=["##"])]
    for s in seqs:
        b.add(s)
    deltas = {s.id: [] for s in seqs}
    while b.has_work():
        for ev in core.step():
            deltas[ev.seq.id].append(ev.delta)
    assert [(s.text, s.finish_reason) for s in seqs] == [("hi", "stop"), ("abc", "length"), ("ab", "stop")]
    assert "".join(deltas["stop"]) == "ab" and all("#" not in d for d in deltas["stop"])
    assert len(seqs[1].output_ids) == 3 and seqs[0].output_ids == text("hi")  # eos is not output
    assert sorted(runner.removed) == ["eos", "len", "stop"] and not runner.rows  # slots freed


def test_context_limit_ends_generation():
    runner = FakeRunner({"a": text("abcdefgh")}, max_context=5)  # prompt is 3 tokens
    b = Batcher(max_batch=1, max_wait_s=0.0, max_queue=1)
    core = EngineCore(runner, b, FakeClock())
    s = seq("a", max_tokens=100)
    b.add(s)
    while b.has_work():
        core.step()
    assert s.text == "ab" and s.finish_reason == "length"


def test_abort_frees_the_slot_waiting_or_running():
    runner = FakeRunner({k: text("q" * 20) for k in "abc"})
    b = Batcher(max_batch=2, max_wait_s=0.0, max_queue=10)
    core = EngineCore(runner, b, FakeClock())
    a, bb, c = seq("a"), seq("b"), seq("c")
    for s in (a, bb, c):
        b.add(s)
    core.step()  # a, b running; c waiting
    b.abort(a)
    b.abort(c)
    events = core.step()
    done = {e.seq.id: e.seq.finish_reason for e in events if e.finished}
    assert done == {"a": "abort", "c": "abort"}
    assert runner.removed == ["a"] and [s.id for s in runner.rows] == ["b"] and b.num_waiting() == 0


def test_model_failure_fails_the_batch_not_the_engine():
    runner = FakeRunner({"a": text("abc"), "b": text("abc")}, fail_on_decode=True)
    b = Batcher(max_batch=2, max_wait_s=0.0, max_queue=10)
    core = EngineCore(runner, b, FakeClock())
    b.add(seq("a"))
    core.step()
    b.add(seq("b"))
    events = core.step()
    assert {e.seq.id: (e.seq.finish_reason, e.seq.error) for e in events if e.finished} == {
        "a": ("error", "RuntimeError: CUDA out of memory"), "b": ("error", "RuntimeError: CUDA out of memory")}
    assert not b.running and not runner.rows
    runner.fail_on_decode = False
    runner.scripts["c"] = text("ok")
    b.add(seq("c", max_tokens=2))
    while b.has_work():
        core.step()
    assert runner.removed[-1] == "c"
