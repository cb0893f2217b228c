"""The distillation run: load teacher and student, train, validate, checkpoint, resume, save the artifact.

One function, `distill(config)`, works the same in one process, in N processes it starts itself
(`num_processes`: NCCL on GPUs, gloo on CPUs), or under `accelerate launch` (each process sees the
launcher's environment and joins its group). Each process owns a slice of every global batch (see
packing.batch_indices); gradients are averaged over processes, so N processes with batch B train like
one process with batch N*B. `parallel` picks how the student is spread (the teacher is always a
whole, frozen, unwrapped copy per process):
- ddp: accelerate's DDP, every process holds the whole student and its optimizer state;
- fsdp: accelerate's FSDP2 plugin, each decoder layer (the student's `_no_split_modules`) its own
  shard group, weights, gradients and AdamW state split over processes; tied embeddings share a group.
  In one process both are plain unsharded training.

Checkpoints (every `save_every` steps, and when `max_time` runs out) hold the student weights, the
optimizer state, every process's RNG states, the step, tokens seen, elapsed time and validation
history; the data position and the learning rate are pure functions of the step, so `--resume`
continues on exactly the trajectory an uninterrupted run takes. A checkpoint is written to a
temporary folder and renamed when complete, so a run killed while saving leaves the previous one.
Weights and optimizer state are saved whole (gathered from the shards under FSDP), so the files are
the same for ddp and fsdp.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from compress import models, runtime
from compress.artifacts import ArtifactMeta, SourceInfo, atomic_dir, check_output, now_iso, write_meta
from compress.distill.config import NOT_HASHED, DistillConfig
from compress.distill.losses import distill_loss
from compress.distill.packing import DistillData, batch_indices, load_data
from compress.distill.layer_choice import Screen, select_layers_greedy
from compress.distill.student import check_not_larger, count_params, derive_student, kept_layers, load_student
from compress.errors import CompressError

CKPT_PREFIX = "step-"
WARM_STEPS = 5
READ_EVERY = 10  # steps between reads of the losses from the device (each read waits for the GPU)
STATE_FILE = "state.json"
# Calibration tokens of the greedy layer choice (config.layer_select_tokens, when not given). 30 -> 8 on
# SmolLM2 costs ~31G multiply-adds per token. 512 and 256 tokens choose other layers than 2,048
# (benchmarks/RESULTS.md, `gpu_scale2.sh` step 5), and 1,024 (the first two of the four blocks) already
# picks another first removal (layer 4, not 14, in the 2,048-token bf16 trace), so the CPU count stays
# 2,048; the CPU saves time with bf16, torch.compile and resumed candidates instead (layer_select_dtype,
# layer_select_compile).
GPU_SELECT_TOKENS = 2048
CPU_SELECT_TOKENS = 2048
COMPILE_MIN_CANDIDATES = 100  # layer_select_compile
# `greedy-screened` screens each round (layer_choice.Screen; bf16 where oneDNN has bf16 kernels). It stays opt-in:
# in SmolLM2's 30 -> 8 bf16 run, a 512-token screen ranks a round's winner as low as 6th (keep 3 would change the
# choice; benchmarks/results/distill_layer_speed_cpu_bf16_exact_t1.json, screen_margins).
CPU_SCREEN_TOKENS, CPU_SCREEN_KEEP = 512, 3


@dataclass
class DistillResult:
    output: Path
    metrics: dict


def distill(cfg: DistillConfig) -> DistillResult:
    """Train a student from cfg.teacher and write the artifact cfg.output (see module docstring)."""
    if _world_size() == 1 or _rank() == 0:
        check_output(cfg.output, cfg.overwrite)
    if cfg.num_processes > 1 and _world_size() == 1:
        prepare_checkpoint_dir(cfg)
        # Convert a GGUF teacher once here, not concurrently in every worker.
        models.checkpoint_dir(models.resolve(cfg.teacher))
        return _launch(cfg)
    if _rank() == 0:  # under `accelerate launch`, process 0 checks for everyone
        prepare_checkpoint_dir(cfg)
    return _train(cfg)


# ---------------------------------------------------------------------------------------- checkpoints

def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob(f"{CKPT_PREFIX}*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def prepare_checkpoint_dir(cfg: DistillConfig) -> Path | None:
    """Check the checkpoint folder against the flags; return the checkpoint to resume from, if any."""
    d = cfg.ckpt_dir
    last = latest_checkpoint(d) if d.is_dir() else None
    if last is None:
        return None
    if not cfg.resume:
        if cfg.overwrite:
            shutil.rmtree(d)
            return None
        raise CompressError(f"{d} holds checkpoints of an earlier run: pass --resume to continue it "
                            "or --overwrite to start over")
    state = json.loads((last / STATE_FILE).read_text())
    if state.get("run_hash") != cfg.run_hash() and cfg.overwrite:
        shutil.rmtree(d)  # --resume --overwrite: continue this run if it was started, else start over
        return None
    if state.get("run_hash") != cfg.run_hash():
        raise CompressError(f"cannot resume from {last}: it belongs to another run (config hash "
                            f"{state.get('run_hash')} != {cfg.run_hash()}; changed: {_changed(state.get('config', {}), cfg)})")
    return last


def _changed(old: dict, cfg: DistillConfig) -> str:
    new = cfg.model_dump()
    keys = [k for k in new if k in old and old[k] != new[k] and k not in NOT_HASHED]
    return ", ".join(keys) or "unknown"


def _save_checkpoint(acc, cfg: DistillConfig, model, optimizer, state: dict) -> None:
    d = cfg.ckpt_dir
    final = d / f"{CKPT_PREFIX}{state['step']:08d}"
    tmp = d / f".tmp-{final.name}"
    weights = acc.get_state_dict(model)  # collective under FSDP: every process calls it
    optim_state = _full_optimizer_state(model, optimizer) if _sharded(acc) else None  # collective too
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{acc.process_index}.pt")
    if acc.is_main_process:
        weights = _retied(acc.unwrap_model(model), {k: v.detach().cpu() for k, v in weights.items()})
        torch.save(weights, tmp / "model.pt")
        torch.save(optim_state if optim_state is not None else optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    acc.wait_for_everyone()
    if acc.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in d.glob(f"{CKPT_PREFIX}*"):  # keep only the newest
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _retied(model, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One tensor again under every name of a shared parameter (tied input/output embeddings): copies made
    per name (gathered from FSDP shards, or moved off the GPU) would be saved twice, and save_pretrained
    recognises ties by storage only."""
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if name in weights:
            weights[name] = weights[first.setdefault(id(p), name)]
    return weights


def _sharded(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def _full_optimizer_state(model, optimizer) -> dict:
    """The FSDP-sharded AdamW state gathered whole, in `optimizer.state_dict()`'s layout (parameters
    numbered in optimizer order) so that the checkpoint file is the same as DDP's. Collective; the full
    dict lands on process 0 only (in CPU memory), the others get {}."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer.optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(n for g in by_name["param_groups"] for n in g["params"])}
    return {"state": {index[name]: v for name, v in by_name["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]}


def _load_full_optimizer_state(model, optimizer, saved: dict) -> None:
    """Inverse of _full_optimizer_state: every process passes the whole saved state and keeps its shard.
    Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = {p: name for name, p in model.named_parameters()}  # tied weights: one name, as in the optimizer
    order = [names[p] for g in optimizer.optimizer.param_groups for p in g["params"]]
    by_name = {"state": {order[i]: v for i, v in saved["state"].items()},
               "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]]}
    set_optimizer_state_dict(model, optimizer.optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _rng_state() -> dict:
    import numpy as np

    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def _set_rng_state(s: dict) -> None:
    import numpy as np

    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# ---------------------------------------------------------------------------------------- schedule

def lr_factor(step: int, cfg: DistillConfig, elapsed: float = 0.0) -> float:
    """Linear warm-up over warmup_steps, then cosine to min_lr_ratio at max_steps (or at max_time)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.time_scheduled:
        progress = min(1.0, elapsed / cfg.max_time)
    else:
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------- models

def _load_models(cfg: DistillConfig, device: torch.device, dtype: torch.dtype, progress: bool):
    """(teacher ref, tokenizer, teacher on device, student on device, training data, kept layers or None)."""
    teacher_ref = models.resolve(cfg.teacher)
    tokenizer = models.load_tokenizer(teacher_ref)
    data = load_data(cfg.data, tokenizer, cfg.seq_len, cfg.heldout_fraction, cfg.eval_tokens)
    teacher = models.load_causal_lm(teacher_ref, device="cpu", dtype=torch.float32)
    # A derived student is cut from the fp32 weights (the dict keeps them past the move to the device).
    cpu_state = dict(teacher.state_dict()) if cfg.student is None else None
    teacher = teacher.to(device=device, dtype=dtype).eval()
    teacher.requires_grad_(False)
    keep = None
    if cfg.student is not None:
        student = load_student(cfg.student, teacher, tokenizer, cfg.seed)
    else:
        n = teacher.config.num_hidden_layers
        if cfg.layer_selection != "even" and cfg.student_layers is not None and cfg.student_layers < n:
            keep = select_layers_greedy(teacher, cfg.student_layers, layer_select_blocks(cfg, data, device), progress,
                                        screen=layer_select_screen(cfg), dtype=layer_select_dtype(cfg, device),
                                        compile=layer_select_compile(cfg, device, n))
        student = derive_student(teacher, cfg.student_layers, cfg.student_intermediate_size, keep=keep, state=cpu_state)
        del cpu_state
        keep = keep if keep is not None else kept_layers(n, cfg.student_layers or n)
    check_not_larger(student, teacher)
    return teacher_ref, tokenizer, teacher, student.to(device), data, keep


def layer_select_blocks(cfg: DistillConfig, data: DistillData, device: torch.device) -> torch.Tensor:
    """The first `layer_select_tokens` training tokens (default: CPU_SELECT_TOKENS on a CPU, else
    GPU_SELECT_TOKENS) as [B, S] blocks; fewer than one block's tokens take the head of the first block.
    Training text only: the held-out split stays unseen."""
    tokens = cfg.layer_select_tokens or (CPU_SELECT_TOKENS if torch.device(device).type == "cpu" else GPU_SELECT_TOKENS)
    n_blocks = max(1, min(len(data.train), -(-tokens // cfg.seq_len)))
    return data.train[:n_blocks, :min(tokens, cfg.seq_len)].to(device)


def layer_select_dtype(cfg: DistillConfig, device: torch.device) -> torch.dtype | None:
    """The dtype the greedy choice runs in (None: the teacher's own). `auto` is bf16 on a CPU with AMX tiles,
    where oneDNN's bf16 matmuls make the choice ~2.7x cheaper in CPU time than fp32, with the same SmolLM2
    30 -> 8 choice (benchmarks/RESULTS.md, issue 18); elsewhere (a GPU, or a CPU without AMX, where bf16 is
    emulated or slow, and the same choice is not shown) the teacher's own."""
    if cfg.layer_select_precision == "fp32":
        return torch.float32
    if cfg.layer_select_precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.device(device).type == "cpu" and _cpu_has_amx() else None


def layer_select_compile(cfg: DistillConfig, device: torch.device, n_teacher: int) -> bool:
    """Whether the greedy choice runs its layers (and its head loss's reductions) through torch.compile: in
    the `auto` precision on a CPU with AMX, where eager bf16 spends much of its time in small elementwise ops
    (see layer_choice._compiled; benchmarks/RESULTS.md, issue 18), and only for a choice of at least
    COMPILE_MIN_CANDIDATES candidate removals (a first compile costs ~20 s on a 2-core CPU: it pays off over
    SmolLM2's 429, not over a tiny model's few). The explicit `fp32` and `bf16` precisions run eager, as before."""
    candidates = sum(range((cfg.student_layers or n_teacher) + 1, n_teacher + 1))
    return (cfg.layer_select_precision == "auto" and layer_select_dtype(cfg, device) == torch.bfloat16
            and candidates >= COMPILE_MIN_CANDIDATES)


def _cpu_has_amx() -> bool:
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: absent = no
    return bool(check and check())


def layer_select_screen(cfg: DistillConfig) -> Screen | None:
    """The greedy choice's per-round screen, for `greedy-screened`."""
    if cfg.layer_selection != "greedy-screened":
        return None
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return Screen(CPU_SCREEN_TOKENS, CPU_SCREEN_KEEP, torch.bfloat16 if bf16 else torch.float32)


@torch.no_grad()
def _evaluate(acc, model, teacher, data: DistillData, cfg: DistillConfig):
    """Held-out perplexity of the student (and of the teacher the first time) and the student's
    held-out distillation divergence. Blocks are split over processes; sums are all-reduced."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, device=acc.device, dtype=torch.float64)  # student nll, teacher nll, kd, tokens
    idx = list(range(acc.process_index, len(data.heldout), acc.num_processes))
    batches = [idx[i:i + cfg.batch_size] for i in range(0, len(idx), cfg.batch_size)]
    if _sharded(acc):
        # An FSDP forward is collective (it gathers each layer's shards): a process with fewer held-out
        # blocks runs throw-away forwards until it has run as many as process 0.
        rounds = -(-len(range(0, len(data.heldout), acc.num_processes)) // cfg.batch_size)
        batches += [None] * (rounds - len(batches))
    for batch in batches:
        if batch is None:
            with acc.autocast():
                model(input_ids=data.heldout[:1].to(acc.device))
            continue
        x = data.heldout[batch].to(acc.device)  # [B, S]
        labels = x[:, 1:]
        with acc.autocast():
            s_logits = model(input_ids=x).logits[:, :-1].float()
            t_logits = teacher(input_ids=x).logits[:, :-1].float()
        s = distill_loss(s_logits, t_logits, labels, cfg.loss, cfg.beta, cfg.temperature, 0.0, cfg.top_k)
        t_ce = torch.nn.functional.cross_entropy(t_logits.flatten(0, 1), labels.flatten())
        n = labels.numel()
        sums += torch.tensor([s["ce"].item() * n, t_ce.item() * n, s["kd"].item() * n, n],
                             device=acc.device, dtype=torch.float64)
    if acc.num_processes > 1:
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    n = sums[3].item()
    return {"student_ppl": math.exp(sums[0].item() / n), "teacher_ppl": math.exp(sums[1].item() / n),
            "heldout_kd": sums[2].item() / n, "heldout_tokens": int(n)}


# ---------------------------------------------------------------------------------------- training

def _accelerator(cfg: DistillConfig, on_cuda: bool):
    """accelerate's Accelerator for the run: DDP (nothing, in one process), or FSDP2 for --parallel fsdp."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    plugin = _fsdp_plugin(on_cuda) if cfg.parallel == "fsdp" and _world_size() > 1 else None
    acc = Accelerator(cpu=not on_cuda, mixed_precision="bf16" if on_cuda else "no", fsdp_plugin=plugin)
    if plugin is not None and acc.distributed_type == DistributedType.MULTI_CPU:
        # accelerate 1.15 turns FSDP on for accelerator devices only: on CPUs it keeps MULTI_CPU and would
        # silently run DDP. torch's fully_shard runs on CPUs over gloo, so switch the state over the way
        # accelerate does for GPUs (state.py): CPU runs, the tests among them, take the GPU runs' path.
        from accelerate.state import PartialState

        acc.state.fsdp_plugin = plugin
        acc.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if cfg.parallel == "ddp" and _sharded(acc):
        raise CompressError("accelerate launch is configured for FSDP: pass --parallel fsdp, or launch without it")
    if plugin is not None and not acc.is_fsdp2:
        raise CompressError(f"--parallel fsdp: accelerate did not turn FSDP2 on ({acc.distributed_type.value})")
    return acc


def _fsdp_plugin(on_cuda: bool):
    from accelerate import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",  # the layer class comes from the student (_fsdp_layer_classes)
        reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT",
        # Like DDP under bf16 autocast: bf16 compute, fp32 master weights, gradients reduced in fp32.
        mixed_precision_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if on_cuda else None,
        # Explicit, so that an `accelerate launch` config cannot switch them on behind the run's back.
        cpu_offload=False, cpu_ram_efficient_loading=False, activation_checkpointing=False,
    )


def _fsdp_layer_classes(student) -> list[str]:
    """The decoder layer class(es) FSDP wraps one by one: what transformers names `_no_split_modules`."""
    names = list(getattr(student, "_no_split_modules", None) or [])
    present = {type(m).__name__ for m in student.modules()}
    if not names or not set(names) & present:
        raise CompressError(f"--parallel fsdp shards the student per decoder layer, but {type(student).__name__} "
                            "does not name its layer class (_no_split_modules): use --parallel ddp")
    return [n for n in names if n in present]


def _train(cfg: DistillConfig) -> DistillResult:
    from tqdm.auto import tqdm

    started = time.time()
    device_name = cfg.device or runtime.default_device()
    on_cuda = device_name.startswith("cuda")
    acc = _accelerator(cfg, on_cuda)
    main = acc.is_main_process
    dtype = runtime.compute_dtype(str(acc.device))
    torch.manual_seed(cfg.seed)

    with acc.main_process_first():  # a GGUF teacher is converted (and cached) once
        teacher_ref, tokenizer, teacher, student, data, kept = _load_models(cfg, acc.device, dtype, main and cfg.progress)
    if cfg.grad_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.config.use_cache = False
    student.train()
    if cfg.freeze_embeddings:
        student.get_input_embeddings().requires_grad_(False)
        student.get_output_embeddings().requires_grad_(False)  # the same tensor when tied
    n_student, n_teacher = count_params(student), count_params(teacher)
    sharded = _sharded(acc)
    if sharded:
        acc.state.fsdp_plugin.transformer_cls_names_to_wrap = _fsdp_layer_classes(student)

    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.9, 0.95),
                                  weight_decay=cfg.weight_decay, fused=(on_cuda and not sharded) or None)
    state = {"run_hash": cfg.run_hash(), "config": cfg.model_dump(), "step": 0, "tokens_seen": 0,
             "train_time_s": 0.0, "history": [], "loss_curve": [], "initial": None}
    resume_from = latest_checkpoint(cfg.ckpt_dir) if cfg.resume and cfg.ckpt_dir.is_dir() else None
    if resume_from is not None:
        saved = json.loads((resume_from / STATE_FILE).read_text())
        if saved.get("run_hash") != cfg.run_hash():
            raise CompressError(f"cannot resume from {resume_from}: it belongs to another run")
        # torch.load restores to "cpu" but not to "cpu:0", the device accelerate gives CPU processes.
        location = "cpu" if acc.device.type == "cpu" else acc.device
        student.load_state_dict(torch.load(resume_from / "model.pt", map_location=location))
        if not sharded:  # FSDP: after prepare, once the parameters are sharded
            optimizer.load_state_dict(torch.load(resume_from / "optimizer.pt", map_location=location,
                                                 weights_only=False))
        state.update(saved)
    model, optimizer = acc.prepare(student, optimizer)
    if sharded:
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(model, FSDPModule):  # the CPU switch above relies on accelerate's internals
            raise CompressError("--parallel fsdp: accelerate left the student unsharded; use --parallel ddp")
    if resume_from is not None:
        if sharded:
            saved_optimizer = torch.load(resume_from / "optimizer.pt", map_location="cpu", weights_only=False)
            _load_full_optimizer_state(model, optimizer, saved_optimizer)
            del saved_optimizer
        rng_file = resume_from / f"rng-{acc.process_index}.pt"
        if rng_file.is_file():
            _set_rng_state(torch.load(rng_file, weights_only=False))
        if main:
            tqdm.write(f"resuming from {resume_from} (step {state['step']})")

    if state["initial"] is None:
        state["initial"] = _evaluate(acc, model, teacher, data, cfg)
        if main and cfg.progress:
            i = state["initial"]
            tqdm.write(f"start: teacher ppl {i['teacher_ppl']:.3f}, student ppl {i['student_ppl']:.3f}, "
                       f"held-out {cfg.loss} {i['heldout_kd']:.4f} ({i['heldout_tokens']} tokens)")
    teacher_ppl = state["initial"]["teacher_ppl"]

    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * acc.num_processes
    need_teacher = cfg.ce_weight < 1.0
    # Compiled callables for the training step only: validation runs eager on the same modules, so it
    # does not recompile for its batch shapes and no-grad mode (see DistillConfig.compile).
    student_fwd, teacher_fwd, loss_fn = model, teacher, distill_loss
    if cfg.compile:
        student_fwd, teacher_fwd = torch.compile(model, dynamic=False), torch.compile(teacher, dynamic=False)
        loss_fn = torch.compile(distill_loss, dynamic=False)
    step, tokens_seen = state["step"], state["tokens_seen"]
    total = cfg.max_steps
    curve_every = max(1, (cfg.max_steps or 10_000) // 200)
    bar = tqdm(total=total, initial=step, desc=f"distill ({cfg.loss})", disable=not (main and cfg.progress),
               dynamic_ncols=True, unit="step")
    run_start, run_start_time_s, run_tokens = time.time(), state["train_time_s"], 0
    warm, first_step = None, step  # warm: (time, tokens) WARM_STEPS steps into this process's run
    stopped_by_time = False
    pending: list[tuple[int, torch.Tensor]] = []  # (step, [loss, kd, ce] on the device) not yet in the curve
    while cfg.max_steps is None or step < cfg.max_steps:
        elapsed = run_start_time_s + time.time() - run_start
        if cfg.max_time is not None:  # stop (and schedule) on process 0's clock; a host sync, so only when timed
            elapsed = _agree(acc, elapsed)
        if cfg.max_time is not None and elapsed >= cfg.max_time:
            stopped_by_time = True
            break
        lr = cfg.lr * lr_factor(step, cfg, elapsed)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logs = torch.zeros(3, device=acc.device)
        for micro in range(cfg.grad_accum):
            g = step * cfg.grad_accum + micro
            idx = batch_indices(g, len(data.train), cfg.batch_size, acc.num_processes, acc.process_index, cfg.seed)
            x = _to_device(data.train[idx], acc.device)  # [B, S]
            labels = x[:, 1:]
            sync = acc.no_sync(model) if micro < cfg.grad_accum - 1 else nullcontext()
            with sync:
                with acc.autocast():
                    s_logits = student_fwd(input_ids=x).logits[:, :-1]  # [B, S-1, V]
                t_logits = None
                if need_teacher:
                    with torch.no_grad(), acc.autocast():
                        t_logits = teacher_fwd(input_ids=x).logits[:, :-1]
                out = loss_fn(s_logits, t_logits, labels, cfg.loss, cfg.beta, cfg.temperature,
                               cfg.ce_weight, cfg.top_k)
                acc.backward(out["loss"] / cfg.grad_accum)
            logs += torch.stack([out["loss"].detach(), out["kd"], out["ce"]]) / cfg.grad_accum
        acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        run_tokens += tokens_per_step
        if step % curve_every == 0 or step == 1:
            pending.append((step, logs))
        if warm is None and step - first_step == WARM_STEPS:
            warm = (time.time(), run_tokens)
        bar.update(1)
        if step % READ_EVERY == 0 or step == cfg.max_steps:  # read the losses back without a sync per step
            loss, kd, ce = _read_logs(pending, logs, state["loss_curve"])
            bar.set_postfix(loss=f"{loss:.4f}", kd=f"{kd:.4f}", ce=f"{ce:.3f}", lr=f"{lr:.2e}",
                            tok_s=f"{run_tokens / max(time.time() - run_start, 1e-9):,.0f}", refresh=False)
        if cfg.eval_every and step % cfg.eval_every == 0:
            ev = _evaluate(acc, model, teacher, data, cfg)
            state["history"].append({"step": step, "tokens_seen": tokens_seen, **ev})
            if main and cfg.progress:
                tqdm.write(f"step {step}: student ppl {ev['student_ppl']:.3f} (teacher {teacher_ppl:.3f}), "
                           f"held-out {cfg.loss} {ev['heldout_kd']:.4f}")
        if cfg.save_every and step % cfg.save_every == 0:
            _read_logs(pending, None, state["loss_curve"])
            state.update(step=step, tokens_seen=tokens_seen, train_time_s=run_start_time_s + time.time() - run_start)
            _save_checkpoint(acc, cfg, model, optimizer, state)
    bar.close()
    _read_logs(pending, None, state["loss_curve"])
    loop_end = time.time()
    train_time = run_start_time_s + loop_end - run_start
    state.update(step=step, tokens_seen=tokens_seen, train_time_s=train_time)
    if stopped_by_time and cfg.save_every:
        _save_checkpoint(acc, cfg, model, optimizer, state)

    final = _evaluate(acc, model, teacher, data, cfg)
    metrics = {
        "steps": step, "tokens_seen": tokens_seen, "train_time_s": round(train_time, 2),
        "tokens_per_s": round(run_tokens / max(train_time - run_start_time_s, 1e-9), 1),  # final eval excluded
        # the same past the first WARM_STEPS steps (compilation, allocator and cuDNN warm-up); None if too short
        "tokens_per_s_steady": round((run_tokens - warm[1]) / max(loop_end - warm[0], 1e-9), 1)
        if warm is not None and run_tokens > warm[1] else None,
        "stopped_by": "max_time" if stopped_by_time else "max_steps",
        "teacher_ppl": teacher_ppl, "initial_student_ppl": state["initial"]["student_ppl"],
        "student_ppl": final["student_ppl"], "ppl_ratio": final["student_ppl"] / teacher_ppl,
        "initial_heldout_kd": state["initial"]["heldout_kd"], "heldout_kd": final["heldout_kd"],
        "heldout_tokens": final["heldout_tokens"], "train_tokens_available": data.train_tokens,
        "student_params": n_student, "teacher_params": n_teacher, "kept_layers": kept,
        "num_processes": acc.num_processes, "device": str(acc.device),
        "parallel": "fsdp" if sharded else "ddp" if acc.num_processes > 1 else "none",  # none: one process
        "history": state["history"], "loss_curve": state["loss_curve"],
    }
    weights = acc.get_state_dict(model)
    output = Path(cfg.output)
    if main:
        if cfg.progress:
            tqdm.write(f"done: {step} steps, {tokens_seen:,} tokens, student ppl {final['student_ppl']:.3f} "
                       f"(teacher {teacher_ppl:.3f}, start {metrics['initial_student_ppl']:.3f})")
        _write_artifact(cfg, teacher_ref, acc.unwrap_model(model), weights, tokenizer, metrics,
                        time.time() - started, dtype)
        shutil.rmtree(cfg.ckpt_dir, ignore_errors=True)
    acc.wait_for_everyone()
    return DistillResult(output, metrics)


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch to the GPU without a stream sync (pinned, non-blocking), so the host can queue the next step."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def _read_logs(pending: list, last: torch.Tensor | None, curve: list) -> tuple[float, float, float]:
    """Move the pending loss-curve points to `curve` in one readback; return `last` as floats (if given)."""
    tensors = [t for _, t in pending] + ([last] if last is not None else [])
    if not tensors:
        return 0.0, 0.0, 0.0
    values = torch.stack(tensors).tolist()
    for (step, _), (loss, kd, ce) in zip(pending, values):
        curve.append([step, round(loss, 5), round(kd, 5), round(ce, 5)])
    pending.clear()
    return tuple(values[-1])


def _agree(acc, value: float) -> float:
    """Every process must stop (and schedule by time) on the same step: use process 0's clock."""
    if acc.num_processes == 1:
        return value
    t = torch.tensor([value], device=acc.device, dtype=torch.float64)
    torch.distributed.broadcast(t, 0)
    return t.item()


def _write_artifact(cfg, teacher_ref, model, weights, tokenizer, metrics, seconds, dtype) -> None:
    model.config.use_cache = True
    save_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    model.config.dtype = save_dtype
    state = _retied(model, {k: v.detach().to("cpu", save_dtype) for k, v in weights.items()})
    meta = ArtifactMeta(
        kind="distilled", method=cfg.loss if cfg.ce_weight < 1.0 else "ce",
        source=SourceInfo(spec=cfg.teacher, kind=teacher_ref.kind, sha256=models.fingerprint(teacher_ref)),
        config=cfg.model_dump(exclude={"progress"}), versions=runtime.library_versions(),
        time_taken_s=round(seconds, 2), created_at=now_iso(), metrics=metrics,
    )
    with atomic_dir(cfg.output, overwrite=cfg.overwrite) as tmp:
        model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        write_meta(tmp, meta)


# ---------------------------------------------------------------------------------------- processes

def _rank() -> int:
    return int(os.environ.get("RANK", 0))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg_json: str, err_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    if torch.cuda.is_available():
        torch.cuda.set_device(rank)
    else:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    cfg = DistillConfig.model_validate_json(cfg_json)
    try:
        result = _train(cfg)
    except CompressError as e:
        Path(err_dir, f"error-{rank}.txt").write_text(str(e))
        raise SystemExit(2)
    if rank == 0:
        Path(err_dir, "metrics.json").write_text(json.dumps(result.metrics))


def _launch(cfg: DistillConfig) -> DistillResult:
    """Run `_train` in cfg.num_processes fresh processes (spawned: CUDA cannot be forked)."""
    import torch.multiprocessing as mp

    if torch.cuda.is_available() and (cfg.device or "cuda").startswith("cuda") \
            and torch.cuda.device_count() < cfg.num_processes:
        raise CompressError(f"--num-processes {cfg.num_processes} needs as many GPUs; {torch.cuda.device_count()} visible")
    with tempfile.TemporaryDirectory(prefix="compress-distill-") as err_dir:
        try:
            mp.start_processes(_worker, args=(cfg.num_processes, _free_port(), cfg.model_dump_json(), err_dir),
                               nprocs=cfg.num_processes, join=True, start_method="spawn")
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            errors = sorted(Path(err_dir).glob("error-*.txt"))
            if errors:
                raise CompressError(errors[0].read_text()) from None
            raise RuntimeError(f"a distillation worker failed: {str(e).strip().splitlines()[-1]}") from None
        metrics = json.loads(Path(err_dir, "metrics.json").read_text())
    return DistillResult(Path(cfg.output), metrics)
