"""Per-tier async front end, thread mode: one background engine thread runs `EngineCore.step()` in a loop;
each request gets its own asyncio queue that the thread feeds with events (vLLM v1's AsyncLLM shape).

The model runs in a plain thread, not on the event loop, so the event loop is free during a step, but both
share one interpreter and its GIL: the engine's Python work (scheduling, sampling bookkeeping, detokenizing)
and the HTTP side's (parsing, streaming chunks) take turns. engine_proc.py runs the same EngineCore in its
own process instead (`--engine-process`). `load_engine` builds either; both have the same face:
`generate()`, `start()`, `stop()`, `set_max_wait()`, `tokenizer`, `max_context`, `down`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from compress.serve.engine_core import EngineCore
from compress.serve.scheduler import Batcher, QueueFull
from compress.serve.sequence import Event, SamplingParams, Sequence
from compress.serve.metrics import ServeMetrics
from compress.serve.protocol import APIError


class AsyncEngine:
    def __init__(self, tier: str, runner, tokenizer=None, *, max_batch: int = 8, max_wait_s: float = 0.01,
                 max_queue: int = 64, metrics: ServeMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic, prefill_budget: int = 2048):
        self.tier, self.runner, self.tokenizer = tier, runner, tokenizer
        self.metrics = metrics or ServeMetrics()
        self.clock = clock
        self.core = EngineCore(runner, Batcher(max_batch, max_wait_s, max_queue), clock, prefill_budget)
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"engine-{tier}", daemon=True)
        self.steps = 0

    @property
    def max_context(self) -> int:
        return self.runner.max_context

    @property
    def down(self) -> str | None:
        """Why the engine cannot serve (None: it can)."""
        if self._thread.ident is not None and not self._thread.is_alive() and not self._stopping:
            return "the engine thread has ended"
        return None

    def set_max_wait(self, seconds: float) -> None:
        self.core.batcher.max_wait_s = seconds  # a plain attribute write: the thread reads it next step

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the work already accepted, then end the engine thread."""
        if self._thread.ident is None:  # never started
            return
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout)

    async def generate(self, rid: str, prompt_ids: list[int], params: SamplingParams,
                       priority: int = 0) -> AsyncIterator[Event]:
        """Events for one request until it finishes; leaving early (client gone) aborts it."""
        if self._stopping:
            raise stopping_error()
        seq = Sequence(rid, prompt_ids, params, arrival=self.clock(), priority=priority)
        seq.sink = (asyncio.get_running_loop(), asyncio.Queue())
        try:
            self.core.batcher.add(seq)
        except QueueFull:
            raise queue_full_error(self.tier, self.core.batcher.max_queue) from None
        self.metrics.queue_depth.labels(self.tier).set(self.core.batcher.num_waiting())
        self._wake()
        try:
            while True:
                ev = await seq.sink[1].get()
                yield ev
                if ev.finished:
                    return
        finally:
            if seq.finish_reason is None:
                self.core.batcher.abort(seq)
                self._wake()

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _loop(self) -> None:
        b = self.core.batcher
        while True:
            with self._cv:
                while True:
                    wait = b.wait_time(self.clock())
                    if wait == 0:
                        break
                    if wait is None and self._stopping:
                        return
                    self._cv.wait(wait)
            events = self.core.step()
            self.steps += 1
            self._record(events)
            for ev in events:
                loop, queue = ev.seq.sink
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, ev)
                except RuntimeError:  # the request's event loop is gone (server shutting down)
                    pass

    def _record(self, events: list[Event]) -> None:
        b = self.core.batcher
        stats = StepStats(b.num_waiting(), len(b.running), self.core.last_batch_size, self.core.last_prefill_tokens)
        record_step(self.metrics, self.tier, stats, events, self.clock())


def stopping_error() -> APIError:
    return APIError(503, "server is shutting down", type="server_error", code="shutting_down",
                    headers={"Retry-After": "5"})


def queue_full_error(tier: str, max_queue: int) -> APIError:
    return APIError(429, f"tier {tier!r} is at its queue bound ({max_queue} waiting); retry later",
                    type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})


@dataclass
class StepStats:
    """The engine's state after one step (what engine_proc.py sends across with the step's outputs)."""
    waiting: int
    running: int
    batch_size: int  # sequences in the step's joint decode
    prefill_tokens: int  # prompt tokens the step prefilled


def record_step(m: ServeMetrics, t: str, stats: StepStats, events: list[Event], now: float) -> None:
    """One step's engine gauges and histograms, and its events' per-request token metrics (TTFT, ITL)."""
    m.queue_depth.labels(t).set(stats.waiting)
    m.running.labels(t).set(stats.running)
    if stats.batch_size:
        m.batch_size.labels(t).observe(stats.batch_size)
    if stats.prefill_tokens:
        m.prefill_tokens_step.labels(t).observe(stats.prefill_tokens)
    for ev in events:
        s = ev.seq
        if not ev.new_tokens:
            continue
        m.generation_tokens.labels(t, s.cls).inc(ev.new_tokens)
        if len(s.output_ids) == 1 and s.first_token_at is not None:
            m.ttft.labels(t, s.cls).observe(s.first_token_at - s.arrival)
            if s.admitted_at is not None:
                m.queue_time.labels(t, s.cls).observe(s.admitted_at - s.arrival)
        elif s.last_token_at is not None:
            m.itl.labels(t, s.cls).observe(now - s.last_token_at)
        s.last_token_at = now


def load_runner(path: str, device: str, *, max_batch: int, max_len: int | None = None, gguf: str | None = None):
    """(runner, tokenizer) of a local tier, warmed up (CUDA graphs captured). `max_len`: the longest sequence a
    KV slot holds (default: the model's context, at most 8192 on a GPU and 2048 on a CPU, where the cache would
    otherwise take gigabytes of RAM). With `gguf` (runtime llamacpp) llama.cpp runs that file on the CPU and
    `path` gives the tokenizer."""
    from compress.models import load_causal_lm, load_tokenizer
    from compress.serve.model_runner import ModelRunner

    if gguf is not None:
        from compress.serve.llamacpp_runner import load_llamacpp_runner

        return load_llamacpp_runner(gguf, path, max_batch=max_batch, max_len=max_len or 2048)

    model = load_causal_lm(path, device=device)
    tokenizer = load_tokenizer(path)
    on_cuda = device.startswith("cuda")
    runner = ModelRunner(model, tokenizer, device, max_batch=max_batch, max_len=max_len or (8192 if on_cuda else 2048))
    runner.warmup(kv_limit=2048)  # longer length buckets are captured when first needed
    return runner, tokenizer


def default_prefill_budget(device: str) -> int:
    return 2048 if device.startswith("cuda") else 512


def load_engine(tier, device: str, *, max_batch: int, max_wait_s: float, max_queue: int,
                metrics: ServeMetrics, max_len: int | None = None, prefill_budget: int | None = None,
                process: bool = False):
    """A local tier's engine, not started: its model loaded and warmed up in this process behind an engine
    thread (`AsyncEngine`), or, with `process`, in a child process of its own (engine_proc.py). A tier with
    runtime llamacpp gets a `LlamaCppRunner` over its GGUF (on the CPU whatever `device` says): the same engine
    core, scheduler, metrics and front end as a torch tier."""
    gguf = tier.gguf if getattr(tier, "runtime", "torch") == "llamacpp" else None
    budget = prefill_budget or default_prefill_budget("cpu" if gguf else device)
    if process:
        from compress.serve.engine_proc import EngineSpec, ProcEngine

        spec = EngineSpec(tier.name, str(tier.path), device, max_batch, max_wait_s, max_queue, max_len, budget, gguf)
        return ProcEngine.launch(spec, metrics)
    runner, tokenizer = load_runner(tier.path, device, max_batch=max_batch, max_len=max_len, gguf=gguf)
    metrics.graphed.labels(tier.name).set(1 if getattr(runner, "graphed", False) else 0)
    return AsyncEngine(tier.name, runner, tokenizer, max_batch=max_batch, max_wait_s=max_wait_s,
                       max_queue=max_queue, metrics=metrics, prefill_budget=budget)
