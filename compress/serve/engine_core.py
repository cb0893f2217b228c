"""The engine core: one `step()` of continuous batching over a `Runner` (the model side, e.g.
model_runner.ModelRunner), with the `Batcher` of scheduler.py deciding who runs. No torch here: it is
unit-tested with a fake runner and a fake clock.

One step = schedule (aborts out, admissions in) -> one joint decode step for the sequences already
running -> one prefill forward for the prompt chunks that fit the step's token budget (`prefill_budget`):
admitted prompts, and the rest of long prompts cut into chunks, so a long prompt cannot stall the running
batch for more than one chunk's forward; a sequence whose prompt is complete gets its first token and
decodes from the next step -> update (append, detokenize incrementally, check eos/stop ids/length/stop
strings) -> finished sequences leave the batch and free their slot. A request the runner cannot honour
(bad parameters) fails alone at admission.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol

from compress.serve import detokenize
from compress.serve.scheduler import Batcher
from compress.serve.sequence import Event, Sequence


class Runner(Protocol):
    eos_ids: set[int]
    max_context: int

    # Run each sequence's prompt from seq.num_computed to seq.prefill_to (the whole prompt when prefill_to is not
    # past num_computed); a first token for each sequence whose prompt is now complete, else None.
    def prefill(self, seqs: list[Sequence]) -> list[int | None]: ...
    def decode(self, seqs: list[Sequence]) -> list[int]: ...  # one joint step, one token per sequence
    def remove(self, seqs: list[Sequence]) -> None: ...  # drop from the batch (free KV rows)
    def detokenize(self, ids: list[int]) -> str: ...


class EngineCore:
    """One `step()` of continuous batching over a Runner."""

    def __init__(self, runner: Runner, batcher: Batcher, clock: Callable[[], float] = time.monotonic,
                 prefill_budget: int = 2048):
        self.runner, self.batcher, self.clock = runner, batcher, clock
        self.prefill_budget = prefill_budget  # prompt tokens per step, all prefilling sequences together
        self.last_batch_size = 0  # sequences in the last joint decode step
        self.last_prefill_tokens = 0  # prompt tokens prefilled in the last step

    def step(self) -> list[Event]:
        now = self.clock()
        dropped, admitted = self.batcher.schedule(now)
        events: list[Event] = []
        if dropped:
            self.runner.remove([s for s in dropped if s.admitted_at is not None])
            for s in dropped:
                s.finish_reason = s.finish_reason or "abort"
                events.append(Event(s, "", 0, True))
        admitted, refused = self._check(admitted)
        events += refused
        running = list(self.batcher.running)
        decoding = [s for s in running if s.prefilled]
        self.batcher.start(admitted)  # now, so that a failure below fails them too (never lost)
        chunks = self._chunks([s for s in running if not s.prefilled] + admitted)
        self.last_batch_size = len(decoding)
        self.last_prefill_tokens = sum(s.prefill_to - s.num_computed for s in chunks)
        try:
            if decoding:
                for seq, token in zip(decoding, self.runner.decode(decoding)):
                    events.append(self._update(seq, token))
            if chunks:
                for seq, token in zip(chunks, self.runner.prefill(chunks)):
                    if token is None:  # more of the prompt to go
                        continue
                    seq.prefilled = True
                    events.append(self._first(seq, token))
        except Exception as e:  # noqa: BLE001 - a model failure fails this batch, never the server
            return events + self._fail_all(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        finished = [ev.seq for ev in events if ev.finished and ev.seq.admitted_at is not None
                    and ev.seq.finish_reason not in ("abort", None)]
        if finished:
            self.runner.remove(finished)
            self.batcher.finish(finished)
        return events

    def _check(self, admitted: list[Sequence]) -> tuple[list[Sequence], list[Event]]:
        """Admitted sequences the runner can serve, and error events for the others (each fails alone)."""
        ok, refused = [], []
        for s in admitted:
            problems = s.params.problems()
            if not s.prompt_ids:
                problems.append("the prompt is empty")
            elif len(s.prompt_ids) >= self.runner.max_context:
                problems.append(f"the prompt ({len(s.prompt_ids)} tokens) leaves no room to generate within the "
                                f"context ({self.runner.max_context} tokens)")
            if problems:
                s.finish_reason, s.error = "error", "; ".join(problems)
                refused.append(Event(s, "", 0, True))
            else:
                ok.append(s)
        return ok, refused

    def _chunks(self, prefilling: list[Sequence]) -> list[Sequence]:
        """The sequences that prefill this step, each with `prefill_to` set within the token budget (the first
        always gets at least one chunk, so a prompt longer than the budget still advances)."""
        out, left = [], self.prefill_budget
        for s in prefilling:
            if left <= 0:
                break
            n = min(len(s.prompt_ids) - s.num_computed, left)
            s.prefill_to = s.num_computed + n
            left -= n
            out.append(s)
        return out

    def _fail_all(self, message: str) -> list[Event]:
        seqs = list(self.batcher.running)
        try:
            self.runner.remove(seqs)
        finally:
            self.batcher.finish(seqs)
        for s in seqs:
            s.finish_reason, s.error = "error", message
        return [Event(s, "", 0, True) for s in seqs]

    def _first(self, seq: Sequence, token: int) -> Event:
        """The prompt is done: the first token, or the end when only the prompt was asked for (max_tokens 0)."""
        if seq.params.max_tokens == 0:
            seq.first_token_at = self.clock()
            seq.finish_reason = "length"
            seq.output_logprobs.clear()
            return self._emit(seq, 0, final=True)
        return self._update(seq, token)

    def _update(self, seq: Sequence, token: int) -> Event:
        now = self.clock()
        if seq.first_token_at is None:
            seq.first_token_at = now
        p = seq.params
        if (token in self.runner.eos_ids and not p.ignore_eos) or token in p.stop_token_ids:
            seq.finish_reason = "stop"
            if seq.output_logprobs:  # the stop token is not part of the answer
                seq.output_logprobs.pop()
            if seq.detok is not None:
                seq.text += detokenize.flush(self.runner.detokenize, seq.output_ids, seq.detok)
            return self._emit(seq, 0, final=True)
        seq.output_ids.append(token)
        if seq.detok is None:
            seq.detok = detokenize.DetokState()
        new = detokenize.step(self.runner.detokenize, seq.output_ids, seq.detok)
        seq.text += new
        if new and p.stop:  # a stop string can only end inside the newest text (or straddle into it)
            lookback = max(len(x) for x in p.stop) + len(new)
            base = max(0, len(seq.text) - lookback)
            tail = seq.text[base:]
            cut = min((i for i in (tail.find(x) for x in p.stop) if i >= 0), default=-1)
            if cut >= 0:
                seq.text, seq.finish_reason = seq.text[:base + cut], "stop"
        if seq.finish_reason is None and (len(seq.output_ids) >= p.max_tokens
                                          or len(seq.prompt_ids) + len(seq.output_ids) >= self.runner.max_context):
            seq.finish_reason = "length"
        if seq.finish_reason == "length":
            seq.text += detokenize.flush(self.runner.detokenize, seq.output_ids, seq.detok)
        return self._emit(seq, 1, final=seq.finish_reason is not None, token=token)

    @staticmethod
    def _emit(seq: Sequence, new_tokens: int, final: bool, token: int | None = None) -> Event:
        end = len(seq.text)
        if not final:
            # Hold back what could still turn into a stop string.
            hold = max((len(s) for s in seq.params.stop), default=1) - 1
            end = max(seq.emitted, end - hold)
        delta = seq.text[seq.emitted:end]
        seq.emitted = end
        logprobs = seq.output_logprobs[-1:] if token is not None and seq.params.logprobs is not None else []
        return Event(seq, delta, new_tokens, final, [token] if token is not None else [], logprobs)
