"""The KV cache in preallocated slots: one row of `max_len` positions per running sequence, for every layer.

    keys[layer], values[layer]: [slots, kv_heads, max_len + 1, head_dim]

A sequence takes a free slot when it is admitted and gives it back when it finishes or is aborted; it never
moves, and nobody else's rows are copied when it joins or leaves (the old runner re-padded and concatenated
the whole batch's cache at every join). Position `max_len` is a trash column: writes that belong to nobody
(padding in a prefill chunk, free rows inside a decode batch) land there, so they never touch a real entry.

The lowest free slot is taken first, so the running sequences stay packed at the front: a decode step for
rows [0, n) covers them all, and n is what picks the step's CUDA-graph bucket. A freed slot needs no
clearing: a new owner writes its prompt from position 0, and attention reads only positions below its length.
"""

from __future__ import annotations

import heapq

import torch


class SlotKVCache:
    def __init__(self, num_layers: int, slots: int, kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device: str | torch.device):
        self.slots, self.max_len = slots, max_len
        shape = (slots, kv_heads, max_len + 1, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self._free = list(range(slots))  # a heap: the lowest free slot first
        self.lengths = [0] * slots  # tokens held per slot (host copy; the step's device tensors are built from it)

    @property
    def trash(self) -> int:
        return self.max_len

    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise RuntimeError("no free KV slot")  # the scheduler admits at most `slots` sequences
        slot = heapq.heappop(self._free)
        self.lengths[slot] = 0
        return slot

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        heapq.heappush(self._free, slot)

    def rows_in_use(self) -> int:
        """1 + the highest slot in use (0 when empty): decode runs rows [0, rows_in_use())."""
        used = set(range(self.slots)) - set(self._free)
        return max(used) + 1 if used else 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
