"""Greedy decoding over a static KV cache, the one-token decode step replayed as one CUDA graph.

Why not `generate(..., cache_implementation="static")` + `torch.compile(mode="reduce-overhead")`: that only
graphs what dynamo can trace. Quantized linears are opaque Python around custom ops (gptqmodel's Marlin
wrapper checks dtypes, picks scratch buffers and resolves its op on every call), so dynamo breaks the
graph at each of them; on a 1B Llama that gave 12.5 tok/s for int4 against 296 for bf16 (benchmarks/RESULTS.md).
Capturing the eager step with `torch.cuda.CUDAGraph` needs no tracing: whatever kernels the step launches
(cuBLAS, Marlin, torchao's int8 mm, SDPA) are recorded once and replayed with one launch, so every
checkpoint is timed on the kernels its backend provides, with the same decode loop.

A step is capturable when it does no host synchronisation and no host-side branching on tensor values.
bitsandbytes LLM.int8() is not (it looks for outlier columns on the host); capture fails, and the same
loop then runs eagerly. Prompts share one length and carry no padding, so no attention mask is needed.
Resetting the cache (in place) is part of the timed prefill: a real server pays it too.
"""

from __future__ import annotations

import time

import torch


class StaticGreedy:
    """Greedy decode for one batch size: `run(prompt, gen_len)` → (time stamps, generated token ids [B, gen_len])."""

    def __init__(self, model, batch_size: int, max_len: int, device: str, graph: bool = True,
                 compile_step: bool = False) -> None:
        from transformers import StaticCache

        self.model = model
        self.device = torch.device(device)
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.max_len = max_len
        self.ids = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)  # the token fed next
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)  # its cache position
        self.want_graph = graph and self.device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        # Inductor fuses the step's small elementwise kernels (norms, rotary, residuals); the graph then
        # replays its kernels and the quantized ones between them (dynamo breaks around opaque ops, harmlessly).
        self._decode = torch.compile(self._next, dynamic=False, fullgraph=False) if compile_step else self._next

    def _next(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, cache_position=pos, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(-1)

    def _step(self) -> None:
        """One decode step, entirely on the device: the argmax becomes the next input, the position advances."""
        self.ids.copy_(self._decode(self.ids, self.pos)[:, None])
        self.pos.add_(1)

    @torch.inference_mode()
    def _prefill(self, prompt: torch.Tensor) -> None:
        n = prompt.shape[1]
        # transformers' static layers keep their write position in a device tensor (advanced in place, so a
        # graph replay advances it too); a new sequence starts by zeroing it, in place (same addresses).
        self.cache.reset()
        self.ids.copy_(self._next(prompt, torch.arange(n, device=self.device))[:, None])
        self.pos.fill_(n)

    @torch.inference_mode()
    def capture(self, prompt: torch.Tensor) -> None:
        """Record the decode step (after warm-up steps on a side stream, as CUDA graph capture requires)."""
        self._prefill(prompt)
        self._step()  # compiles, when compiling, outside the side stream
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # lazy initialisation (workspaces, dtype casts) happens here, not in the graph
                self._step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        torch.cuda.synchronize(self.device)
        self.graph = graph

    @torch.inference_mode()
    def run(self, prompt: torch.Tensor, gen_len: int, sync) -> tuple[list[float], torch.Tensor]:
        """Stamps [start, first token, end] and the gen_len generated ids. The first token comes from the prefill."""
        if prompt.shape[1] + gen_len > self.max_len:
            raise ValueError(f"prompt {prompt.shape[1]} + {gen_len} new tokens exceed the cache ({self.max_len})")
        step = self.graph.replay if self.graph is not None else self._step
        out = torch.empty(prompt.shape[0], gen_len, dtype=torch.long, device=self.device)
        sync()
        start = time.perf_counter()
        self._prefill(prompt)
        out[:, 0] = self.ids[:, 0]
        sync()
        first = time.perf_counter()
        for i in range(1, gen_len):
            step()
            out[:, i] = self.ids[:, 0]
        sync()
        return [start, first, time.perf_counter()], out
