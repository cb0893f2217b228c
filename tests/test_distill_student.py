"""Student construction: layer choice, weight copying, narrowing, and the size/tokenizer guards."""

from __future__ import annotations

import json

import pytest
import torch

from compress import models
from compress.distill.student import (check_not_larger, count_params, derive_student, kept_layers,
                                      load_student)
from compress.errors import CompressError


def test_kept_layers_are_evenly_spaced_with_ends():
    assert kept_layers(30, 15) == [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29]
    assert kept_layers(4, 2) == [0, 3]
    assert kept_layers(5, 3) == [0, 2, 4]
    assert kept_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(CompressError, match="more than the teacher"):
        kept_layers(4, 5)


@pytest.fixture(scope="module")
def teacher4(tmp_path_factory, tokenizer):
    from compress.testing import build_tiny_llama

    path = build_tiny_llama(tmp_path_factory.mktemp("t4") / "m", seed=1, tokenizer=tokenizer, layers=4)
    return path, models.load_causal_lm(str(path), device="cpu", dtype=torch.float32)


def test_derived_student_copies_kept_layers(teacher4):
    _, teacher = teacher4
    student = derive_student(teacher, 2, None)
    assert student.config.num_hidden_layers == 2
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for new, old in enumerate([0, 3]):
        for name in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
            assert torch.equal(s_sd[f"model.layers.{new}.{name}"], t_sd[f"model.layers.{old}.{name}"])
    assert torch.equal(s_sd["model.embed_tokens.weight"], t_sd["model.embed_tokens.weight"])
    assert torch.equal(s_sd["lm_head.weight"], t_sd["lm_head.weight"])
    assert count_params(student) < count_params(teacher)
    # Keeping every layer reproduces the teacher exactly.
    full = derive_student(teacher, None, None).eval()
    x = torch.randint(0, 500, (1, 16))
    with torch.no_grad():
        assert torch.allclose(full(x).logits, teacher(x).logits, atol=1e-6)
        student.eval()(x)  # the kept layers re-index their KV-cache slots (layer_idx) consistently
        out = student.generate(x, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 19)


def test_narrower_mlp_keeps_largest_channels(teacher4):
    _, teacher = teacher4
    student = derive_student(teacher, 2, 64)
    assert student.config.intermediate_size == 64
    w = student.state_dict()["model.layers.0.mlp.down_proj.weight"]
    assert w.shape == (128, 64)
    t_down = teacher.state_dict()["model.layers.0.mlp.down_proj.weight"]
    # Every kept column is a teacher column (selection, not re-initialisation).
    for j in range(64):
        assert (t_down - w[:, j:j + 1]).abs().sum(0).min() == 0
    with pytest.raises(CompressError, match="larger than the teacher"):
        derive_student(teacher, 2, 1024)


def test_student_guards(tmp_path, teacher4, tokenizer):
    from compress.testing import build_tiny_llama, train_tokenizer

    path, teacher = teacher4
    big = build_tiny_llama(tmp_path / "big", seed=2, tokenizer=tokenizer, layers=2, hidden=256)
    with pytest.raises(CompressError, match="larger than the teacher"):
        check_not_larger(load_student(str(big), teacher, tokenizer, 0), teacher)
    deep = build_tiny_llama(tmp_path / "deep", seed=2, tokenizer=tokenizer, layers=6, hidden=64, intermediate=64)
    with pytest.raises(CompressError, match="more layers"):
        check_not_larger(load_student(str(deep), teacher, tokenizer, 0), teacher)
    other_tok = train_tokenizer(512, texts=["completely different text " * 50, "for another vocabulary " * 50])
    other = build_tiny_llama(tmp_path / "other", seed=2, tokenizer=other_tok, layers=1)
    with pytest.raises(CompressError, match="tokenizers differ"):
        load_student(str(other), teacher, tokenizer, 0)
    # A config-only directory: random init with the teacher's tokenizer.
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    config = json.loads((path / "config.json").read_text())
    config.update(num_hidden_layers=1)
    (cfg_dir / "config.json").write_text(json.dumps(config))
    s = load_student(str(cfg_dir), teacher, tokenizer, 0)
    assert s.config.num_hidden_layers == 1
    check_not_larger(s, teacher)
