"""Distillation losses on logits: pure functions, no model or training state.

Conventions (shapes in comments): logits are [..., V]; `mask` is [...] (True where a position counts).
All divergences are per position and then averaged over the counted positions.

- forward KL   KL(p_teacher || p_student): mode-covering, what Hinton et al. and torchtune's KD use.
- reverse KL   KL(p_student || p_teacher): mode-seeking, MiniLLM.
- generalized JSD with beta in [0, 1], exactly as TRL's GKD `generalized_jsd_loss` defines it:
  M = beta * p_teacher + (1 - beta) * p_student, JSD = beta * KL(p_teacher || M) + (1 - beta) * KL(p_student || M);
  beta = 0 and 1 are the limits TRL special-cases as forward and reverse KL.

Both distributions are softened by the temperature T; the divergence is multiplied by T^2 so its
gradients keep the same scale as the cross-entropy term when T changes (Hinton et al. 2015).

Top-k: with `top_k`, only the teacher's k largest logits per position are kept (so a teacher's
logits can be stored or sent at k/V of the memory); both teacher and student are then renormalised
over that k-token support and the divergence is taken there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSSES = ("fkl", "rkl", "jsd")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position from log-probabilities. [..., V] -> [...]"""
    # xlogy-style guard: where p == 0 the term is 0 even if log_q is -inf.
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    return _kl(teacher_logp, student_logp)


def reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    return _kl(student_logp, teacher_logp)


def generalized_jsd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float) -> torch.Tensor:
    if beta <= 0.0:
        return forward_kl(student_logp, teacher_logp)
    if beta >= 1.0:
        return reverse_kl(student_logp, teacher_logp)
    # log M computed in log space: log(beta * p_t + (1 - beta) * p_s), stable for tiny probabilities.
    mix = torch.logsumexp(
        torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1.0 - beta)]), dim=0
    )
    return beta * _kl(teacher_logp, mix) + (1.0 - beta) * _kl(student_logp, mix)


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, loss: str = "fkl",
               beta: float = 0.5, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """Per-position divergence between softened distributions, times T^2. [..., V] -> [...]"""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} (choose from {', '.join(LOSSES)})")
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    if top_k is not None and top_k < t.shape[-1]:
        t, idx = t.topk(top_k, dim=-1)  # [..., k]
        s = s.gather(-1, idx)  # [..., k]
    s_logp, t_logp = F.log_softmax(s, -1), F.log_softmax(t, -1)
    if loss == "fkl":
        d = forward_kl(s_logp, t_logp)
    elif loss == "rkl":
        d = reverse_kl(s_logp, t_logp)
    else:
        d = generalized_jsd(s_logp, t_logp, beta)
    return d * temperature**2


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                 loss: str = "fkl", beta: float = 0.5, temperature: float = 1.0, ce_weight: float = 0.0,
                 top_k: int | None = None, ignore_index: int = -100) -> dict[str, torch.Tensor]:
    """(1 - ce_weight) * divergence + ce_weight * cross-entropy, both averaged over positions whose
    label is not `ignore_index` (padding). Logits and labels are already aligned: position i of the
    logits predicts labels[i]. [B, S, V], [B, S, V], [B, S] -> {"loss", "kd", "ce"} (scalars)."""
    mask = labels != ignore_index  # [B, S]
    ce = F.cross_entropy(student_logits.float().flatten(0, -2), labels.flatten(), ignore_index=ignore_index)
    if teacher_logits is None or ce_weight >= 1.0:
        kd = torch.zeros((), device=student_logits.device)
    else:
        kd = masked_mean(divergence(student_logits, teacher_logits, loss, beta, temperature, top_k), mask)
    total = ce_weight * ce + (1.0 - ce_weight) * kd
    return {"loss": total, "kd": kd.detach(), "ce": ce.detach()}
