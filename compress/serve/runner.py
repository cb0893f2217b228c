"""The model side of continuous batching: a Hugging Face causal LM with one shared, left-padded KV
cache for the running batch.

- prefill(seqs): the prompts admitted at one step run together in one forward (left-padded to the
  longest, a 2-D mask hiding the padding, explicit position ids), in groups of at most
  `max_prefill_tokens` padded tokens; their KV rows are then left-padded and concatenated onto the
  batch cache, so requests join between decode steps. One forward for k arrivals instead of k is
  what lets a small model keep up with a high arrival rate.
- decode(seqs): one joint step for the whole batch: last token per row, a 2-D attention mask that
  hides each row's left padding, and explicit position ids (each row's own length), so a row's
  positions do not depend on its neighbours.
- remove(seqs): drop rows; leading columns that only held padding are trimmed.

Greedy output in a batch (prefill or decode) equals greedy output alone up to float rounding of the batched matmuls;
in fp32 on CPU the tests check it token for token. Only full-attention decoder models are
supported (the cache layers must be plain DynamicLayers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compress.errors import CompressError
from compress.serve.batcher import SamplingParams, Sequence


class HFRunner:
    def __init__(self, model, tokenizer, device: str, max_prefill_tokens: int = 8192):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.max_prefill_tokens = max_prefill_tokens  # padded tokens per prefill forward (a longer prompt runs alone)
        config = model.config.get_text_config(decoder=True)
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True) and \
                any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
            raise CompressError("compress serve supports full-attention models only (this one uses sliding windows)")
        self.max_context = int(getattr(config, "max_position_embeddings", 2048) or 2048)
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.rows: list[Sequence] = []
        self.cache = None  # DynamicCache shared by the batch: [B, H, L, D] per layer
        self.mask: torch.Tensor | None = None  # [B, L] 1 = real token, 0 = left padding
        self.last: torch.Tensor | None = None  # [B] each row's latest token (input of the next step)

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def warmup(self, steps: int = 2) -> None:
        """Serve nothing, once, before the port opens: a padded two-prompt prefill and a few joint decode
        steps. The first calls on a GPU (kernel loading, cuBLAS handles, allocator growth) otherwise land
        on the first requests, and an SLO controller would take that slow start for an overload."""
        ids = self.tokenizer("A short prompt to warm the model up.")["input_ids"] or [0]
        seqs = [Sequence(f"warmup-{n}", ids[:n], SamplingParams(max_tokens=steps + 1), 0.0)
                for n in (len(ids), max(1, len(ids) // 2))]
        self.prefill(seqs)
        for _ in range(steps):
            self.decode(seqs)
        self.remove(seqs)

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> list[int]:
        """Run the prompts (in order, in groups within the token budget), join the batch; first tokens."""
        tokens: list[int] = []
        for group in _groups(seqs, self.max_prefill_tokens):
            tokens += self._prefill(group)
        return tokens

    def _prefill(self, seqs: list[Sequence]) -> list[int]:
        from transformers import DynamicCache

        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)  # padding id 0: masked out, never attended to
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s.prompt_ids):] = torch.tensor(s.prompt_ids)
            mask[i, width - len(s.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        kwargs = {}
        if len(seqs) > 1:  # alone: no padding, so no mask (the model's fastest causal path)
            kwargs = {"attention_mask": mask, "position_ids": (mask.cumsum(dim=1) - 1).clamp(min=0)}
        out = self.model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1, **kwargs)
        for s in seqs:
            s.slot = _make_generator(s, self.device)
        tokens = self._sample(out.logits[:, -1, :], seqs)
        self._join(seqs, out.past_key_values, mask, tokens)
        return tokens

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> list[int]:
        assert [id(s) for s in seqs] == [id(s) for s in self.rows], "decode order must match the batch rows"
        positions = self.mask.sum(dim=1, keepdim=True)  # [B, 1] real tokens so far = next position
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)  # [B, L+1]
        out = self.model(input_ids=self.last[:, None], attention_mask=self.mask, position_ids=positions,
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        tokens = self._sample(out.logits[:, -1, :], seqs)
        self.last = torch.tensor(tokens, device=self.device)
        return tokens

    def remove(self, seqs: list[Sequence]) -> None:
        gone = set(map(id, seqs))
        keep = [i for i, s in enumerate(self.rows) if id(s) not in gone]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.last = None
            return
        idx = torch.tensor(keep, device=self.device)
        self.mask, self.last = self.mask[idx], self.last[idx]
        start = int((self.mask.sum(dim=0) > 0).nonzero()[0])  # first column some row still uses
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx, :, start:]
            layer.values = layer.values[idx, :, start:]

    def _join(self, seqs: list[Sequence], cache, new_mask: torch.Tensor, tokens: list[int]) -> None:
        new_last = torch.tensor(tokens, device=self.device)
        if self.cache is None:
            self.cache, self.mask, self.last, self.rows = cache, new_mask, new_last, list(seqs)
            return
        old_len, new_len = self.mask.shape[1], new_mask.shape[1]
        width = max(old_len, new_len)
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)], dim=0)
            old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)], dim=0)
        self.mask = torch.cat([F.pad(self.mask, (width - old_len, 0)), F.pad(new_mask, (width - new_len, 0))])
        self.last = torch.cat([self.last, new_last])
        self.rows += seqs

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """logits [B, V] -> one token per row: argmax at temperature 0, else top-p sampling."""
        greedy = logits.argmax(dim=-1).tolist()
        out = []
        for i, seq in enumerate(seqs):
            p = seq.params
            if p.temperature == 0:
                out.append(greedy[i])
                continue
            probs = torch.softmax(logits[i].float() / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(0) - sorted_p < p.top_p  # always keeps the top token
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
            out.append(int(torch.multinomial(probs, 1, generator=seq.slot)))
        return out


def _make_generator(seq: Sequence, device: str) -> torch.Generator | None:
    if seq.params.temperature == 0:
        return None
    g = torch.Generator(device=device)
    if seq.params.seed is not None:
        g.manual_seed(seq.params.seed)
    else:
        g.seed()
    return g


def _groups(seqs: list[Sequence], budget: int) -> list[list[Sequence]]:
    """Consecutive groups whose padded size (rows x longest prompt) stays within `budget` tokens."""
    groups: list[list[Sequence]] = []
    width = 0  # longest prompt of the last group
    for s in seqs:
        n = len(s.prompt_ids)
        if groups and (len(groups[-1]) + 1) * max(width, n) <= budget:
            groups[-1].append(s)
            width = max(width, n)
        else:
            groups.append([s])
            width = n
    return groups


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t, (0, 0, width - t.shape[-2], 0))  # [B, H, L, D] -> [B, H, width, D]
