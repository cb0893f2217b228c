"""Process mode (`compress serve --engine-process`): a tier's EngineCore in a process of its own, as vLLM v1
runs its EngineCore (EngineCoreProc, with an async client in the API process).

Why: in thread mode (engine.py) the engine thread and the HTTP event loop share one interpreter and take
turns at its GIL; under load streamed chunks arrive in bursts and /health waits (benchmarks/RESULTS.md, "The
serving engine at the GPU's pace"). Here the API process only parses, routes and streams; the child process
owns the model, the runner and the Batcher, and CUDA is first touched there (spawned, never forked).

- `EngineSpec`: what the child needs to build its engine (picklable: the tier's path, not its model).
- `engine_main(requests, outputs, spec)`: the child. Loads the model, says "ready", then loops: read every
  waiting request message, run one `EngineCore.step()` when one is due, send that step's outputs, for all its
  sequences, as one message (never one message per token).
- `ProcEngine`: the API side, with engine.py's AsyncEngine's face (`generate`, `start`, `stop`,
  `set_max_wait`, `tokenizer`, `max_context`, `down`).

Transport: two one-way `multiprocessing` pipes (spawn context) carrying pickled tuples:
    API -> engine: ("add", rid, prompt_ids, params, priority, arrival) | ("abort", rid) | ("wait", s) | ("stop",)
    engine -> API: ("ready", info) | ("failed", why) | ("fatal", traceback) | ("out", stats, outputs)
    an output: (rid, delta, token_ids, new_tokens, finish, error, logprobs, first_token_at, admitted_at,
                prompt_logprobs)
The API side reads and writes on its event loop (`add_reader` on one pipe; non-blocking writes on the other,
`add_writer` when it is full, `PipeWriter`): no IPC thread of its own (no GIL handoffs for the pipes), and a busy
engine never blocks the loop. Pickle over a pipe is stdlib and
needs no broker; a step's outputs are small tuples of ints and short strings, one message per step, so
pyzmq + msgpack (vLLM's choice) would add two packages for no measured need. Times are `time.monotonic()`,
one clock for both processes (CLOCK_MONOTONIC is system-wide on Linux).

Detokenization stays in the engine process: EngineCore detokenizes incrementally and cuts stop strings on the
text (holding back what could still become one), so process mode runs exactly the code thread mode runs (same
text, same stops), and that per-token Python work stays out of the API process, the one the GIL starved.
Per-step engine stats (queue depth, running, batch size, prefill tokens) travel with each step's outputs and
the API side records them, and the per-request token metrics, in its own Prometheus registry (/metrics).

Failures: a request the engine cannot honour fails alone (EngineCore). A full queue comes back as a refusal
(429, as in thread mode). If the engine process dies, every in-flight request ends with finish_reason "error"
(a 500, or a final error event in a stream), the cause (signal, exit code or the child's traceback) is logged,
later requests get a 503 `engine_down` (so dispatch falls back to the next tier), and /health says the tier is
down. The child follows its parent: it exits when the request pipe closes (the API process is gone), ignores
SIGINT (the API process drains first) and takes SIGTERM as "finish the accepted work, then exit".
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import pickle
import signal
import struct
import sys
import time
import traceback
from dataclasses import dataclass
from typing import AsyncIterator

from compress.errors import CompressError
from compress.serve.engine_core import EngineCore
from compress.serve.scheduler import Batcher, QueueFull
from compress.serve.sequence import Event, SamplingParams, Sequence
from compress.serve.engine import StepStats, queue_full_error, record_step, stopping_error
from compress.serve.metrics import ServeMetrics
from compress.serve.protocol import APIError

log = logging.getLogger("compress.serve")
IDLE_POLL_S = 0.5  # an idle child wakes this often to notice SIGTERM
MAX_MSGS_PER_WAKE = 64  # the API side yields the event loop after this many engine messages
REFUSED = ("queue_full", "shutting_down")  # finish values of an `add` the engine did not take


@dataclass(frozen=True)
class EngineSpec:
    tier: str
    path: str
    device: str
    max_batch: int
    max_wait_s: float
    max_queue: int
    max_len: int | None
    prefill_budget: int
    gguf: str | None = None  # runtime llamacpp: the GGUF llama.cpp runs (path gives the tokenizer)


# ---------------------------------------------------------------- the engine process

def engine_main(requests, outputs, spec: EngineSpec) -> None:
    """The child's entry point (spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from compress.serve.engine import load_runner

        runner, _ = load_runner(spec.path, spec.device, max_batch=spec.max_batch, max_len=spec.max_len,
                                gguf=spec.gguf)
    except BaseException as e:  # noqa: BLE001 - reported to the API process, which fails its startup
        first = str(e).splitlines()[0] if str(e) else ""
        _send(outputs, ("failed", f"{type(e).__name__}: {first}"))
        return
    core = EngineCore(runner, Batcher(spec.max_batch, spec.max_wait_s, spec.max_queue),
                      prefill_budget=spec.prefill_budget)
    loop = _EngineLoop(core, requests, outputs)
    signal.signal(signal.SIGTERM, lambda *_: setattr(loop, "stopping", True))
    _send(outputs, ("ready", {"max_context": runner.max_context, "graphed": bool(getattr(runner, "graphed", False)),
                              "pid": os.getpid()}))
    try:
        loop.run()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the API process is gone: nobody to serve
    except BaseException:
        _send(outputs, ("fatal", traceback.format_exc()))
        raise


def _pack(msg) -> bytes:
    return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)


def _send(conn, msg) -> None:
    """Best effort (startup and shutdown messages): a closed pipe means the other side is gone already."""
    try:
        conn.send_bytes(_pack(msg))
    except OSError:
        pass


class _EngineLoop:
    """The child's loop over one EngineCore: requests in, one step when due, the step's outputs out."""

    def __init__(self, core: EngineCore, requests, outputs):
        self.core, self.requests, self.outputs = core, requests, outputs
        self.seqs: dict[int, Sequence] = {}
        self.prompt_logprobs_sent: set[int] = set()
        self.stopping = False

    def run(self) -> None:
        b = self.core.batcher
        while True:
            wait = b.wait_time(time.monotonic())
            if wait is None and self.stopping:
                return
            if self.requests.poll(IDLE_POLL_S if wait is None else min(wait, IDLE_POLL_S)):
                self._read()
            if b.wait_time(time.monotonic()) == 0:
                self._step()

    def _read(self) -> None:
        refused = []
        while self.requests.poll(0):
            msg = pickle.loads(self.requests.recv_bytes())
            kind = msg[0]
            if kind == "add":
                refusal = self._add(*msg[1:])
                if refusal:
                    refused.append((msg[1], "", [], 0, refusal, None, None, None, None, None))
            elif kind == "abort":
                seq = self.seqs.get(msg[1])
                if seq is not None:
                    self.core.batcher.abort(seq)
            elif kind == "wait":
                self.core.batcher.max_wait_s = msg[1]
            elif kind == "stop":
                self.stopping = True
        if refused:
            self.outputs.send_bytes(_pack(("out", None, refused)))

    def _add(self, rid: int, prompt_ids: list[int], params: SamplingParams, priority: int,
             arrival: float) -> str | None:
        if self.stopping:
            return "shutting_down"
        seq = Sequence(str(rid), prompt_ids, params, arrival=arrival, priority=priority)
        try:
            self.core.batcher.add(seq)
        except QueueFull:
            return "queue_full"
        self.seqs[rid] = seq
        return None

    def _step(self) -> None:
        events = self.core.step()
        b, core = self.core.batcher, self.core
        stats = (b.num_waiting(), len(b.running), core.last_batch_size, core.last_prefill_tokens)
        outs = [self._output(ev) for ev in events]
        self.outputs.send_bytes(_pack(("out", stats, outs)))

    def _output(self, ev: Event) -> tuple:
        s = ev.seq
        rid = int(s.id)
        plp = None
        if s.prompt_logprobs_out is not None and rid not in self.prompt_logprobs_sent:
            plp = s.prompt_logprobs_out
            self.prompt_logprobs_sent.add(rid)
        if ev.finished:
            self.seqs.pop(rid, None)
            self.prompt_logprobs_sent.discard(rid)
        return (rid, ev.delta, ev.token_ids, ev.new_tokens, s.finish_reason if ev.finished else None, s.error,
                ev.logprobs or None, s.first_token_at, s.admitted_at, plp)


# ---------------------------------------------------------------- the API side

def _exit_cause(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ProcEngine:
    """A tier's engine in a child process, driven from the API process's event loop."""

    def __init__(self, spec: EngineSpec, process, requests, outputs, tokenizer, info: dict, metrics: ServeMetrics):
        self.spec, self.tier, self.tokenizer, self.metrics = spec, spec.tier, tokenizer, metrics
        self.process, self._requests, self._outputs = process, requests, outputs
        self.max_context: int = info["max_context"]
        self.pid: int = info["pid"]
        self._seqs: dict[int, Sequence] = {}
        self._next_rid = 0
        self._max_wait = spec.max_wait_s
        self._stopping = False
        self._down: str | None = None
        self._fatal: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: PipeWriter | None = None

    @classmethod
    def launch(cls, spec: EngineSpec, metrics: ServeMetrics) -> "ProcEngine":
        """Spawn the engine process and wait until its model is loaded (a failure there raises CompressError)."""
        from compress.models import load_tokenizer

        ctx = mp.get_context("spawn")
        req_r, req_w = ctx.Pipe(duplex=False)
        out_r, out_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=engine_main, args=(req_r, out_w, spec), name=f"compress-engine-{spec.tier}",
                           daemon=True)
        proc.start()
        req_r.close()  # the child holds these ends now; ours must close, or EOF never comes
        out_w.close()
        try:
            tokenizer = load_tokenizer(spec.path)  # while the child loads the model
            info = _wait_ready(spec.tier, out_r, proc)
        except BaseException:
            proc.kill()
            proc.join()
            raise
        metrics.graphed.labels(spec.tier).set(1 if info["graphed"] else 0)
        torch = sys.modules.get("torch")
        log.info("tier %s: engine process pid %d ready (CUDA initialised in the API process: %s)", spec.tier,
                 info["pid"], bool(torch is not None and torch.cuda.is_initialized()))
        return cls(spec, proc, req_w, out_r, tokenizer, info, metrics)

    @property
    def down(self) -> str | None:
        """Why the engine cannot serve (None: it can)."""
        return self._down

    def set_max_wait(self, seconds: float) -> None:
        if seconds != self._max_wait:
            self._max_wait = seconds
            self._send(("wait", seconds))

    def start(self) -> None:
        """Start listening to the engine (on the running event loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._outputs.fileno(), self._on_readable)
        self._writer = PipeWriter(self._requests, self._loop)

    def stop(self, timeout: float | None = None) -> None:
        """Let the engine finish the work it accepted, then end it (killed if it has not ended by `timeout`)."""
        self._stopping = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._send, ("stop",))
        else:  # never started (another tier failed to load)
            _send(self._requests, ("stop",))
        self.process.join(timeout)
        if self.process.is_alive():
            log.warning("tier %s: the engine process did not stop within %s s; killing it", self.tier, timeout)
            self.process.kill()
            self.process.join(10)

    async def generate(self, rid: str, prompt_ids: list[int], params: SamplingParams,
                       priority: int = 0) -> AsyncIterator[Event]:
        """Events for one request until it finishes; leaving early (client gone) aborts it in the engine."""
        if self._down is not None:
            raise APIError(503, f"tier {self.tier!r} cannot serve: its engine process is down ({self._down})",
                           type="server_error", code="engine_down", headers={"Retry-After": "5"})
        if self._stopping:
            raise stopping_error()
        n = self._next_rid
        self._next_rid += 1
        seq = Sequence(rid, prompt_ids, params, arrival=time.monotonic(), priority=priority)
        seq.sink = asyncio.Queue()
        self._seqs[n] = seq
        self._send(("add", n, prompt_ids, params, priority, seq.arrival))
        try:
            while True:
                ev = await seq.sink.get()
                if isinstance(ev, APIError):
                    raise ev
                yield ev
                if ev.finished:
                    return
        finally:
            if self._seqs.pop(n, None) is not None:
                self._send(("abort", n))

    # -- IPC

    def _send(self, msg) -> None:
        self._writer.send(msg)

    def _on_readable(self) -> None:
        try:
            for _ in range(MAX_MSGS_PER_WAKE):
                if not self._outputs.poll():
                    return
                msg = pickle.loads(self._outputs.recv_bytes())
                if msg[0] == "out":
                    self._deliver(msg[1], msg[2])
                elif msg[0] == "fatal":
                    self._fatal = msg[1].strip().splitlines()[-1]
                    log.error("tier %s: the engine process failed:\n%s", self.tier, msg[1])
        except (EOFError, OSError):
            self._ended()

    def _deliver(self, stats: tuple | None, outputs: list[tuple]) -> None:
        events = []
        for rid, delta, token_ids, new_tokens, finish, error, logprobs, first_at, admitted_at, plp in outputs:
            seq = self._seqs.get(rid)
            if seq is None:  # aborted here already
                continue
            if finish in REFUSED:
                del self._seqs[rid]
                seq.finish_reason = "error"
                seq.sink.put_nowait(queue_full_error(self.tier, self.spec.max_queue) if finish == "queue_full"
                                    else stopping_error())
                continue
            seq.output_ids.extend(token_ids)
            seq.first_token_at, seq.admitted_at = first_at, admitted_at
            if plp is not None:
                seq.prompt_logprobs_out = plp
            if finish is not None:
                seq.finish_reason, seq.error = finish, error
                del self._seqs[rid]
            ev = Event(seq, delta, new_tokens, finish is not None, token_ids, logprobs or [])
            events.append(ev)
            seq.sink.put_nowait(ev)
        if stats is not None:
            record_step(self.metrics, self.tier, StepStats(*stats), events, time.monotonic())

    def _ended(self) -> None:
        """The engine's pipe closed: it stopped (asked to) or died. In-flight requests fail; new ones get 503."""
        if self._loop is not None:
            self._loop.remove_reader(self._outputs.fileno())
        if self._stopping:  # stop() joins the process (two joiners could each miss its exit status)
            self._down, why = "stopped", "the engine stopped"
        else:
            self.process.join(5)
            self._down = self._fatal or _exit_cause(self.process.exitcode)
            why = f"the engine process of tier {self.tier!r} died ({self._down})"
            log.error("tier %s: the engine process (pid %d) died: %s; %d in-flight requests fail", self.tier,
                      self.pid, self._down, len(self._seqs))
        for seq in self._seqs.values():
            seq.finish_reason, seq.error = "error", why
            seq.sink.put_nowait(Event(seq, "", 0, True))
        self._seqs.clear()
        self.metrics.running.labels(self.tier).set(0)
        self.metrics.queue_depth.labels(self.tier).set(0)


class PipeWriter:
    """Pickled messages into a `multiprocessing` pipe from an event loop, never blocking it: framed as
    `Connection.recv_bytes` reads them (4-byte big-endian length, then the bytes), written at once when the pipe
    has room, else kept and written from the loop (`add_writer`) as it drains. Loop thread only."""

    def __init__(self, conn, loop: asyncio.AbstractEventLoop):
        self.fd, self.loop = conn.fileno(), loop
        os.set_blocking(self.fd, False)  # this end only (the reader's end is its own file description)
        self.unsent = bytearray()  # framed messages the pipe has not taken yet
        self.waiting = False  # flush() is registered to run when the pipe has room

    def send(self, msg) -> None:
        data = _pack(msg)
        idle = not self.unsent
        self.unsent += struct.pack("!i", len(data)) + data
        if idle:
            self.flush()

    def flush(self) -> None:
        try:
            while self.unsent:
                del self.unsent[:os.write(self.fd, self.unsent)]
        except BlockingIOError:
            if not self.waiting:
                self.waiting = True
                self.loop.add_writer(self.fd, self.flush)
            return
        except OSError:
            self.unsent.clear()  # the reader is gone (the engine died): ProcEngine's reader reports it
        if self.waiting:
            self.waiting = False
            self.loop.remove_writer(self.fd)


def _wait_ready(tier: str, conn, proc) -> dict:
    while not conn.poll(0.5):
        if not proc.is_alive():
            raise CompressError(f"tier {tier}: the engine process ended while loading ({_exit_cause(proc.exitcode)})")
    try:
        kind, payload = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        proc.join(5)
        raise CompressError(f"tier {tier}: the engine process ended while loading "
                            f"({_exit_cause(proc.exitcode)})") from None
    if kind == "failed":
        raise CompressError(f"tier {tier}: the engine process could not load the model: {payload}")
    return payload
