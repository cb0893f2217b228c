"""The distillation config: one pydantic model holding every default, and the run hash for --resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.errors import CompressError

# Fields that do not change the training trajectory: a run may be resumed with different values.
NOT_HASHED = {"output", "checkpoint_dir", "resume", "overwrite", "eval_every", "eval_tokens", "save_every",
              "max_time", "progress", "device", "compile"}


class DistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: str
    output: str
    # Student: either derived from the teacher (keep `student_layers` of its layers, optionally a narrower
    # MLP) or any model/config directory sharing the tokenizer.
    student: str | None = None
    student_layers: int | None = Field(default=None, ge=1)
    student_intermediate_size: int | None = Field(default=None, ge=1)
    # Which teacher layers a derived student keeps (compress.distill.student): greedy = drop the layer that
    # hurts the teacher's loss least on `layer_select_tokens` of training text, repeatedly; even = spaced.
    # (None: train.GPU_SELECT_TOKENS or CPU_SELECT_TOKENS, see train.layer_select_blocks.) greedy-screened:
    # greedy with a cheap screen of each round's candidates (train.layer_select_screen), exact only when the
    # winner survives it.
    layer_selection: Literal["greedy", "greedy-screened", "even"] = "greedy"
    layer_select_tokens: int | None = Field(default=None, ge=8)
    # Precision of the greedy choice's forwards (train.layer_select_dtype): auto = bf16 on a CPU with AMX
    # (oneDNN's bf16 matmuls, and the layers through torch.compile: train.layer_select_compile; the same
    # 30 -> 8 choice as fp32 on SmolLM2, benchmarks/RESULTS.md), else the teacher's; fp32 = the exact choice
    # in the teacher's fp32 everywhere; bf16 = bf16 everywhere, eager.
    layer_select_precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Keep the student's input and output embeddings as initialised (the teacher's, for a derived
    # student): fewer trained parameters, and only the decoder layers differ from the teacher's.
    freeze_embeddings: bool = False
    data: list[str] = ["builtin"]
    heldout_fraction: float = Field(default=0.05, gt=0, lt=1)
    eval_tokens: int = Field(default=32_768, ge=1)  # held-out tokens scored per validation
    loss: Literal["fkl", "rkl", "jsd"] = "fkl"
    beta: float = Field(default=0.5, ge=0, le=1)  # jsd only: 0 = forward-KL-like, 1 = reverse-KL-like
    temperature: float = Field(default=1.0, gt=0)
    ce_weight: float = Field(default=0.0, ge=0, le=1)  # 1.0 = plain cross-entropy training, no teacher
    top_k: int | None = Field(default=None, ge=1)
    max_steps: int | None = Field(default=1000, ge=1)  # optimizer steps; None = until max_time
    max_time: float | None = Field(default=None, gt=0)  # seconds of training; stops early (checkpoints first)
    seq_len: int = Field(default=512, ge=8)
    batch_size: int = Field(default=8, ge=1)  # sequences per process per micro-step
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=20, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = Field(default=1.0, gt=0)
    eval_every: int = Field(default=0, ge=0)  # 0: validate only at the start and the end
    save_every: int = Field(default=0, ge=0)  # 0: no intermediate checkpoints
    grad_checkpointing: bool = False
    # torch.compile the student and teacher forwards and the loss (fused kernels instead of a dozen
    # full-vocabulary fp32 tensors per step). Same trajectory up to kernel rounding, so not hashed:
    # a run may be resumed with or without it. The first steps pay the compile time.
    compile: bool = False
    num_processes: int = Field(default=1, ge=1)
    # How N processes share the student (train.py): ddp = each holds all of it and gradients are averaged;
    # fsdp = FSDP2, weights, gradients and optimizer state sharded per decoder layer. One process: unsharded.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    seed: int = 0
    checkpoint_dir: str | None = None  # default: OUTPUT.checkpoints beside OUTPUT
    resume: bool = False
    overwrite: bool = False
    device: str | None = None  # cpu / cuda; default cuda when available
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> "DistillConfig":
        if self.student is not None and (self.student_layers or self.student_intermediate_size):
            raise ValueError("give either --student or --student-layers/--student-intermediate-size, not both")
        if self.max_steps is None and self.max_time is None:
            raise ValueError("give --max-steps or --max-time")
        if not self.data:
            raise ValueError("no --data given")
        return self

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(f"{self.output}.checkpoints")

    @property
    def time_scheduled(self) -> bool:
        """Without --max-steps the LR schedule follows elapsed time / max_time."""
        return self.max_steps is None

    def run_hash(self) -> str:
        """Identifies the trajectory: everything that changes which weights a step produces."""
        fields = {k: v for k, v in self.model_dump().items() if k not in NOT_HASHED}
        if fields["parallel"] == "ddp":  # added later: ddp runs keep the hash (and the checkpoints) they had
            del fields["parallel"]
        if fields["layer_select_precision"] == "auto":  # added later: the hash of earlier runs stays
            del fields["layer_select_precision"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def make_config(**kwargs) -> DistillConfig:
    """Build a config, turning validation errors into one CompressError line."""
    from pydantic import ValidationError

    try:
        return DistillConfig(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        raise CompressError(f"{where}: {msg}" if where else msg) from e
