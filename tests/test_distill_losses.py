"""Distillation losses against reference formulas written out independently (float64, plain loops)."""

from __future__ import annotations

import math

import pytest
import torch

from compress.distill.losses import distill_loss, divergence


def _softmax(row: list[float], t: float) -> list[float]:
    m = max(x / t for x in row)
    e = [math.exp(x / t - m) for x in row]
    z = sum(e)
    return [v / z for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _reference(s_row, t_row, loss, beta, t):
    p_s, p_t = _softmax(s_row, t), _softmax(t_row, t)
    if loss == "fkl":
        d = _kl(p_t, p_s)
    elif loss == "rkl":
        d = _kl(p_s, p_t)
    else:
        m = [beta * a + (1 - beta) * b for a, b in zip(p_t, p_s)]
        d = beta * _kl(p_t, m) + (1 - beta) * _kl(p_s, m)
    return d * t * t


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 11, generator=g) * 2  # [B, S, V]
    t = torch.randn(2, 3, 11, generator=g) * 2
    return s, t


@pytest.mark.parametrize("loss,beta", [("fkl", 0.5), ("rkl", 0.5), ("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_divergence_matches_reference(logits, loss, beta, temperature):
    s, t = logits
    got = divergence(s, t, loss, beta, temperature)
    assert got.shape == (2, 3)
    for b in range(2):
        for i in range(3):
            ref = _reference(s[b, i].tolist(), t[b, i].tolist(), loss, beta, temperature)
            assert got[b, i].item() == pytest.approx(ref, rel=1e-5, abs=1e-7)


def test_jsd_limits_are_the_kls(logits):
    s, t = logits
    assert torch.allclose(divergence(s, t, "jsd", 0.0), divergence(s, t, "fkl"))
    assert torch.allclose(divergence(s, t, "jsd", 1.0), divergence(s, t, "rkl"))
    # TRL's limits are a convention, not continuity: JSD(beta) -> 0 as beta -> 0, with JSD(beta) / beta
    # -> KL(teacher || student) (and symmetrically at 1). Check that first-order behaviour.
    b = 1e-4
    assert torch.allclose(divergence(s, t, "jsd", b) / b, divergence(s, t, "fkl"), rtol=1e-2)
    assert torch.allclose(divergence(s, t, "jsd", 1 - b) / b, divergence(s, t, "rkl"), rtol=1e-2)
    assert all(divergence(s, t, k, 0.5).min() >= 0 for k in ("fkl", "rkl", "jsd"))
    assert divergence(t, t, "jsd").abs().max() < 1e-6


def test_top_k_renormalises_over_teacher_support(logits):
    s, t = logits
    k = 4
    got = divergence(s, t, "fkl", top_k=k)
    for b in range(2):
        for i in range(3):
            idx = sorted(range(11), key=lambda j: -t[b, i, j].item())[:k]
            ref = _reference([s[b, i, j].item() for j in idx], [t[b, i, j].item() for j in idx], "fkl", 0.5, 1.0)
            assert got[b, i].item() == pytest.approx(ref, rel=1e-5, abs=1e-7)
    assert torch.allclose(divergence(s, t, "rkl", top_k=11), divergence(s, t, "rkl"))


def test_mix_with_cross_entropy_and_padding_mask(logits):
    s, t = logits
    labels = torch.tensor([[1, 5, -100], [0, -100, 10]])
    w = 0.3
    out = distill_loss(s, t, labels, "rkl", temperature=2.0, ce_weight=w)
    kept = [(0, 0), (0, 1), (1, 0), (1, 2)]
    ref_kd = sum(_reference(s[b, i].tolist(), t[b, i].tolist(), "rkl", 0.5, 2.0) for b, i in kept) / len(kept)
    ref_ce = sum(-math.log(_softmax(s[b, i].tolist(), 1.0)[labels[b, i]]) for b, i in kept) / len(kept)
    assert out["kd"].item() == pytest.approx(ref_kd, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ref_ce, rel=1e-5)
    assert out["loss"].item() == pytest.approx(w * ref_ce + (1 - w) * ref_kd, rel=1e-5)
    # Changing logits at a padded position changes nothing.
    s2 = s.clone()
    s2[0, 2] += 100
    assert distill_loss(s2, t, labels, "rkl", temperature=2.0, ce_weight=w)["loss"].item() == pytest.approx(out["loss"].item())


def test_gradient_flows_to_student_only(logits):
    s, t = logits
    s = s.clone().requires_grad_(True)
    out = distill_loss(s, t, torch.zeros(2, 3, dtype=torch.long), "jsd", ce_weight=0.0)
    out["loss"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
