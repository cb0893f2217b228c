"""Greedy choice of a derived student's layers: drop, one at a time, the layer whose removal raises the
teacher's next-token loss on calibration blocks the least (iterative depth pruning by measured loss).

- `select_layers_greedy`: the fast form. Removing the layer at position p of the kept list leaves the
  hidden state entering it unchanged, so each round runs the kept layers once over the blocks (batched),
  caches the state entering every layer, and scores each candidate by running only the layers after it
  from that cached state. A round costs k(k-1)/2 layer forwards instead of k(k-1) (k = layers kept), and the
  blocks go through in batches. Same losses up to kernel rounding, so the same choice. The round's
  winner's own run refreshes the cache (its suffix recorded what now enters each layer after it), and each
  candidate before the removed layer resumes next round from the state its own run fed that layer (`_Memo`:
  the layers before it would see the same states again; ~30% fewer layer forwards for SmolLM2 30 -> 8, the
  losses bit for bit the same). The head's loss is fused (`_head_losses`: vocabulary chunks reduced to an fp32
  logsumexp, no [S, vocab] fp32 logits), and the layers are called directly once the model's forward has
  shown what it passes them (`_Suffixes`).
  `dtype` runs the whole choice on a copy of the teacher in that dtype (bf16 on a CPU with AMX: the same
  SmolLM2 30 -> 8 choice as fp32 at ~2.7x less CPU time; benchmarks/RESULTS.md, issue 18); `compile` runs
  the layers and the head's chunk logsumexp through torch.compile (fused elementwise ops; rounds differently).
- `Screen`: optional successive halving within each round of `select_layers_greedy` (every candidate on a
  token prefix, in bf16 say; the best few on all the tokens in fp32). Exact only when each round's winner
  survives its screen; `compress distill --layer-selection greedy-screened` (train.layer_select_screen).
- `select_layers_greedy_reference`: the plain form it replaced, one full forward per candidate and per
  block. Kept as the reference the tests compare the fast form with, and as the fallback for a model
  whose forward from `inputs_embeds` does not reproduce its forward from token ids (e.g. one that scales
  its embeddings inside the forward).
Both return the kept layer indices (ascending) and leave the teacher as they found it; ties go to the
earliest layer in both.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from compress.errors import CompressError

# Logits bytes per calibration batch on the fast path (fp32 [b, S, vocab]): bounds its memory.
_LOGIT_BYTES = 1 << 30
# Vocabulary rows per chunk of the fused head loss. SmolLM2's head on four 512-token blocks in bf16, one core
# (a noisy shared host: medians of 4): 403 ms at 4,096 rows with the compiled logsumexp, 424 at 2,048, 490-529
# with all four blocks in one call; eager, 408-690 ms at 1,024, 443-450 at 2,048-8,192; unfused, 693 ms
# (benchmarks/results/NOTES_layers20.md).
_VOCAB_CHUNK = 4096
# States kept from one round to the next (`_Memo`): SmolLM2 30 -> 8 on 2,048 tokens in bf16 keeps ~1 GB in its
# first round; a larger model keeps what fits and runs the other candidates whole.
_MEMO_BYTES = 2 << 30
# Each round scores every candidate's loss first by a lower bound (`_Bound`: the vocabulary subset of the kept
# layers' top `_BOUND_TOP` tokens per position) and computes the exact loss only for candidates whose bound is
# within `_BOUND_MARGIN` nats of the best exact loss so far (None: every candidate exactly). The margin covers
# the rounding of the two logit matmuls (the subset's and the full head's), which need not agree bit for bit.
_BOUND_TOP = 32
_BOUND_MARGIN: float | None = 0.01


def _check(teacher, n_student: int) -> int:
    n_teacher = teacher.config.num_hidden_layers
    if n_student > n_teacher:
        raise CompressError(f"--student-layers {n_student} is more than the teacher's {n_teacher} layers")
    return n_teacher


@contextmanager
def _borrowed(teacher):
    """Restore the teacher's layer list, layer count and train/eval mode on exit."""
    inner = teacher.model
    original, n_config, was_training = inner.layers, teacher.config.num_hidden_layers, teacher.training
    teacher.eval()
    try:
        yield original
    finally:
        inner.layers, teacher.config.num_hidden_layers = original, n_config
        teacher.train(was_training)


def _use_layers(teacher, original, idx: list[int]) -> None:
    teacher.model.layers = torch.nn.ModuleList([original[j] for j in idx])
    teacher.config.num_hidden_layers = len(idx)


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="choosing student layers", disable=not progress, unit="cand")


@torch.no_grad()
def select_layers_greedy_reference(teacher, n_student: int, blocks: torch.Tensor, progress: bool = False) -> list[int]:
    """Indices of `n_student` teacher layers: each round runs the whole model once per candidate removal
    and per block of `blocks` ([B, S] token ids on the teacher's device); costs sum(L..N+1) x B forwards."""
    n_teacher = _check(teacher, n_student)
    keep = list(range(n_teacher))
    bar = _bar(sum(range(n_student + 1, n_teacher + 1)), progress)
    with _borrowed(teacher) as original:
        while len(keep) > n_student:
            losses = {}
            for i in keep:
                _use_layers(teacher, original, [j for j in keep if j != i])
                losses[i] = sum(teacher(input_ids=b[None], labels=b[None], use_cache=False).loss.float().item()
                                for b in blocks) / len(blocks)
                bar.update()
            keep.remove(min(losses, key=losses.get))
    bar.close()
    return keep


def _head_losses(head, hidden: torch.Tensor, ids: torch.Tensor, lse=None) -> list[float]:
    """Mean next-token loss of each block from the final (normed) hidden states: hidden [b, S, H], ids [b, S]
    -> b floats; the last position (it predicts nothing) left out. For a linear head, the loss is fused:
    the logits of `_VOCAB_CHUNK` vocabulary rows at a time (in the head's dtype, as `head(h)` gives them) are
    reduced to an fp32 logsumexp per position and each position's target logit is taken from its chunk, so
    no [S, vocab] fp32 tensor is made (the cross-entropy of the head's logits in fp32, up to the summation
    order: ~1e-5 nats on SmolLM2; 1.7x less CPU than `cross_entropy(head(h).float())` in bf16 on a CPU).
    `lse`: the chunk's logsumexp (default `_chunk_lse`; `_Suffixes` passes a compiled one)."""
    if type(head) is not torch.nn.Linear:
        return [torch.nn.functional.cross_entropy(head(h[:-1]).float(), t[1:]).item() for h, t in zip(hidden, ids)]
    return [_fused_loss(head.weight, head.bias, h[:-1], t[1:], lse or _chunk_lse) for h, t in zip(hidden, ids)]


def _chunk_lse(z: torch.Tensor) -> torch.Tensor:
    """logsumexp of each row of a logits chunk [S, chunk] in fp32 -> [S]."""
    return torch.logsumexp(z.float(), -1)


def _fused_loss(w: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, target: torch.Tensor, chunk_lse) -> float:
    """Mean cross-entropy of logits x @ w.T (+ bias) [S, V] against target [S], one vocabulary chunk at a time."""
    lse, picked = [], torch.empty(len(target), dtype=torch.float32, device=x.device)
    for lo in range(0, w.shape[0], _VOCAB_CHUNK):
        hi = lo + _VOCAB_CHUNK
        z = torch.nn.functional.linear(x, w[lo:hi], None if bias is None else bias[lo:hi])  # [S, chunk]
        lse.append(chunk_lse(z))
        hit = ((target >= lo) & (target < hi)).nonzero().squeeze(1)
        picked[hit] = z[hit, target[hit] - lo].float()
    return (torch.logsumexp(torch.stack(lse), 0) - picked).mean().item()


class _Suffixes:
    """Runs a model's decoder from a cached hidden state through a chosen list of its layers, then its final
    norm, and records what enters each layer. The first run at a given [b, S] goes through the model's own
    forward (`inputs_embeds`, only those layers) and keeps the arguments it passes each layer besides the
    hidden states (mask, position embeddings: they depend on the shape, not on the states); later runs call
    the layers directly with them (no mask or rotary tables rebuilt, no hooks). `compile` runs each layer
    through `torch.compile` (one graph for all layers of a shape; see `_compiled`)."""

    def __init__(self, model, original, compile: bool = False):
        self.model, self.original, self.head = model, original, model.get_output_embeddings()
        self.norm = getattr(model.model, "norm", None)
        self.calls, self.lse = _compiled(original) if compile else (list(original), None)
        self.kwargs: dict[tuple, dict[int, dict]] = {}  # [b, S] -> layer -> its other arguments

    def run(self, h: torch.Tensor, layers: list[int], record: bool = False, eager: bool = False):
        """(final normed hidden states [b, S, H], [state entering each of `layers`] if record). h [b, S, H].
        `eager`: the layers themselves, not their compiled form."""
        kw = self.kwargs.setdefault(tuple(h.shape[:2]), {})
        if self.norm is None or not all(j in kw for j in layers):
            return self._model_run(h, layers, kw, record)
        calls, seen = self.original if eager else self.calls, []
        for j in layers:
            if record:
                seen.append(h)
            h = calls[j](h, **kw[j])
            h = h[0] if isinstance(h, tuple) else h
        return self.norm(h), seen

    def _model_run(self, h: torch.Tensor, layers: list[int], kw: dict, record: bool):
        _use_layers(self.model, self.original, layers)
        seen: list[torch.Tensor] = []

        def hook(j):
            def pre(module, args, kwargs):
                if len(args) <= 1:  # the hidden states and keyword arguments only: the call can be replayed
                    kw[j] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                if record:
                    seen.append(args[0] if args else kwargs["hidden_states"])
            return pre
        hooks = [self.original[j].register_forward_pre_hook(hook(j), with_kwargs=True) for j in layers]
        try:
            out = self.model.model(inputs_embeds=h, use_cache=False).last_hidden_state
        finally:
            for hk in hooks:
                hk.remove()
        return out, seen


def _compiled(layers) -> tuple[list, object]:
    """The layers through `torch.compile` (inductor), which fuses a layer's small elementwise ops (norms,
    rotary, SiLU, residual adds: in bf16 on a CPU, eager runs each as its own pass); the layers share one graph
    per input shape. Also the head loss's chunk logsumexp, compiled (the upcast and the reductions fused: no fp32
    copy of the chunk). Falls back to the eager layers, with a warning, where inductor cannot build (no C++
    compiler, say)."""
    import logging

    try:
        import torch._inductor.config  # noqa: F401  (inductor is importable: a C++ toolchain is checked at build)
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - any failure here means: run eager
        logging.getLogger(__name__).warning("layer choice: torch.compile unavailable (%s); running eager", e)
        return list(layers), None
    return [torch.compile(layer, dynamic=False) for layer in layers], torch.compile(_chunk_lse, dynamic=False)


@dataclass(frozen=True)
class Screen:
    """Successive halving within each round of `select_layers_greedy`: every candidate removal is first
    scored on the first `tokens` calibration tokens in `dtype` (cheap), the best `keep` are then scored on
    all the tokens in the teacher's own precision, and the round removes the best of those by that full
    loss. The result is the exact greedy choice whenever each round's full-token winner is among the `keep`
    survivors of its screen; nothing guarantees that in general (two candidates' losses can cross between
    the screen and the full scoring), so `screen=None` keeps the exact greedy.

    tokens: a prefix of the calibration blocks (whole blocks, or the head of the first block when fewer
    than one block; the model is causal, so a prefix's states are exact). keep: survivors per round."""

    tokens: int = 512
    keep: int = 4
    dtype: torch.dtype = torch.bfloat16

    def __post_init__(self):
        if self.tokens < 2 or self.keep < 1:
            raise CompressError(f"layer screen needs tokens >= 2 and keep >= 1 (got {self.tokens}, {self.keep})")


class _Screener:
    """Scores every candidate of a round on the screen's token prefix, in the screen's dtype (a copy of the
    teacher in that dtype when it differs), from the teacher's cached states cast to it."""

    def __init__(self, teacher, original, screen: Screen, blocks: torch.Tensor):
        self.screen = screen
        model = teacher
        if screen.dtype != _dtype_of(teacher):
            _use_layers(teacher, original, list(range(len(original))))
            model = _cast_copy(teacher, screen.dtype)
        self.run = _Suffixes(model, list(model.model.layers))
        self.rows = max(1, min(len(blocks), -(-screen.tokens // blocks.shape[1])))
        self.length = min(blocks.shape[1], screen.tokens)
        self.ids = blocks[:self.rows, :self.length]

    def scores(self, entering: list[list[torch.Tensor]], keep: list[int], bar) -> dict[int, list[float]]:
        """{position: per-block screen losses} for every candidate position of `keep`."""
        out = {}
        for p in range(len(keep)):
            h = torch.cat([e[p] for e in entering])[:self.rows, :self.length].to(self.screen.dtype)
            out[p] = _head_losses(self.run.head, self.run.run(h, keep[p + 1:])[0], self.ids)
            bar.update()
        return out


def _dtype_of(model) -> torch.dtype:
    return model.get_input_embeddings().weight.dtype


def _cast_copy(model, dtype: torch.dtype):
    """A copy of `model` (all its layers) in `dtype`, made once, without the hooks others put on `model`
    (progress counters): they stay on `model` and are not copied."""
    hook_dicts = ("_forward_pre_hooks", "_forward_hooks", "_forward_pre_hooks_with_kwargs",
                  "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
    memo = {id(getattr(m, d)): type(getattr(m, d))() for m in model.modules() for d in hook_dicts if hasattr(m, d)}
    return copy.deepcopy(model, memo).to(dtype)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


@torch.no_grad()
def select_layers_greedy(teacher, n_student: int, blocks: torch.Tensor, progress: bool = False,
                         batch_size: int | None = None, screen: Screen | None = None,
                         trace: list | None = None, dtype: torch.dtype | None = None,
                         compile: bool = False) -> list[int]:
    """Indices of `n_student` teacher layers, the same choice as `select_layers_greedy_reference` on the same
    `blocks` ([B, S] token ids, on the teacher's device), at about half its layer forwards, in batches of
    `batch_size` blocks (default: as many as keep the logits of a batch under 1 GiB). `screen` (a `Screen`)
    scores only each round's best few on all the blocks: faster, exact only when the winner survives the
    screen. `trace`, a list, gets one dict per round: the kept layers, the screen's and the full per-block
    losses by layer, the removed layer and torch's thread count. `dtype` (bf16 say) runs the whole choice,
    screen and full scoring, on a copy of the teacher in that dtype, made once (None: the teacher's own); the
    losses then differ from the teacher's by that dtype's rounding, so the choice can differ too. `compile`
    runs the layers through torch.compile (`_compiled`): fused ops round differently from eager ones, so,
    like `dtype`, the losses move by rounding."""
    n_teacher = _check(teacher, n_student)
    if n_student == n_teacher:
        return list(range(n_teacher))
    if dtype is not None and dtype != _dtype_of(teacher):
        with _borrowed(teacher) as original:
            _use_layers(teacher, original, list(range(n_teacher)))
            cast = _cast_copy(teacher, dtype)
        return select_layers_greedy(cast, n_student, blocks, progress, batch_size, screen, trace, compile=compile)
    vocab = teacher.get_output_embeddings().weight.shape[0]
    bs = batch_size or max(1, _LOGIT_BYTES // (blocks.shape[1] * vocab * 4))
    batches = [blocks[i:i + bs] for i in range(0, len(blocks), bs)]
    keep = list(range(n_teacher))
    with _borrowed(teacher) as original:
        run = _Suffixes(teacher, original, compile)
        embeds = [teacher.get_input_embeddings()(b) for b in batches]
        if not _embeds_route_matches(run, keep, batches, embeds):
            return select_layers_greedy_reference(teacher, n_student, blocks, progress)
        first = [run.run(e, keep, record=True) for e in embeds]
        entering = [seen for _, seen in first]  # per batch: [k x [b, S, H]]
        current = [out for out, _ in first]  # the kept layers' final states, per batch
        screener = _Screener(teacher, original, screen, blocks) if screen else None
        screened = lambda k: screener is not None and k > screen.keep  # noqa: E731
        bar = _bar(sum(k + (screen.keep if screened(k) else 0) for k in range(n_student + 1, n_teacher + 1)), progress)
        memo: dict = {}
        while len(keep) > n_student:
            rough = screener.scores(entering, keep, bar) if screened(len(keep)) else None
            cands = sorted(sorted(rough, key=lambda p: (_mean(rough[p]), p))[:screen.keep]) if rough else range(len(keep))
            bound = _Bound.of_model(run, current, batches) if screen is None and _BOUND_MARGIN is not None else None
            ran, finals = _Memo(), {}
            for p in cands:
                last = memo.pop(keep[p], None)  # used once: freed as it goes
                outs = [_suffix_run(run, e[p], keep[p + 1:], last, i) for i, e in enumerate(entering)]
                ran.add(keep[p], keep[p + 1:], [seen for _, seen in outs])
                finals[p] = [h for h, _ in outs]
                bar.update()
            bounds = {p: bound.losses(finals[p]) for p in finals} if bound else {}
            full = _exact_losses(run, finals, batches, bounds)
            p = min(full, key=lambda q: (_mean(full[q]), q))  # ties: the earliest layer
            if trace is not None:
                trace.append({"kept": list(keep), "removed": keep[p], "threads": torch.get_num_threads(),
                              "screen": {keep[q]: v for q, v in rough.items()} if rough else None,
                              "full": {keep[q]: v for q, v in full.items()},
                              "bound": {keep[q]: v for q, v in bounds.items()} or None})
            states = ran.runs[keep[p]][1] if keep[p] in ran.runs else \
                [_suffix_run(run, e[p], keep[p + 1:], None, i)[1] for i, e in enumerate(entering)]
            current, memo = finals[p], ran.before(keep.pop(p))
            # The winner's run recorded what enters each layer after it: the new cache from p on.
            for e, seen in zip(entering, states):
                e[p:] = seen
        bar.close()
    return keep


class _Memo:
    """The states each candidate's run saw this round: layer -> (the layers it ran, per batch the state entering
    each), up to `_MEMO_BYTES` of states in all (later candidates are not kept: they run whole next round)."""

    def __init__(self):
        self.runs: dict[int, tuple[list[int], list[list[torch.Tensor]]]] = {}
        self.bytes = 0

    def add(self, layer: int, layers: list[int], seen: list[list[torch.Tensor]]) -> None:
        size = sum(t.numel() * t.element_size() for states in seen for t in states)
        if self.bytes + size <= _MEMO_BYTES:
            self.runs[layer], self.bytes = (layers, seen), self.bytes + size

    def before(self, removed: int) -> dict:
        """The runs still valid once `removed` is gone: those of the layers before it (what enters them is
        unchanged, and so is all they saw before reaching `removed`)."""
        return {c: run for c, run in self.runs.items() if removed in run[0]}


def _suffix_run(run: _Suffixes, start: torch.Tensor, layers: list[int], memo, batch: int):
    """(final hidden states, states entering each of `layers`) of the run from `start` through `layers`. With
    `memo`, the same candidate's run of the last round (its layers, one more than `layers`, and the states it
    saw), the layers before the one removed since saw exactly these states then: resume from the state that
    entered the removed layer (the same computation, skipped)."""
    if memo is None:
        return run.run(start, layers, record=True)
    old, seen = memo[0], memo[1][batch]
    i = next((i for i, (a, b) in enumerate(zip(old, layers)) if a != b), len(layers))  # where the removed one was
    out, tail = run.run(seen[i], layers[i:], record=True)
    return out, seen[:i] + tail


def _exact_losses(run: _Suffixes, finals: dict, batches, bounds: dict) -> dict[int, list[float]]:
    """{position: per-block losses} from each candidate's final states: all of them, or with `bounds` (lower
    bounds on their losses), in order of bound, stopping at the first whose bound is above the best loss so
    far by more than `_BOUND_MARGIN`: it and all after it cannot win."""
    order = sorted(finals, key=lambda p: (_mean(bounds[p]), p)) if bounds else list(finals)
    full: dict[int, list[float]] = {}
    best = float("inf")  # the lowest exact mean loss so far
    for p in order:
        if bounds and _mean(bounds[p]) > best + _BOUND_MARGIN:
            break
        full[p] = [x for h, b in zip(finals[p], batches) for x in _head_losses(run.head, h, b, run.lse)]
        best = min(best, _mean(full[p]))
    return full


class _Bound:
    """A lower bound on a candidate's loss, at a few percent of the head's work: the logsumexp over a subset
    of the vocabulary is at most the one over all of it, so the loss on the subset (each target in it) is at
    most the loss. The subset: every target, and the `_BOUND_TOP` likeliest next tokens of each position
    under the kept layers (a candidate drops one of them, so its likely tokens are mostly these)."""

    def __init__(self, run: _Suffixes, rows: torch.Tensor, batches):
        w, b = run.head.weight, run.head.bias
        self.w, self.bias = w[rows].contiguous(), None if b is None else b[rows]
        self.index = torch.full((w.shape[0],), -1, dtype=torch.long, device=w.device)
        self.index[rows] = torch.arange(len(rows), device=w.device)
        self.batches = batches

    @classmethod
    def of_model(cls, run: _Suffixes, current: list[torch.Tensor], batches) -> _Bound | None:
        if type(run.head) is not torch.nn.Linear:
            return None
        top = [run.head(x[:-1]).topk(_BOUND_TOP, dim=-1).indices.flatten() for h in current for x in h]
        return cls(run, torch.unique(torch.cat(top + [b[:, 1:].flatten() for b in batches])), batches)

    def losses(self, final: list[torch.Tensor]) -> list[float]:
        """Per-block lower bounds from a candidate's final states (per batch, [b, S, H])."""
        # Eager logsumexp: the subset's size changes every round (a compiled one would recompile each time).
        return [_fused_loss(self.w, self.bias, x[:-1], self.index[t[1:]], _chunk_lse)
                for h, b in zip(final, self.batches) for x, t in zip(h, b)]


def _embeds_route_matches(run: _Suffixes, keep, batches, embeds) -> bool:
    """Does the decoder from the embedding output, then the head, give the forward from token ids, through
    the model's forward and through direct layer calls? (Not for a model that rescales `inputs_embeds`,
    transforms its logits or works between its layers; such a model takes the reference path.)"""
    _use_layers(run.model, run.original, keep)
    ids_logits = run.model(input_ids=batches[0][:1], use_cache=False).logits
    via_model = run.head(run.run(embeds[0][:1], keep)[0])  # the first run at this shape: the model's own forward
    direct = run.head(run.run(embeds[0][:1], keep, eager=True)[0])  # then the layers called directly
    return all(torch.allclose(ids_logits, x, rtol=1e-3, atol=1e-3) for x in (via_model, direct))
