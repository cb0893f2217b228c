"""The `mix` calibration data spec: several offline domains, deterministic, enough text for 128 × 1024 blocks."""

from __future__ import annotations

import pytest

from compress.data import load_texts, split_heldout, tokenize_stream
from compress.data_mix import DOMAIN_CHARS, PIECE_CHARS, domains


def test_mix_spans_four_domains_deterministically():
    parts = domains()
    assert set(parts) == {"docs", "code", "knowledge", "readmes"}
    assert parts["docs"] == load_texts("builtin")  # whole documents: what builtin holds out, mix holds out
    for name, docs in parts.items():
        chars = sum(map(len, docs))
        assert 150_000 <= chars <= 1.05 * DOMAIN_CHARS, (name, chars)  # no domain dominates or is a token gesture
        assert name == "docs" or max(map(len, docs)) <= PIECE_CHARS
    assert any("def " in d for d in parts["code"]) and any("Let's think step by step" in d for d in parts["knowledge"])
    mix = load_texts("mix")
    assert mix == load_texts("mix") and len(mix) == sum(map(len, parts.values()))
    train, held = split_heldout(mix)
    for name, docs in parts.items():  # the held-out split (quantize's quick quality figure) samples every domain
        assert set(docs) & set(held) and set(docs) & set(train), name


@pytest.mark.slow
def test_mix_holds_128_blocks_of_1024_smollm2_tokens(smollm2_gguf):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    train, _ = split_heldout(load_texts("mix"))
    builtin_train, _ = split_heldout(load_texts("builtin"))
    assert len(tokenize_stream(tok, builtin_train)) < 128 * 1024 <= len(tokenize_stream(tok, train))
