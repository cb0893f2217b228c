"""Sampling on the device: logits processing and token choice for a whole batch in a few vectorised kernels;
the host reads back only the chosen ids (and logprobs when a request asks for them).

Each sequence's parameters live in per-slot device tensors, written once when it is admitted. Per step:

    logits (fp32) -> + logit_bias -> repetition penalty (prompt + output tokens) -> presence/frequency penalties
    (output tokens) -> eos/stop ids banned below min_tokens -> [logprobs: log_softmax here] -> / temperature
    -> top-k, top-p -> Gumbel-max sample (greedy rows: argmax)

Random numbers come from a counter-based hash of (seed, token index, vocabulary id), not from a generator
object per request: the whole batch samples in one kernel chain, and a seeded request gives the same tokens
whoever it shares the batch with. An unseeded request gets a random seed at admission.
"""

from __future__ import annotations

import random

import torch

from compress.serve.sequence import Sequence, TokenLogprob

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (Chris Wellons' integer hash) on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def gumbel(seed: torch.Tensor, step: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise [b, vocab], a pure function of (seed [b], step [b], vocabulary id)."""
    s = _mix32((seed ^ (seed >> 32)) & _M32)
    s = _mix32(s ^ ((step * 0x9E3779B1) & _M32))
    ids = torch.arange(vocab, device=seed.device, dtype=torch.int64)
    x = _mix32(s[:, None] ^ ((ids * 0x85EBCA77) & _M32)[None])
    u = ((x >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # (0, 1), never 0 or 1
    return -torch.log(-torch.log(u))


class Sampler:
    """Per-slot sampling state on `device`, and the batched sampling step."""

    def __init__(self, slots: int, vocab: int, device, ban_ids: set[int]):
        self.vocab, self.device = vocab, device
        f = dict(device=device, dtype=torch.float32)
        self.temperature = torch.zeros(slots, **f)
        self.top_p = torch.ones(slots, **f)
        self.top_k = torch.zeros(slots, device=device, dtype=torch.int64)
        self.seed = torch.zeros(slots, device=device, dtype=torch.int64)
        self.step = torch.zeros(slots, device=device, dtype=torch.int64)  # tokens sampled so far
        self.presence = torch.zeros(slots, **f)
        self.frequency = torch.zeros(slots, **f)
        self.repetition = torch.ones(slots, **f)
        self.eos = sorted(ban_ids)  # banned below min_tokens, with the request's stop_token_ids
        self.counts: torch.Tensor | None = None  # [slots, vocab] output token counts (allocated on first use)
        self.seen: torch.Tensor | None = None  # [slots, vocab] prompt or output token (repetition penalty)
        self.bias: torch.Tensor | None = None  # [slots, vocab]

    def admit(self, slot: int, seq: Sequence) -> None:
        p = seq.params
        self.temperature[slot] = p.temperature
        self.top_p[slot] = p.top_p
        self.top_k[slot] = p.top_k
        self.seed[slot] = p.seed if p.seed is not None else random.getrandbits(63)
        self.step[slot] = 0
        self.presence[slot], self.frequency[slot] = p.presence_penalty, p.frequency_penalty
        self.repetition[slot] = p.repetition_penalty
        if p.penalized:
            if self.counts is None:
                n = self.temperature.shape[0]
                self.counts = torch.zeros(n, self.vocab, device=self.device, dtype=torch.int32)
                self.seen = torch.zeros(n, self.vocab, device=self.device, dtype=torch.bool)
            self.counts[slot].zero_()
            self.seen[slot].zero_()
            prompt = torch.tensor(seq.prompt_ids, device=self.device, dtype=torch.int64).clamp_(0, self.vocab - 1)
            self.seen[slot].index_fill_(0, prompt, True)
        if p.logit_bias or self.bias is not None:
            if self.bias is None:
                self.bias = torch.zeros(self.temperature.shape[0], self.vocab, device=self.device)
            self.bias[slot].zero_()
            if p.logit_bias:
                ids, vals = zip(*p.logit_bias)
                self.bias[slot, torch.tensor(ids, device=self.device)] = torch.tensor(vals, device=self.device)

    def sample(self, logits: torch.Tensor, slots: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Token ids [b] for the rows of `logits` [b, V] (rows of `slots`); logprobs go onto the sequences."""
        logits = logits.float()
        params = [s.params for s in seqs]
        if any(p.logit_bias for p in params):
            logits = logits + self.bias[slots]
        if any(p.penalized for p in params):
            logits = self._penalize(logits, slots)
        banned = [i for i, s in enumerate(seqs) if len(s.output_ids) < s.params.min_tokens]
        if banned:
            logits = logits.clone()
            for i in banned:
                ban = list(seqs[i].params.stop_token_ids) + self.eos
                logits[i, torch.tensor(ban, device=logits.device, dtype=torch.int64)] = float("-inf")
        logprobs = torch.log_softmax(logits, dim=-1) if any(p.logprobs is not None for p in params) else None
        greedy = logits.argmax(dim=-1)
        if all(p.temperature == 0 for p in params):
            tokens = greedy
        else:
            tokens = torch.where(self.temperature[slots] == 0, greedy, self._draw(logits, slots))
        if self.counts is not None and any(p.penalized for p in params):
            self.counts[slots, tokens] += 1
            self.seen[slots, tokens] = True
        self.step[slots] += 1
        if logprobs is not None:
            self._record_logprobs(logprobs, tokens, seqs)
        return tokens

    def _penalize(self, logits: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        rep = self.repetition[slots][:, None]
        seen = self.seen[slots]
        logits = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
        counts = self.counts[slots].float()
        return logits - self.presence[slots][:, None] * (counts > 0) - self.frequency[slots][:, None] * counts

    def _draw(self, logits: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        t = self.temperature[slots].clamp(min=1e-5)[:, None]
        scaled = logits / t
        top_k, top_p = self.top_k[slots], self.top_p[slots]
        if bool((top_k > 0).any()) or bool((top_p < 1).any()):
            sorted_l, order = scaled.sort(dim=-1, descending=True)
            probs = torch.softmax(sorted_l, dim=-1)
            ranks = torch.arange(scaled.shape[-1], device=scaled.device)[None]
            drop = (probs.cumsum(-1) - probs) >= top_p[:, None]  # keeps the top token always
            drop |= (top_k[:, None] > 0) & (ranks >= top_k[:, None])
            sorted_l = sorted_l.masked_fill(drop, float("-inf"))
            scaled = torch.empty_like(scaled).scatter_(-1, order, sorted_l)
        return (scaled + gumbel(self.seed[slots], self.step[slots], scaled.shape[-1])).argmax(dim=-1)

    @staticmethod
    def _record_logprobs(logprobs: torch.Tensor, tokens: torch.Tensor, seqs: list[Sequence]) -> None:
        k = max(s.params.logprobs or 0 for s in seqs)
        chosen = logprobs.gather(-1, tokens[:, None])[:, 0].tolist()
        top_v, top_i = logprobs.topk(k, dim=-1) if k else (None, None)
        top_v = top_v.tolist() if k else None
        top_i = top_i.tolist() if k else None
        for i, s in enumerate(seqs):
            if s.params.logprobs is None:
                continue
            n = s.params.logprobs
            top = list(zip(top_i[i][:n], top_v[i][:n])) if n else []
            s.output_logprobs.append(TokenLogprob(int(tokens[i]), chosen[i], top))


def prompt_logprobs(logits: torch.Tensor, targets: list[int], k: int) -> list[TokenLogprob]:
    """Logprobs of `targets` under `logits` [n, V] (row j predicts targets[j]), with the top k."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    t = torch.tensor(targets, device=lp.device, dtype=torch.int64)
    chosen = lp.gather(-1, t[:, None])[:, 0].tolist()
    if k:
        v, i = lp.topk(k, dim=-1)
        v, i = v.tolist(), i.tolist()
    return [TokenLogprob(targets[j], chosen[j], list(zip(i[j], v[j])) if k else []) for j in range(len(targets))]
