"""`compress distill`."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from compress.cli import app, console


class Loss(str, Enum):
    fkl = "fkl"
    rkl = "rkl"
    jsd = "jsd"


class Parallel(str, Enum):
    ddp = "ddp"
    fsdp = "fsdp"


@app.command()
def distill(
    teacher: Annotated[str, typer.Argument(help="Teacher: checkpoint directory, hub id, .gguf file, or artifact.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Artifact directory to create.")],
    student_layers: Annotated[Optional[int], typer.Option(help="Derive the student: keep N of the teacher's layers (see --layer-selection).")] = None,
    layer_selection: Annotated[str, typer.Option(help="Derived student's layers: greedy (drop the least harmful layer, repeatedly, on training text) | greedy-screened (faster: each round scores its best few only on all the tokens) | even.")] = "greedy",
    layer_select_tokens: Annotated[Optional[int], typer.Option(help="Training tokens the greedy layer choice measures the loss on (default 2048; see train.CPU_SELECT_TOKENS).")] = None,
    layer_select_precision: Annotated[str, typer.Option(help="Precision of the greedy layer choice: auto (bf16 + torch.compile on a CPU with AMX: ~2.5x less CPU than bf16 eager, the same SmolLM2 30 -> 8 choice as fp32 in benchmarks/RESULTS.md; else the teacher's) | fp32 (the exact choice, as before) | bf16.")] = "auto",
    student_intermediate_size: Annotated[Optional[int], typer.Option(help="Derived student: narrower MLP (keeps the largest-norm channels).")] = None,
    freeze_embeddings: Annotated[bool, typer.Option(help="Do not train the student's input/output embeddings (keep the teacher's).")] = False,
    student: Annotated[Optional[str], typer.Option(help="Student model or config-only directory sharing the teacher's tokenizer.")] = None,
    data: Annotated[Optional[list[str]], typer.Option(help="Training text: .txt/.jsonl file or dir, dataset name, or 'builtin'. Repeatable.")] = None,
    loss: Annotated[Loss, typer.Option(help="fkl (forward KL) | rkl (reverse KL) | jsd (generalized JSD, --beta).")] = Loss.fkl,
    beta: Annotated[float, typer.Option(help="JSD interpolation: 0 = forward-KL-like, 1 = reverse-KL-like.")] = 0.5,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of both distributions (loss scaled by T^2).")] = 1.0,
    ce_weight: Annotated[float, typer.Option(help="Weight of cross-entropy on the data (1 - weight on the divergence).")] = 0.0,
    top_k: Annotated[Optional[int], typer.Option(help="Keep only the teacher's top-k logits (renormalised).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps (default 1000 unless --max-time is given).")] = None,
    max_time: Annotated[Optional[float], typer.Option(help="Stop after this many seconds of training (the schedule follows time if --max-steps is not given).")] = None,
    seq_len: Annotated[int, typer.Option(help="Tokens per packed sequence.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Sequences per process per micro-step.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Micro-steps per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 1e-4,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps before the cosine decay.")] = 20,
    eval_tokens: Annotated[int, typer.Option(help="Held-out tokens scored per validation.")] = 32768,
    eval_every: Annotated[int, typer.Option(help="Validate every N steps (0: only at start and end).")] = 0,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps (0: never) into OUTPUT.checkpoints.")] = 0,
    grad_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in backward to save memory.")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the forwards and the loss (faster on GPUs "
                                          "after a compile of ~1 min that counts towards --max-time).")] = False,
    num_processes: Annotated[int, typer.Option(help="Data-parallel processes (GPUs, or gloo on CPU).")] = 1,
    parallel: Annotated[Parallel, typer.Option(help="How the processes share the student: ddp (each holds all of it) | fsdp (FSDP2: weights, gradients and optimizer state sharded per decoder layer). One process trains unsharded either way.")] = Parallel.ddp,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint of the same run.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT and old checkpoints.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and data order.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
) -> None:
    """Distill TEACHER into a smaller student; write a standard Hugging Face checkpoint plus compress.json."""
    from compress.distill import distill as run
    from compress.distill import make_config

    if max_steps is None and max_time is None:
        max_steps = 1000
    cfg = make_config(
        teacher=teacher, output=str(output), student=student, student_layers=student_layers,
        student_intermediate_size=student_intermediate_size, layer_selection=layer_selection, layer_select_tokens=layer_select_tokens,
        layer_select_precision=layer_select_precision,
        freeze_embeddings=freeze_embeddings, data=data or ["builtin"], loss=loss.value, beta=beta,
        temperature=temperature, ce_weight=ce_weight, top_k=top_k, max_time=max_time, seq_len=seq_len,
        batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps, eval_every=eval_every, eval_tokens=eval_tokens,
        save_every=save_every, grad_checkpointing=grad_checkpointing, compile=compile, num_processes=num_processes, parallel=parallel.value,
        resume=resume,
        overwrite=overwrite, seed=seed, device=device, max_steps=max_steps,
    )
    result = run(cfg)
    if int(os.environ.get("RANK", 0)) != 0:  # under `accelerate launch` every process returns here; one reports
        return
    m = result.metrics
    console.print(f"student ppl {m['student_ppl']:.3f} (teacher {m['teacher_ppl']:.3f}, "
                  f"start {m['initial_student_ppl']:.3f}); {m['student_params'] / 1e6:.1f}M of "
                  f"{m['teacher_params'] / 1e6:.1f}M parameters; {m['steps']} steps, {m['tokens_seen']:,} tokens, "
                  f"{m['tokens_per_s']:,.0f} tok/s")
    console.print(f"wrote {result.output}")
