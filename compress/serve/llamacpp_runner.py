"""Route (b) of CPU serving: a tier's GGUF export run by llama.cpp (llama-cpp-python, an optional extra) behind
our own engine. Two pieces:

- `LlamaCppModel`: one GGUF, one llama.cpp context holding up to `max_batch` sequences (unified KV cache), and
  `decode`: one `llama_decode` call over several sequences' new tokens, returning the logits asked for.
- `LlamaCppRunner`: the engine's `Runner` protocol (`compress.serve.engine_core`) over it. Scheduling, metrics,
  the cache and the SLO stay the engine's; llama.cpp only computes logits, and sampling is our `Sampler` (on the
  CPU), so every sampling parameter the torch runner honours is honoured here too. A sequence's KV slot is its
  llama.cpp sequence id.

llama-cpp-python is imported when a model loads, so importing this module never needs it.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np
import torch

from compress.errors import CompressError
from compress.serve.sampling import Sampler, prompt_logprobs
from compress.serve.sequence import Sequence


def _llama_cpp(what: str = "serving a GGUF"):
    """The llama_cpp module, or one CompressError line saying `what` needs it and how to get it."""
    try:
        import llama_cpp
    except ImportError as e:
        raise CompressError(f"{what} needs llama-cpp-python, which is not installed: `make llamacpp` builds it "
                            "(see README, Export)") from e
    return llama_cpp


class LlamaCppModel:
    """A GGUF in a llama.cpp context of `max_batch` sequences × `max_context` tokens each."""

    def __init__(self, path: str | Path, max_batch: int = 8, max_context: int = 2048, threads: int = 2,
                 verbose: bool = False):
        L = self.L = _llama_cpp()
        # llama-cpp-python prints llama.cpp's log lines at or above this logger's level (all of them when unset)
        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)
        if not Path(path).is_file():
            raise CompressError(f"{path} is not a GGUF file")
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        if not self.model:
            raise CompressError(f"llama.cpp could not load {path}")
        self.max_context = min(max_context, L.llama_model_n_ctx_train(self.model) or max_context)
        self.max_batch, self.n_batch = max_batch, 512
        params = L.llama_context_default_params()
        params.n_ctx = self.max_context * max_batch
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max, params.kv_unified = max_batch, True
        params.n_threads = params.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, params)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise CompressError(f"llama.cpp could not make a context for {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.memory = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)

    def set_threads(self, threads: int) -> None:
        self.L.llama_set_n_threads(self.ctx, threads, threads)

    def decode(self, items: list[tuple[int, list[int], int, bool]]) -> list[np.ndarray]:
        """items: (sequence id, new tokens, position of the first, all logits?). One logits array per item:
        [len(tokens), V] when all, else [1, V] for its last token. Calls llama_decode once per n_batch tokens."""
        flat = [(sid, tok, pos + j, all_ or j == len(toks) - 1)
                for sid, toks, pos, all_ in items for j, tok in enumerate(toks)]
        rows: list[np.ndarray] = []
        for start in range(0, len(flat), self.n_batch):
            rows += self._decode_chunk(flat[start:start + self.n_batch])
        out, i = [], 0
        for _, toks, _, all_ in items:
            n = len(toks) if all_ else 1
            out.append(np.stack(rows[i:i + n]))
            i += n
        return out

    def _decode_chunk(self, flat: list[tuple[int, int, int, bool]]) -> list[np.ndarray]:
        b = self.batch
        b.n_tokens = len(flat)
        for i, (sid, tok, pos, want) in enumerate(flat):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
            b.seq_id[i][0] = sid
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")
        rows = []
        for i, (_, _, _, want) in enumerate(flat):
            if want:
                ptr = self.L.llama_get_logits_ith(self.ctx, i)
                rows.append(np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                                  shape=(self.n_vocab,)).copy())
        return rows

    def forget(self, seq_id: int) -> None:
        """Drop a sequence's keys and values."""
        self.L.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenization of `text` (no BOS added, special-token text not parsed)."""
        data = text.encode()
        buf = (self.L.llama_token * (len(data) + 8))()
        n = self.L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, False)
        if n < 0:
            raise RuntimeError(f"llama_tokenize needs {-n} tokens")
        return list(buf[:n])

    def eos_id(self) -> int | None:
        t = self.L.llama_vocab_eos(self.vocab)
        return t if t >= 0 else None

    def eos_ids(self) -> set[int]:
        return {t for t in range(self.n_vocab) if self.L.llama_vocab_is_eog(self.vocab, t)}

    def greedy(self, prompts: list[list[int]], new: int) -> tuple[list[list[int]], list[float]]:
        """Exactly `new` greedy tokens (no end-of-generation check) for each prompt, the prompts prefilled in one
        llama_decode (sequence ids 0..len-1, cleared first), then one llama_decode per step for all of them;
        time.perf_counter() after the prefill and after each step. For benchmarks."""
        from time import perf_counter as clock

        if len(prompts) > self.max_batch:
            raise CompressError(f"{len(prompts)} prompts for a context of {self.max_batch} sequences")
        for sid in range(len(prompts)):
            self.forget(sid)
        logits = self.decode([(sid, p, 0, False) for sid, p in enumerate(prompts)])
        out = [[int(np.argmax(x[-1]))] for x in logits]
        stamps = [clock()]
        for step in range(new - 1):
            logits = self.decode([(sid, [o[-1]], len(p) + step, False) for sid, (p, o) in enumerate(zip(prompts, out))])
            for o, x in zip(out, logits):
                o.append(int(np.argmax(x[-1])))
            stamps.append(clock())
        return out, stamps

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.L.llama_batch_free(self.batch)
            self.L.llama_free(self.ctx)
            self.L.llama_model_free(self.model)
            self.ctx = None


class LlamaCppRunner:
    """The engine's `Runner` over a `LlamaCppModel`: slots are llama.cpp sequence ids, sampling is `Sampler`'s."""

    def __init__(self, model: LlamaCppModel, tokenizer, eos_ids: set[int] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_context = model.max_context
        self.eos_ids: set[int] = set(eos_ids) if eos_ids is not None else model.eos_ids()
        self.sampler = Sampler(model.max_batch, model.n_vocab, torch.device("cpu"), self.eos_ids)
        self.free = list(range(model.max_batch - 1, -1, -1))  # slots not held, the lowest last (popped first)
        self.length = [0] * model.max_batch  # tokens in each slot's KV
        self.next_id = [0] * model.max_batch  # each running slot's next input token

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prefill(self, seqs: list[Sequence]) -> list[int | None]:
        """Each sequence's next prompt chunk, all in one llama_decode; first tokens for completed prompts."""
        for s in [s for s in seqs if s.slot is None]:
            self._admit(s)
        for s in seqs:  # no chunk set by the scheduler: the whole rest of the prompt
            s.prefill_to = s.prefill_to if s.prefill_to > s.num_computed else len(s.prompt_ids)
        logits = self.model.decode([(s.slot, s.prompt_ids[s.num_computed:s.prefill_to], s.num_computed,
                                     s.params.prompt_logprobs is not None) for s in seqs])
        out: list[int | None] = [None] * len(seqs)
        done = []
        for i, (s, rows) in enumerate(zip(seqs, logits)):
            if s.params.prompt_logprobs is not None:  # row j of the chunk predicts prompt token start + j + 1
                targets = s.prompt_ids[s.num_computed + 1:s.prefill_to + 1]
                s.prompt_logprobs_out += prompt_logprobs(torch.from_numpy(rows[:len(targets)]), targets,
                                                         s.params.prompt_logprobs)
            self.length[s.slot] = s.num_computed = s.prefill_to
            if s.prefill_to >= len(s.prompt_ids):
                done.append(i)
        if done:
            tokens = self._sample([logits[i][-1] for i in done], [seqs[i] for i in done])
            for i, t in zip(done, tokens):
                out[i] = t
        return out

    def decode(self, seqs: list[Sequence]) -> list[int]:
        """One token for each running sequence: one llama_decode over all of them."""
        logits = self.model.decode([(s.slot, [self.next_id[s.slot]], self.length[s.slot], False) for s in seqs])
        for s in seqs:
            self.length[s.slot] += 1
        return self._sample([x[-1] for x in logits], seqs)

    def remove(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            if s.slot is not None:
                self.model.forget(s.slot)
                self.length[s.slot] = 0
                self.free.append(s.slot)
                s.slot = None

    def warmup(self) -> None:
        """One prefill and decode before the port opens (weights paged in, buffers grown)."""
        from compress.serve.sequence import SamplingParams

        ids = self.tokenizer("A short prompt to warm the model up.")["input_ids"] or [0]
        seq = Sequence("warmup", ids, SamplingParams(max_tokens=2), 0.0)
        self.prefill([seq])
        self.decode([seq])
        self.remove([seq])

    def _admit(self, s: Sequence) -> None:
        if not self.free:
            raise RuntimeError("no free llama.cpp sequence (more running sequences than max_batch)")
        s.slot = self.free.pop()
        self.sampler.admit(s.slot, s)
        s.prompt_logprobs_out = [None] if s.params.prompt_logprobs is not None else s.prompt_logprobs_out

    def _sample(self, rows: list[np.ndarray], seqs: list[Sequence]) -> list[int]:
        slots = torch.tensor([s.slot for s in seqs])
        tokens = self.sampler.sample(torch.from_numpy(np.stack(rows)), slots, seqs).tolist()
        for s, t in zip(seqs, tokens):
            self.next_id[s.slot] = t
        return tokens


def default_threads() -> int:
    """The cores this process may use (llama.cpp's threads spin: more threads than cores stall each other)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_llamacpp_runner(gguf: str | Path, tokenizer_path: str | Path, *, max_batch: int, max_len: int = 2048,
                         threads: int | None = None):
    """(runner, tokenizer) of a tier run by llama.cpp, warmed up; `tokenizer_path`: the artifact (or source) whose
    tokenizer the tier uses (the end-of-generation ids are the GGUF's, as llama.cpp reports them)."""
    from compress.models import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_path))
    model = LlamaCppModel(gguf, max_batch=max_batch, max_context=max_len, threads=threads or default_threads())
    runner = LlamaCppRunner(model, tokenizer)
    runner.warmup()
    return runner, tokenizer


def load_llamacpp_engine(tier: str, gguf: str | Path, tokenizer_path: str | Path, *, max_batch: int,
                         max_wait_s: float, max_queue: int, metrics=None, max_len: int = 2048,
                         threads: int | None = None, prefill_budget: int = 512):
    """A tier's GGUF behind our async front end (`AsyncEngine`: queue bound, admission, metrics), warmed up and
    not started."""
    from compress.serve.engine import AsyncEngine

    runner, tokenizer = load_llamacpp_runner(gguf, tokenizer_path, max_batch=max_batch, max_len=max_len,
                                             threads=threads)
    return AsyncEngine(tier, runner, tokenizer, max_batch=max_batch, max_wait_s=max_wait_s, max_queue=max_queue,
                       metrics=metrics, prefill_budget=prefill_budget)
