"""The continuous-batching scheduler (`Batcher`): the waiting queue, admission into the running batch,
priority classes and the queue bound. No model and no torch.

Admission rule. While a batch is running, waiting requests join it at the next step (up to
`max_batch`), so a request waits at most one step. When the engine is idle, the first request
waits for company until `max_batch` requests are waiting or it has waited `max_wait_s`, whichever
comes first: that bound is what `--max-wait-ms` sets. Free slots go to interactive requests before
batch ones (priority classes), first come first served within a class. The waiting queue holds at most `max_queue`
requests; past that, `add` raises QueueFull (the server answers 429). Batch requests may fill only
`max_queue - max_queue // 4` of it: the last quarter is kept for interactive requests, so a batch
flood never makes an interactive request wait for queue space.
"""

from __future__ import annotations

import threading
from collections import deque

from compress.serve.sequence import Sequence


class QueueFull(Exception):
    """The waiting queue is at its bound."""


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
