"""Distillation runs on tiny models: loss goes down, KD beats CE-only, exact resume after SIGKILL,
two gloo processes, the artifact works downstream, and bad input is one line with exit 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compress import models
from compress.artifacts import read_meta
from compress.distill import distill, make_config
from compress.errors import CompressError

FAST = dict(seq_len=64, batch_size=16, eval_tokens=2048, progress=False)


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory, tokenizer):
    """A 4-layer hidden-128 Llama trained briefly with cross-entropy on the built-in text, so that it
    knows something a 2-layer student can learn from it (deterministic: fixed seeds, CPU fp32)."""
    from compress.testing import build_tiny_llama

    root = tmp_path_factory.mktemp("teacher")
    init = build_tiny_llama(root / "init", seed=0, tokenizer=tokenizer, layers=4)
    result = distill(make_config(teacher=str(init), student=str(init), output=str(root / "trained"), ce_weight=1.0,
                                 max_steps=TEACHER_STEPS, lr=3e-3, warmup_steps=10, **FAST))
    assert result.metrics["student_ppl"] < 0.5 * result.metrics["initial_student_ppl"]
    return root / "trained"


TEACHER_STEPS = 200


def _weights(path) -> dict[str, torch.Tensor]:
    return models.load_causal_lm(str(path), device="cpu", dtype=torch.float32).state_dict()
