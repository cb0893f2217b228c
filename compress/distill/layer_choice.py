"""Greedy choice of a derived student's layers: drop, one at a time, the layer whose removal raises the
teacher's next-token loss on calibration blocks the least (iterative depth pruning by measured loss).

- `select_layers_greedy`: the fast form. Removing the layer at position p of the kept list leaves the
  hidden state entering it unchanged, so each round runs the kept layers once over the blocks (batched),
  caches the state entering every layer, and scores each candidate by running only the layers after it
  from that cached state. A round costs k(k-1)/2 layer forwards instead of k(k-1) (k = layers kept), the
  blocks go through in batches, and after a removal only the layers from the removed position on are
  re-run to refresh the cache. Same losses up to kernel rounding, so the same choice.
- `select_layers_greedy_reference`: the plain form it replaced, one full forward per candidate and per
  block. Kept as the reference the tests compare the fast form with, and as the fallback for a model
  whose forward from `inputs_embeds` does not reproduce its forward from token ids (e.g. one that scales
  its embeddings inside the forward).
Both return the kept layer indices (ascending) and leave the teacher as they found it; ties go to the
earliest layer in both.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from compress.errors import CompressError

# Logits bytes per calibration batch on the fast path (fp32 [b, S, vocab]): bounds its memory.
_LOGIT_BYTES = 1 << 30


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


def _block_losses(logits: torch.Tensor, ids: torch.Tensor) -> list[float]:
    """Mean next-token loss of each block. logits [b, S, V], ids [b, S] -> b floats."""
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(),
                                            reduction="none")
    return nll.view(ids.shape[0], -1).mean(1).tolist()


class _Suffixes:
    """Runs the teacher from a cached hidden state through a chosen list of its layers (via `inputs_embeds`:
    the model then applies only those layers, its final norm and head) and records what enters each layer."""

    def __init__(self, teacher, original):
        self.teacher, self.original = teacher, original

    def run(self, h: torch.Tensor, layers: list[int], record: bool = False, head: bool = True):
        """(logits or None, [state entering each of `layers`] if record). h [b, S, H]."""
        _use_layers(self.teacher, self.original, layers)
        seen: list[torch.Tensor] = []
        hooks = [self.original[j].register_forward_pre_hook(self._recorder(seen), with_kwargs=True)
                 for j in layers] if record else []
        try:
            # logits_to_keep=1: only the last position goes through the head when the logits are not needed.
            out = self.teacher(inputs_embeds=h, use_cache=False, logits_to_keep=0 if head else 1)
        finally:
            for hk in hooks:
                hk.remove()
        return (out.logits if head else None), seen

    @staticmethod
    def _recorder(seen: list[torch.Tensor]):
        def hook(module, args, kwargs):
            seen.append(args[0] if args else kwargs["hidden_states"])
        return hook


@torch.no_grad()
def select_layers_greedy(teacher, n_student: int, blocks: torch.Tensor, progress: bool = False,
                         batch_size: int | None = None) -> list[int]:
    """Indices of `n_student` teacher layers, the same choice as `select_layers_greedy_reference` on the same
    `blocks` ([B, S] token ids, on the teacher's device), at about half its layer forwards, in batches of
    `batch_size` blocks (default: as many as keep the logits of a batch under 1 GiB)."""
    n_teacher = _check(teacher, n_student)
    if n_student == n_teacher:
        return list(range(n_teacher))
    vocab = teacher.get_output_embeddings().weight.shape[0]
    bs = batch_size or max(1, _LOGIT_BYTES // (blocks.shape[1] * vocab * 4))
    batches = [blocks[i:i + bs] for i in range(0, len(blocks), bs)]
    keep = list(range(n_teacher))
    with _borrowed(teacher) as original:
        run = _Suffixes(teacher, original)
        embeds = [teacher.get_input_embeddings()(b) for b in batches]
        if not _embeds_route_matches(teacher, original, keep, batches, embeds):
            return select_layers_greedy_reference(teacher, n_student, blocks, progress)
        entering = [run.run(e, keep, record=True, head=False)[1] for e in embeds]  # per batch: [k x [b, S, H]]
        bar = _bar(sum(range(n_student + 1, n_teacher + 1)), progress)
        while len(keep) > n_student:
            losses = {}
            for p, i in enumerate(keep):
                per_block = [x for e, b in zip(entering, batches)
                             for x in _block_losses(run.run(e[p], keep[p + 1:])[0], b)]
                losses[i] = sum(per_block) / len(per_block)
                bar.update()
            p = keep.index(min(losses, key=losses.get))
            keep.pop(p)
            # States entering the layers before p are unchanged; the layer now at p gets what entered the
            # removed one; re-run from there to refresh the rest.
            for e in entering:
                e[p:] = run.run(e[p], keep[p:], record=True, head=False)[1] if p < len(keep) > n_student else []
        bar.close()
    return keep


def _embeds_route_matches(teacher, original, keep, batches, embeds) -> bool:
    """Does the forward from the embedding output give the forward from token ids? (Not for a model that
    rescales `inputs_embeds`; such a model takes the reference path.)"""
    _use_layers(teacher, original, keep)
    ids_logits = teacher(input_ids=batches[0][:1], use_cache=False).logits
    emb_logits = teacher(inputs_embeds=embeds[0][:1], use_cache=False).logits
    return bool(torch.allclose(ids_logits, emb_logits, rtol=1e-3, atol=1e-3))
