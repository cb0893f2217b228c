"""Continuous-batching scheduler: the waiting queue, admission into the running batch, and the
per-step bookkeeping (append a token, detokenize, stop strings, finish). No model and no torch:
the model sits behind the `Runner` protocol, so this is unit-tested with a fake runner and a fake
clock.

Admission rule. While a batch is running, waiting requests join it at the next step (up to
`max_batch`), so a request waits at most one step. When the engine is idle, the first request
waits for company until `max_batch` requests are waiting or it has waited `max_wait_s`, whichever
comes first: that bound is what `--max-wait-ms` sets. Free slots go to interactive requests before
batch ones (priority classes), first come first served within a class. The waiting queue holds at most `max_queue`
requests; past that, `add` raises QueueFull (the server answers 429). Batch requests may fill only
`max_queue - max_queue // 4` of it: the last quarter is kept for interactive requests, so a batch
flood never makes an interactive request wait for queue space.

One step = schedule (aborts out, admissions in) -> one joint decode step for the sequences already
running, then prefill the admitted sequences together (their first tokens; they join the batch) -> update (append, detokenize,
check eos/length/stop) -> finished sequences leave the batch and free their slot.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


CLASSES = ("interactive", "batch")  # traffic classes; a sequence's priority is its index (lower goes first)


class QueueFull(Exception):
    """The waiting queue is at its bound."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks: always generate max_tokens (vLLM's extension field)


@dataclass(eq=False)
class Sequence:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    priority: int = 0  # index into CLASSES: 0 = interactive, 1 = batch; lower is admitted first
    output_ids: list[int] = field(default_factory=list)
    text: str = ""  # output text that may be shown (stop strings cut off)
    emitted: int = 0  # characters of `text` already handed out
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    error: str | None = None
    aborted: bool = False
    admitted_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    slot: Any = None  # the runner's per-sequence state (sampling generator, ...)
    sink: Any = None  # the front end's per-request queue

    @property
    def cls(self) -> str:
        return CLASSES[self.priority]


@dataclass
class Event:
    """What one step produced for one sequence."""
    seq: Sequence
    delta: str  # new text to hand out
    new_tokens: int
    finished: bool


class Runner(Protocol):
    eos_ids: set[int]
    max_context: int

    def prefill(self, seqs: list[Sequence]) -> list[int]: ...  # run the prompts, join the batch (in order), first tokens
    def decode(self, seqs: list[Sequence]) -> list[int]: ...  # one joint step, one token per sequence
    def remove(self, seqs: list[Sequence]) -> None: ...  # drop from the batch (free KV rows)
    def detokenize(self, ids: list[int]) -> str: ...


class Batcher:
    """The waiting queue and running set. Thread-safe: requests arrive from the HTTP event loop while
    the engine thread schedules."""

    def __init__(self, max_batch: int = 8, max_wait_s: float = 0.01, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0 or max_wait_s < 0:
            raise ValueError("max_batch >= 1, max_queue >= 0, max_wait_s >= 0")
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self.interactive_reserve = max_queue // 4  # queue places batch requests may not take
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._lock = threading.Lock()

    def add(self, seq: Sequence) -> None:
        limit = self.max_queue - (self.interactive_reserve if seq.priority > 0 else 0)
        with self._lock:
            if len(self.waiting) >= limit:
                raise QueueFull()
            self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        seq.aborted = True  # picked up by the next schedule(); a plain flag write is atomic

    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def wait_time(self, now: float) -> float | None:
        """Seconds until a step is due: 0 = now, None = idle (sleep until a request arrives)."""
        with self._lock:
            if self.running or any(s.aborted for s in self.waiting):
                return 0.0
            if not self.waiting:
                return None
            if len(self.waiting) >= self.max_batch:
                return 0.0
            return max(0.0, self.waiting[0].arrival + self.max_wait_s - now)

    def schedule(self, now: float) -> tuple[list[Sequence], list[Sequence]]:
        """(aborted sequences to drop, sequences admitted into the batch this step)."""
        with self._lock:
            dropped = [s for s in self.waiting if s.aborted] + [s for s in self.running if s.aborted]
            self.waiting = deque(s for s in self.waiting if not s.aborted)
            self.running = [s for s in self.running if not s.aborted]
            admitted: list[Sequence] = []
            if not self.waiting:
                return dropped, admitted
            idle = not self.running
            due = (len(self.waiting) >= self.max_batch or self.waiting[0].arrival + self.max_wait_s <= now)
            if idle and not due:
                return dropped, admitted
            free = self.max_batch - len(self.running)
            if free > 0:
                # Interactive before batch, then first come first served (sorted() is stable).
                order = sorted(self.waiting, key=lambda s: s.priority)
                admitted = order[:free]
                taken = set(map(id, admitted))
                self.waiting = deque(s for s in self.waiting if id(s) not in taken)
                for seq in admitted:
                    seq.admitted_at = now
            return dropped, admitted

    def start(self, seqs: list[Sequence]) -> None:
        with self._lock:
            self.running.extend(seqs)

    def finish(self, seqs: list[Sequence]) -> None:
        with self._lock:
            gone = set(map(id, seqs))
            self.running = [s for s in self.running if id(s) not in gone]


class EngineCore:
    """One `step()` of continuous batching over a Runner."""

    def __init__(self, runner: Runner, batcher: Batcher, clock: Callable[[], float] = time.monotonic):
        self.runner, self.batcher, self.clock = runner, batcher, clock
        self.last_batch_size = 0  # sequences in the last joint decode step

    def step(self) -> list[Event]:
        now = self.clock()
        dropped, admitted = self.batcher.schedule(now)
        events: list[Event] = []
        if dropped:
            self.runner.remove([s for s in dropped if s.admitted_at is not None])
            for s in dropped:
                s.finish_reason = s.finish_reason or "abort"
                events.append(Event(s, "", 0, True))
        decoding = list(self.batcher.running)
        self.batcher.start(admitted)  # now, so that a failure below fails them too (never lost)
        self.last_batch_size = 0
        try:
            if decoding:  # first, so the runner's rows are exactly the running sequences
                self.last_batch_size = len(decoding)
                for seq, token in zip(decoding, self.runner.decode(decoding)):
                    events.append(self._update(seq, token))
            if admitted:
                for seq, token in zip(admitted, self.runner.prefill(admitted)):
                    events.append(self._update(seq, token))
        except Exception as e:  # noqa: BLE001 - a model failure fails this batch, never the server
            return events + self._fail_all(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        finished = [ev.seq for ev in events if ev.finished and ev.seq.admitted_at is not None
                    and ev.seq.finish_reason != "abort"]
        if finished:
            self.runner.remove(finished)
            self.batcher.finish(finished)
        return events

    def _fail_all(self, message: str) -> list[Event]:
        seqs = list(self.batcher.running)
        try:
            self.runner.remove(seqs)
        finally:
            self.batcher.finish(seqs)
        for s in seqs:
            s.finish_reason, s.error = "error", message
        return [Event(s, "", 0, True) for s in seqs]

    def _update(self, seq: Sequence, token: int) -> Event:
        now = self.clock()
        if seq.first_token_at is None:
            seq.first_token_at = now
        p = seq.params
        if token in self.runner.eos_ids and not p.ignore_eos:
            seq.finish_reason = "stop"
            return self._emit(seq, 0, final=True)
        seq.output_ids.append(token)
        full = self.runner.detokenize(seq.output_ids)
        cut = min((i for i in (full.find(s) for s in p.stop) if i >= 0), default=-1)
        if cut >= 0:
            seq.text, seq.finish_reason = full[:cut], "stop"
        else:
            seq.text = full
            if (len(seq.output_ids) >= p.max_tokens
                    or len(seq.prompt_ids) + len(seq.output_ids) >= self.runner.max_context):
                seq.finish_reason = "length"
        return self._emit(seq, 1, final=seq.finish_reason is not None)

    @staticmethod
    def _emit(seq: Sequence, new_tokens: int, final: bool) -> Event:
        end = len(seq.text)
        if not final:
            # Hold back what could still turn into a stop string, and a trailing partial UTF-8 char.
            hold = max((len(s) for s in seq.params.stop), default=1) - 1
            end = max(seq.emitted, end - hold)
            while end > seq.emitted and seq.text[end - 1] == "\ufffd":
                end -= 1
        delta = seq.text[seq.emitted:end]
        seq.emitted = end
        return Event(seq, delta, new_tokens, final)
