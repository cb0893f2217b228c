"""Distillation runs on tiny models: loss goes down, KD beats CE-only, exact resume after SIGKILL,
two gloo processes (DDP and FSDP2), the artifact works downstream, and bad input is one line with exit 2."""

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


def _cfg(teacher, output, **kw):
    return make_config(teacher=str(teacher), output=str(output), **{**FAST, **kw})


def test_short_run_lowers_loss_and_artifact_is_a_model(tmp_path, tiny_model):
    """A few steps of distillation reduce the held-out divergence; the artifact loads and quantizes."""
    out = tmp_path / "student"
    r = distill(_cfg(tiny_model, out, student_layers=1, max_steps=12, lr=3e-3, warmup_steps=2, loss="jsd",
                     top_k=32, grad_checkpointing=True, eval_every=6))
    m = r.metrics
    assert m["heldout_kd"] < 0.8 * m["initial_heldout_kd"]
    assert m["history"][0]["step"] == 6 and m["history"][-1]["heldout_kd"] == pytest.approx(m["heldout_kd"])
    assert m["loss_curve"][-1][1] < m["loss_curve"][0][1]
    assert m["steps"] == 12 and m["tokens_seen"] == 12 * 16 * 64
    assert m["tokens_per_s_steady"] > 0 and m["tokens_per_s"] > 0
    assert m["student_params"] < m["teacher_params"]
    meta = read_meta(out)
    assert meta.kind == "distilled" and meta.method == "jsd"
    assert meta.source.sha256 == models.fingerprint(models.resolve(str(tiny_model)))
    assert meta.config["student_layers"] == 1 and meta.config["top_k"] == 32 and meta.metrics["steps"] == 12
    assert not Path(f"{out}.checkpoints").exists()
    model = models.load_causal_lm(str(out), device="cpu")
    assert model.config.num_hidden_layers == 1
    tok = models.load_tokenizer(str(out))
    ids = tok("def f(x):", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] == ids.shape[1] + 4

    from compress.quantize import make_config as qconfig
    from compress.quantize import quantize

    q = quantize(str(out), qconfig(method="rtn"), tmp_path / "rtn",
                 device="cpu", measure_quality=False)
    assert read_meta(q.output).kind == "quantized"


def test_frozen_embeddings_stay_the_teachers(tmp_path, tiny_model):
    out = tmp_path / "frozen"
    distill(_cfg(tiny_model, out, student_layers=1, max_steps=3, lr=3e-3, warmup_steps=1, freeze_embeddings=True))
    student = models.load_causal_lm(str(out), device="cpu")
    teacher = models.load_causal_lm(str(tiny_model), device="cpu")
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    assert torch.equal(student.get_output_embeddings().weight, teacher.get_output_embeddings().weight)
    moved = student.model.layers[0].mlp.down_proj.weight - teacher.model.layers[-1].mlp.down_proj.weight
    assert moved.abs().max() > 0  # the layers did train


@pytest.mark.slow
def test_distilled_student_beats_cross_entropy_only(tmp_path, trained_teacher):
    """Same student (random init, 2 layers), same data, same steps: soft targets from a trained teacher
    give a lower held-out perplexity than cross-entropy on the data alone."""
    import json

    cfg_dir = tmp_path / "student-config"
    cfg_dir.mkdir()
    config = json.loads((trained_teacher / "config.json").read_text())
    config["num_hidden_layers"] = 2
    (cfg_dir / "config.json").write_text(json.dumps(config))
    common = dict(student=str(cfg_dir), max_steps=KD_STEPS, lr=3e-3, warmup_steps=5, batch_size=8)
    kd = distill(_cfg(trained_teacher, tmp_path / "kd", ce_weight=0.0, **common)).metrics
    ce = distill(_cfg(trained_teacher, tmp_path / "ce", ce_weight=1.0, **common)).metrics
    assert kd["initial_student_ppl"] == pytest.approx(ce["initial_student_ppl"])  # same start
    assert kd["student_ppl"] < ce["student_ppl"], (kd["student_ppl"], ce["student_ppl"])
    assert kd["heldout_kd"] < ce["heldout_kd"]


KD_STEPS = 100


@pytest.fixture(scope="session")
def tied_model(tmp_path_factory, tokenizer):
    """tiny_model with tied input/output embeddings, as SmolLM2 has."""
    from compress.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tied") / "model", seed=0, tokenizer=tokenizer, tied=True)


def _run_cli(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen([sys.executable, "-m", "compress", "distill", *args], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_model):
    """SIGKILL a CLI run after its second checkpoint; --resume finishes it; the weights equal an
    uninterrupted run's."""
    killed = tmp_path / "killed"
    args = [str(tiny_model), "--output", str(killed), "--student-layers", "1", "--max-steps", "16",
            "--save-every", "4", "--seq-len", "64", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "3",
            "--seed", "3"]
    proc = _run_cli(args)
    target = Path(f"{killed}.checkpoints") / "step-00000008" / "state.json"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists(), proc.stderr.read()
    assert not killed.exists()  # killed before the artifact was written

    common = dict(student_layers=1, max_steps=16, save_every=4, batch_size=8, lr=3e-3, warmup_steps=3, seed=3)
    with pytest.raises(CompressError, match="another run.*lr"):
        distill(_cfg(tiny_model, killed, resume=True, **{**common, "lr": 1e-3}))
    with pytest.raises(CompressError, match="--resume"):
        distill(_cfg(tiny_model, killed, **common))
    resumed = distill(_cfg(tiny_model, killed, resume=True, **common)).metrics
    assert resumed["steps"] == 16
    straight = distill(_cfg(tiny_model, tmp_path / "straight", **common)).metrics
    assert resumed["tokens_seen"] == straight["tokens_seen"]
    a, b = _weights(killed), _weights(tmp_path / "straight")
    for k in b:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    assert resumed["student_ppl"] == pytest.approx(straight["student_ppl"], rel=1e-6)


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_with_the_whole_batch(tmp_path, tiny_model):
    """DDP over 2 CPU processes (gloo), 4 sequences each, matches 1 process with 8 sequences."""
    common = dict(student_layers=1, max_steps=4, lr=3e-3, warmup_steps=1)
    two = distill(_cfg(tiny_model, tmp_path / "two", num_processes=2, batch_size=4, **common)).metrics
    one = distill(_cfg(tiny_model, tmp_path / "one", num_processes=1, batch_size=8, **common)).metrics
    assert two["num_processes"] == 2 and two["tokens_seen"] == one["tokens_seen"]
    a, b = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    for k in b:
        assert torch.allclose(a[k], b[k], atol=1e-4), k
    assert two["student_ppl"] == pytest.approx(one["student_ppl"], rel=1e-3)


def _cli(argv, capsys) -> tuple[int, str]:
    from compress.cli import main

    capsys.readouterr()  # drop earlier output (fixtures' progress bars)
    with pytest.raises(SystemExit) as e:
        main(["distill", *argv])
    err = capsys.readouterr().err.strip()
    return e.value.code, err


def test_bad_input_is_one_line_exit_2(tmp_path, tiny_model, tokenizer, capsys):
    from compress.testing import build_tiny_llama, train_tokenizer

    base = [str(tiny_model), "--max-steps", "1", "--seq-len", "64"]
    exists = tmp_path / "exists"
    exists.mkdir()
    other = build_tiny_llama(tmp_path / "other", tokenizer=train_tokenizer(512, texts=["zebra quartz " * 200]), layers=1)
    big = build_tiny_llama(tmp_path / "big", tokenizer=tokenizer, layers=2, hidden=256)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    short = tmp_path / "short.txt"
    short.write_text("A few words only.")
    cases = [
        (["--output", str(exists)], "already exists"),
        (["--output", str(tmp_path / "o1"), "--student", str(other)], "tokenizers differ"),
        (["--output", str(tmp_path / "o2"), "--student", str(big)], "larger than the teacher"),
        (["--output", str(tmp_path / "o3"), "--student-layers", "5"], "more than the teacher's 2 layers"),
        (["--output", str(tmp_path / "o4"), "--data", str(empty)], "no text in"),
        (["--output", str(tmp_path / "o5"), "--data", str(short)], "data too small"),
        (["--output", str(tmp_path / "o6"), "--student", str(big), "--student-layers", "1"], "not both"),
        (["--output", str(tmp_path / "o7"), "--beta", "2"], "beta"),
    ]
    for extra, message in cases:
        code, err = _cli(base + extra, capsys)
        assert code == 2, (extra, err)
        # Loading bars from transformers may precede it; the error itself is exactly one line.
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, (extra, err)
    assert not any(p.name.startswith(".o") for p in tmp_path.iterdir())  # no half-written artifacts


@pytest.mark.slow
def test_fsdp_over_two_gloo_processes_trains_like_ddp(tmp_path, tied_model):
    """FSDP2 over 2 CPU processes (gloo), tied embeddings, 2 accumulated micro-steps: the same data
    (global batch 2 x 4) gives DDP's weights and held-out perplexity. 9 held-out blocks split 5/4, so
    one process runs a throw-away forward for the other's last FSDP all-gather."""
    from safetensors import safe_open

    common = dict(student_layers=1, max_steps=4, lr=3e-3, warmup_steps=1, num_processes=2, batch_size=4,
                  grad_accum=2, eval_tokens=9 * 64)
    fsdp = distill(_cfg(tied_model, tmp_path / "fsdp", parallel="fsdp", **common)).metrics
    ddp = distill(_cfg(tied_model, tmp_path / "ddp", parallel="ddp", **common)).metrics
    assert (fsdp["parallel"], ddp["parallel"]) == ("fsdp", "ddp")
    assert fsdp["heldout_tokens"] == ddp["heldout_tokens"] == 9 * 63
    assert fsdp["student_ppl"] == pytest.approx(ddp["student_ppl"], rel=1e-4), (fsdp["student_ppl"], ddp["student_ppl"])
    a, b = _weights(tmp_path / "fsdp"), _weights(tmp_path / "ddp")
    for k in b:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    with safe_open(tmp_path / "fsdp" / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()  # still tied: saved once, as DDP saves it
    student = models.load_causal_lm(str(tmp_path / "fsdp"), device="cpu")
    assert student.get_input_embeddings().weight is student.get_output_embeddings().weight


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_killed_two_process_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_model, parallel):
    """SIGKILL a 2-process CLI run (its whole process group) after its second checkpoint; --resume in 2
    processes ends on the uninterrupted run's weights. Under FSDP the checkpoint holds the optimizer state
    gathered from both shards, and resuming splits it again."""
    killed = tmp_path / "killed"
    args = [str(tiny_model), "--output", str(killed), "--student-layers", "1", "--max-steps", "16",
            "--save-every", "4", "--seq-len", "64", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "3",
            "--seed", "3", "--num-processes", "2", "--parallel", parallel]
    proc = _run_cli(args, start_new_session=True)  # its own group: the spawned workers die with it
    target = Path(f"{killed}.checkpoints") / "step-00000008" / "state.json"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists(), proc.stderr.read()
    assert not killed.exists()

    common = dict(student_layers=1, max_steps=16, save_every=4, batch_size=4, lr=3e-3, warmup_steps=3, seed=3,
                  num_processes=2)
    other = "ddp" if parallel == "fsdp" else "fsdp"
    with pytest.raises(CompressError, match="another run.*parallel"):
        distill(_cfg(tiny_model, killed, resume=True, parallel=other, **common))
    resumed = distill(_cfg(tiny_model, killed, resume=True, parallel=parallel, **common)).metrics
    straight = distill(_cfg(tiny_model, tmp_path / "straight", parallel=parallel, **common)).metrics
    assert resumed["steps"] == 16 and resumed["tokens_seen"] == straight["tokens_seen"]
    a, b = _weights(killed), _weights(tmp_path / "straight")
    for k in b:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), k
    assert resumed["student_ppl"] == pytest.approx(straight["student_ppl"], rel=1e-6)


def test_fsdp_in_one_process_trains_unsharded(tmp_path, tiny_model):
    out = tmp_path / "one"
    m = distill(_cfg(tiny_model, out, student_layers=1, max_steps=2, warmup_steps=1, parallel="fsdp")).metrics
    assert m["parallel"] == "none" and m["num_processes"] == 1
    assert read_meta(out).config["parallel"] == "fsdp"


def test_parallel_joins_the_run_hash_only_for_fsdp():
    """ddp (and layer_select_precision auto) hash as before those fields existed, so older checkpoints still resume."""
    import hashlib
    import json

    from compress.distill.config import NOT_HASHED

    ddp = make_config(teacher="t", output="o")
    later = ("parallel", "layer_select_precision")  # fields added later, left out at their defaults
    before = {k: v for k, v in ddp.model_dump().items() if k not in NOT_HASHED and k not in later}
    assert ddp.run_hash() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert make_config(teacher="t", output="o", parallel="fsdp").run_hash() != ddp.run_hash()


def test_fsdp_needs_a_named_decoder_layer(tiny_model):
    from compress.distill.train import _fsdp_layer_classes

    student = models.load_causal_lm(str(tiny_model), device="cpu")
    assert _fsdp_layer_classes(student) == ["LlamaDecoderLayer"]
    student._no_split_modules = None
    with pytest.raises(CompressError, match="--parallel fsdp.*_no_split_modules.*--parallel ddp"):
        _fsdp_layer_classes(student)


def test_cli_forwards_parallel(tmp_path, tiny_model, capsys, monkeypatch):
    import compress.distill
    from compress.distill import DistillResult

    seen = {}

    def fake(cfg):
        seen["cfg"] = cfg
        return DistillResult(tmp_path / "o", dict(student_ppl=1.0, teacher_ppl=1.0, initial_student_ppl=2.0,
                                                  student_params=1, teacher_params=2, steps=1, tokens_seen=1,
                                                  tokens_per_s=1.0))

    monkeypatch.setattr(compress.distill, "distill", fake)
    code, err = _cli([str(tiny_model), "--output", str(tmp_path / "o"), "--num-processes", "2",
                      "--parallel", "fsdp"], capsys)
    assert code in (0, None), err
    assert seen["cfg"].parallel == "fsdp" and seen["cfg"].num_processes == 2
    code, err = _cli([str(tiny_model), "--output", str(tmp_path / "o"), "--parallel", "zero3"], capsys)
    assert code == 2 and "zero3" in err


@pytest.mark.slow
def test_compiled_run_follows_the_eager_trajectory(tmp_path, tiny_model):
    """--compile (torch.compile of both forwards and the loss) trains the same student as eager, up to
    kernel rounding, and leaves the run hash alone so either can resume the other."""
    kw = dict(student_layers=1, max_steps=6, lr=3e-3, warmup_steps=2, top_k=None)
    eager = distill(_cfg(tiny_model, tmp_path / "eager", **kw)).metrics
    compiled = distill(_cfg(tiny_model, tmp_path / "compiled", compile=True, **kw)).metrics
    assert compiled["heldout_kd"] == pytest.approx(eager["heldout_kd"], rel=1e-3)
    assert [c[1] for c in compiled["loss_curve"]] == pytest.approx([c[1] for c in eager["loss_curve"]], rel=1e-3)
    assert eager["heldout_kd"] < 0.9 * eager["initial_heldout_kd"]  # it trained, not just ran
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    assert _cfg(tiny_model, "x", compile=True, **kw).run_hash() == _cfg(tiny_model, "x", **kw).run_hash()


def test_resume_with_overwrite_starts_over_from_another_runs_checkpoints(tmp_path):
    """A recipe's distill step passes overwrite; with `resume: true` it continues its own run's checkpoints and
    drops another run's (an edited recipe) instead of refusing them."""
    import json

    from compress.distill.train import STATE_FILE, prepare_checkpoint_dir

    cfg = make_config(teacher="t", output=str(tmp_path / "s"), student_layers=2, resume=True, overwrite=True)
    step = cfg.ckpt_dir / "step-00000010"
    step.mkdir(parents=True)
    (step / STATE_FILE).write_text(json.dumps({"run_hash": cfg.run_hash(), "step": 10}))
    assert prepare_checkpoint_dir(cfg) == step
    (step / STATE_FILE).write_text(json.dumps({"run_hash": "another", "step": 10}))
    with pytest.raises(CompressError, match="another run"):
        prepare_checkpoint_dir(cfg.model_copy(update={"overwrite": False}))
    assert prepare_checkpoint_dir(cfg) is None and not cfg.ckpt_dir.exists()


def test_gpu_quick_recipe_validates_and_its_distill_step_resumes():
    """recipes/gpu-quick.yaml loads, and its distill tiers are valid DistillConfigs that checkpoint and resume
    (each 10-minute call continues the distillation where the last one stopped)."""
    from compress.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "gpu-quick.yaml")
    assert recipe.baseline == "source" and recipe.device == "cuda"
    tiers = [t for t in recipe.tiers if t.distill is not None]
    assert tiers
    for t in tiers:
        cfg = make_config(**t.distill, teacher="t", output="o", overwrite=True, device=recipe.device)
        assert cfg.resume and 0 < cfg.save_every < cfg.max_steps and cfg.max_time is None
