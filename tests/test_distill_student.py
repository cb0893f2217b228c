"""Student construction: layer choice, weight copying, narrowing, and the size/tokenizer guards."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from compress import models
from compress.distill.layer_choice import Screen, select_layers_greedy, select_layers_greedy_reference
from compress.distill.student import check_not_larger, count_params, derive_student, kept_layers, load_student
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


def test_greedy_layer_selection_drops_the_least_harmful_layers(teacher4):
    """Each round drops the layer whose removal costs least on the calibration blocks: after one round the
    kept set is the best of all single drops (evenly spaced included); the teacher comes back untouched."""
    _, teacher = teacher4
    blocks = torch.randint(3, 500, (2, 32), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    n_layers = len(teacher.model.layers)

    def loss_of(keep):
        student = derive_student(teacher, None, None, keep=keep).eval()
        with torch.no_grad():
            return sum(student(input_ids=b[None], labels=b[None]).loss.item() for b in blocks) / len(blocks)

    keep3 = select_layers_greedy(teacher, 3, blocks)
    single_drops = [[j for j in range(4) if j != i] for i in range(4)]
    assert len(keep3) == 3 and loss_of(keep3) == pytest.approx(min(loss_of(k) for k in single_drops))
    assert loss_of(keep3) <= loss_of(kept_layers(4, 3)) + 1e-6
    keep2 = select_layers_greedy(teacher, 2, blocks)
    assert len(keep2) == 2 and set(keep2) <= set(keep3)  # greedy: each round removes from the last
    assert len(teacher.model.layers) == n_layers and teacher.config.num_hidden_layers == n_layers
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    student = derive_student(teacher, 2, None, keep=keep2)
    for new, old in enumerate(sorted(keep2)):
        assert torch.equal(student.state_dict()[f"model.layers.{new}.mlp.down_proj.weight"],
                           teacher.state_dict()[f"model.layers.{old}.mlp.down_proj.weight"])
    with pytest.raises(CompressError, match="more than the teacher"):
        select_layers_greedy(teacher, 5, blocks)


@pytest.fixture(scope="module")
def teacher8(tmp_path_factory, tokenizer):
    """8 layers whose weights are large enough (std 0.12) that each one changes the loss clearly."""
    from compress.testing import build_tiny_llama

    path = build_tiny_llama(tmp_path_factory.mktemp("t8") / "m", seed=3, tokenizer=tokenizer, layers=8)
    teacher = models.load_causal_lm(str(path), device="cpu", dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in teacher.model.layers.parameters():
            if w.dim() == 2:
                w.normal_(0, 0.12, generator=g)
    return teacher


def test_fast_greedy_choice_equals_the_reference(teacher8):
    """The cached-prefix, batched greedy makes the same choice as one full forward per candidate and block,
    at two depths and three batch sizes (uneven included), with fewer decoder-layer forwards."""
    teacher = teacher8
    blocks = torch.randint(3, 500, (3, 32), generator=torch.Generator().manual_seed(0))
    calls = {"n": 0}

    def count(module, args):
        calls["n"] += args[0].shape[0]

    hooks = [layer.register_forward_pre_hook(count) for layer in teacher.model.layers]
    try:
        for n in (4, 1):
            calls["n"] = 0
            want = select_layers_greedy_reference(teacher, n, blocks)
            slow = calls["n"]
            for bs in (None, 1, 2):
                calls["n"] = 0
                assert select_layers_greedy(teacher, n, blocks, batch_size=bs) == want, (n, bs)
                fast = calls["n"]
            # Screened on block 0 (a third of the tokens), in bf16 and in fp32, keeping 3: the full-token winner
            # ranks third on block 0 in some rounds here, so keep=2 would not be enough (no guarantee in general).
            for screen in (Screen(tokens=32, keep=3), Screen(tokens=32, keep=3, dtype=torch.float32)):
                assert select_layers_greedy(teacher, n, blocks, screen=screen) == want, (n, screen)
            # The whole choice in bf16 (the CPU default where AMX is there: train.layer_select_dtype) chooses
            # as the fp32 reference does here; the teacher stays in fp32 with its layers.
            assert select_layers_greedy(teacher, n, blocks, dtype=torch.bfloat16) == want, n
            assert all(p.dtype == torch.float32 for p in teacher.parameters()) and len(teacher.model.layers) == 8
        assert fast < 0.7 * slow, (fast, slow)  # 8 -> 1: 346 of 504 here (30 -> 8 on SmolLM2: about half)
    finally:
        for h in hooks:
            h.remove()
    assert want == [3]  # recorded once from the reference; guards against both drifting together
    assert select_layers_greedy(teacher, 8, blocks) == list(range(8))


def test_suffix_runs_call_the_layers_as_the_model_forward_does(teacher8):
    """After the first run at a shape (the model's own forward, which shows what each layer is passed), the
    suffix runs call the layers directly: the same states, bit for bit, entering each layer and out."""
    from compress.distill.layer_choice import _borrowed, _Suffixes

    blocks = torch.randint(3, 500, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), _borrowed(teacher8) as original:
        run = _Suffixes(teacher8, original)
        h = teacher8.get_input_embeddings()(blocks)
        via_model, seen_model = run.run(h, [0, 2, 5, 7], record=True)
        assert set(run.kwargs[(2, 32)]) == {0, 2, 5, 7}
        direct, seen_direct = run.run(h, [0, 2, 5, 7], record=True)
        other = run.run(seen_direct[1], [2, 5, 7])[0]
    assert torch.equal(via_model, direct) and torch.equal(other, direct)
    assert all(torch.equal(a, b) for a, b in zip(seen_model, seen_direct, strict=True))


def test_resumed_candidates_score_exactly_as_whole_runs(teacher8, monkeypatch):
    """A candidate whose layers before the last round's removed one saw the same states resumes from the state
    that entered it: every candidate's losses, every round, are bit for bit those of whole suffix runs."""
    from compress.distill import layer_choice

    blocks = torch.randint(3, 500, (3, 32), generator=torch.Generator().manual_seed(5))
    resumed, whole, calls = [], [], []
    hooks = [layer.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0])) for layer in teacher8.model.layers]
    try:
        keep = select_layers_greedy(teacher8, 2, blocks, batch_size=2, trace=resumed)
        n_resumed = sum(calls)
        monkeypatch.setattr(layer_choice, "_MEMO_BYTES", 0)  # nothing kept: every candidate runs whole
        assert select_layers_greedy(teacher8, 2, blocks, batch_size=2, trace=whole) == keep
    finally:
        for h in hooks:
            h.remove()
    assert [r["full"] for r in resumed] == [r["full"] for r in whole]
    assert n_resumed < 0.9 * (sum(calls) - n_resumed), (n_resumed, sum(calls) - n_resumed)


def test_candidates_left_unscored_are_bounded_out(teacher8):
    """Each round bounds every candidate's loss from below (a vocabulary subset) and scores exactly only those
    whose bound is within the margin of the best exact loss: the bounds lie below the exact losses, the removed
    layer has the best exact loss, every candidate left unscored has a bound above it by more than the margin
    (it could not win), and the choice is the reference's."""
    from compress.distill import layer_choice

    blocks = torch.randint(3, 500, (3, 32), generator=torch.Generator().manual_seed(6))
    trace: list = []
    keep = select_layers_greedy(teacher8, 1, blocks, trace=trace)
    assert keep == select_layers_greedy_reference(teacher8, 1, blocks)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    unscored = 0
    for r in trace:
        best = min(mean(v) for v in r["full"].values())
        assert mean(r["full"][r["removed"]]) == best and sorted(r["bound"]) == r["kept"]
        for layer, bound in r["bound"].items():
            if layer in r["full"]:
                assert all(b <= f + 1e-5 for b, f in zip(bound, r["full"][layer], strict=True))
            else:
                unscored += 1
                assert mean(bound) > best + layer_choice._BOUND_MARGIN
    assert unscored > 0


def test_fused_head_loss_is_the_cross_entropy_of_the_logits(teacher8, monkeypatch):
    """The head loss by vocabulary chunks (a chunk size that does not divide the vocabulary here) is the
    cross-entropy of the head's logits, in fp32 and from bf16 logits, up to the summation order."""
    from compress.distill import layer_choice

    monkeypatch.setattr(layer_choice, "_VOCAB_CHUNK", 97)
    head = teacher8.get_output_embeddings()
    ids = torch.randint(3, 500, (2, 32), generator=torch.Generator().manual_seed(3))
    hidden = torch.randn(2, 32, head.weight.shape[1], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for h, dtype in ((hidden, torch.float32), (hidden.bfloat16(), torch.bfloat16)):
            cast = copy.deepcopy(head).to(dtype)  # a copy: the teacher's head is tied to its embeddings
            want = [torch.nn.functional.cross_entropy(cast(x[:-1]).float(), t[1:]).item() for x, t in zip(h, ids)]
            assert layer_choice._head_losses(cast, h, ids) == pytest.approx(want, abs=1e-5)


@pytest.mark.slow
def test_compiled_layer_choice_chooses_as_the_reference(teacher8):
    """The layers and the head's logsumexp through torch.compile (the CPU default where AMX is there, for a
    big enough choice: train.layer_select_compile), in bf16: the same choice as the fp32 reference here; the
    teacher stays in fp32 with its layers. (Without a C++ compiler this runs eager, with a warning.)"""
    blocks = torch.randint(3, 500, (3, 32), generator=torch.Generator().manual_seed(0))
    want = select_layers_greedy_reference(teacher8, 4, blocks)
    assert select_layers_greedy(teacher8, 4, blocks, dtype=torch.bfloat16, compile=True) == want
    assert all(p.dtype == torch.float32 for p in teacher8.parameters()) and len(teacher8.model.layers) == 8


def test_screened_greedy_scores_only_the_survivors_on_all_tokens(teacher8):
    """Each screened round scores every candidate on the screen's tokens and only `keep` of them on all the
    blocks in fp32, removes the best of those by that full loss, and leaves the teacher in fp32 with its
    layers; a bad screen is a clear error."""
    teacher, trace = teacher8, []
    blocks = torch.randint(3, 500, (2, 32), generator=torch.Generator().manual_seed(1))
    keep = select_layers_greedy(teacher, 5, blocks, screen=Screen(tokens=16, keep=2), trace=trace)
    assert [len(r["kept"]) for r in trace] == [8, 7, 6]
    for r in trace:
        assert sorted(r["screen"]) == r["kept"] and len(r["screen"][r["kept"][0]]) == 1  # 16 tokens: 1 block
        assert len(r["full"]) == 2 and all(len(v) == 2 for v in r["full"].values())
        assert r["removed"] == min(r["full"], key=lambda i: sum(r["full"][i]))
        assert r["threads"] == torch.get_num_threads()
    assert keep == [i for i in range(8) if i not in {r["removed"] for r in trace}]
    assert len(teacher.model.layers) == teacher.config.num_hidden_layers == 8
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    with pytest.raises(CompressError, match="tokens >= 2"):
        Screen(tokens=1)


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


def test_a_source_given_twice_trains_twice_and_validates_once(tmp_path, tokenizer):
    from compress.distill.packing import load_data

    # 40 documents of distinct text, so the hash split puts a few on each side.
    docs = [" ".join(f"w{i}x{j}" for j in range(60)) for i in range(40)]
    (tmp_path / "a.jsonl").write_text("\n".join(f'"{d}"' for d in docs))
    once = load_data([str(tmp_path / "a.jsonl")], tokenizer, seq_len=16, heldout_fraction=0.2, eval_tokens=10**6)
    twice = load_data([str(tmp_path / "a.jsonl")] * 2, tokenizer, 16, 0.2, 10**6)
    assert once.heldout_tokens > 0 and once.train_tokens > 0
    assert twice.train_tokens == 2 * once.train_tokens  # weighted up in training
    assert twice.heldout_tokens == once.heldout_tokens  # copies hash alike: none of them leaks into training
    assert torch.equal(twice.heldout, once.heldout)


def test_greedy_screened_is_opt_in():
    """`--layer-selection greedy-screened` screens each round; plain greedy stays the exact choice."""
    from compress.distill import make_config
    from compress.distill.train import CPU_SCREEN_KEEP, CPU_SCREEN_TOKENS, layer_select_screen

    cfg = make_config(teacher="t", output="o", student_layers=2)
    assert layer_select_screen(cfg) is None
    screen = layer_select_screen(cfg.model_copy(update={"layer_selection": "greedy-screened"}))
    assert (screen.tokens, screen.keep) == (CPU_SCREEN_TOKENS, CPU_SCREEN_KEEP)
    assert screen.dtype in (torch.bfloat16, torch.float32)


def test_layer_choice_precision_defaults_to_bf16_only_on_a_cpu_with_amx():
    """`auto` (the default) runs the choice in bf16 on a CPU with AMX tiles and in the teacher's own dtype
    elsewhere; `fp32` keeps the exact choice anywhere and is part of the run hash."""
    from compress.distill import make_config
    from compress.distill.train import _cpu_has_amx, layer_select_dtype

    cfg = make_config(teacher="t", output="o", student_layers=2)
    assert cfg.layer_select_precision == "auto"
    assert layer_select_dtype(cfg, torch.device("cpu")) == (torch.bfloat16 if _cpu_has_amx() else None)
    assert layer_select_dtype(cfg, torch.device("cuda")) is None
    exact = cfg.model_copy(update={"layer_select_precision": "fp32"})
    assert layer_select_dtype(exact, torch.device("cpu")) == torch.float32
    assert layer_select_dtype(cfg.model_copy(update={"layer_select_precision": "bf16"}), "cuda") == torch.bfloat16
    assert exact.run_hash() != cfg.run_hash()
    # torch.compile only in auto on a CPU with AMX, and only where the choice is big enough to pay for compiling.
    from compress.distill.train import layer_select_compile

    big = cfg.model_copy(update={"student_layers": 8})
    assert layer_select_compile(big, torch.device("cpu"), 30) == _cpu_has_amx()  # SmolLM2 30 -> 8: 429 candidates
    assert not layer_select_compile(cfg, torch.device("cpu"), 4)  # 4 -> 2: 7 candidates
    assert not layer_select_compile(big.model_copy(update={"layer_select_precision": "bf16"}), "cpu", 30)
    assert not layer_select_compile(big, torch.device("cuda"), 30)
    with pytest.raises(CompressError, match="layer_select_precision"):
        make_config(teacher="t", output="o", student_layers=2, layer_select_precision="fp8")
