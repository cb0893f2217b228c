"""Build the student: a layer subset of the teacher (optionally with a narrower MLP), or a given model.

Derived students follow Minitron's depth pruning: keep N of the teacher's decoder layers and copy every
kept weight. Which N (`layer_selection`):
- `greedy` (default, compress.distill.layer_choice): drop one layer at a time, each time the one whose
  removal raises the teacher's loss on a few calibration blocks of the training text the least
  (iterative pruning by measured perplexity). On SmolLM2-135M (30 → 15 layers)
  the untrained student's WikiText-2 perplexity starts orders of magnitude lower than with `even`
  (benchmarks/RESULTS.md): the best layers to drop are not evenly spaced.
- `even`: N evenly spaced layers, the first and the last always kept (DistilBERT's recipe).
For a narrower MLP, the intermediate channels with the largest weight norms are kept (Minitron's width
pruning, with weight norms standing in for activation statistics). Given students must share the
teacher's tokenizer.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from compress.errors import CompressError


def kept_layers(n_teacher: int, n_student: int) -> list[int]:
    """`n_student` evenly spaced indices in 0..n_teacher-1, first and last included."""
    if n_student > n_teacher:
        raise CompressError(f"--student-layers {n_student} is more than the teacher's {n_teacher} layers")
    if n_student == 1:
        return [n_teacher - 1]
    return sorted({int(i * (n_teacher - 1) / (n_student - 1) + 0.5) for i in range(n_student)})  # half-up


def _decoder_layers(model):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise CompressError(f"cannot derive a student from {type(model).__name__}: no model.layers "
                            "(pass --student with a model or config instead)")
    return layers


def derive_student(teacher, n_layers: int | None, intermediate_size: int | None, keep: list[int] | None = None,
                   state: dict[str, torch.Tensor] | None = None):
    """A new model (fp32, CPU) with the teacher's weights on the kept layers/channels: `keep` (default evenly
    spaced), copied from `state` (default the teacher's own state dict)."""
    config = copy.deepcopy(teacher.config)
    n_teacher = config.num_hidden_layers
    keep = sorted(keep) if keep is not None else kept_layers(n_teacher, n_layers or n_teacher)
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    src = {k: v.detach().float().cpu() for k, v in (state if state is not None else teacher.state_dict()).items()}
    state: dict[str, torch.Tensor] = {}
    prefix = "model.layers."
    for key, value in src.items():
        if not key.startswith(prefix):
            state[key] = value
            continue
        idx, rest = key[len(prefix):].split(".", 1)
        if int(idx) in keep:
            state[f"{prefix}{keep.index(int(idx))}.{rest}"] = value
    if intermediate_size is not None:
        old = getattr(config, "intermediate_size", None)
        if old is None:
            raise CompressError(f"{config.model_type} has no intermediate_size to narrow")
        if intermediate_size > old:
            raise CompressError(f"--student-intermediate-size {intermediate_size} is larger than the teacher's {old}")
        config.intermediate_size = intermediate_size
        for i in range(len(keep)):
            _narrow_mlp(state, f"{prefix}{i}.mlp.", intermediate_size)
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = student.load_state_dict(state, strict=False)
    # Tied embeddings show lm_head.weight as missing-but-tied; anything else is a bug.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise CompressError(f"cannot map teacher weights onto the student (missing {missing[:3]}, unexpected {unexpected[:3]})")
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student


def _narrow_mlp(state: dict[str, torch.Tensor], p: str, size: int) -> None:
    names = [f"{p}gate_proj.weight", f"{p}up_proj.weight", f"{p}down_proj.weight"]
    if not all(n in state for n in names):
        raise CompressError("--student-intermediate-size needs a gated MLP (gate_proj/up_proj/down_proj)")
    gate, up, down = (state[n] for n in names)  # [I, H], [I, H], [H, I]
    score = gate.norm(dim=1) * up.norm(dim=1) * down.norm(dim=0)  # [I]
    keep = score.topk(size).indices.sort().values
    state[names[0]], state[names[1]] = gate[keep].clone(), up[keep].clone()
    state[names[2]] = down[:, keep].clone()


def load_student(spec: str, teacher, teacher_tokenizer, seed: int):
    """A student from a checkpoint directory (its weights) or a config-only directory (random init)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from compress import models

    ref = models.resolve(spec)
    root = Path(models.checkpoint_dir(ref)) if ref.is_local else None
    has_weights = root is None or any(root.glob("*.safetensors")) or any(root.glob("*.bin"))
    try:
        if has_weights:
            student = AutoModelForCausalLM.from_pretrained(models.checkpoint_dir(ref), dtype=torch.float32)
        else:
            config = AutoConfig.from_pretrained(str(root))
            torch.manual_seed(seed)
            student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            student.generation_config = copy.deepcopy(teacher.generation_config)
    except CompressError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CompressError(f"cannot load student {spec}: {str(e).strip().splitlines()[0][:200]}") from e
    check_tokenizers(ref, root, teacher, teacher_tokenizer, student)
    return student


def check_tokenizers(ref, root: Path | None, teacher, teacher_tokenizer, student) -> None:
    """Distillation compares logits token by token: the two vocabularies must be the same."""
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    s_vocab = student.get_output_embeddings().weight.shape[0]
    if s_vocab != t_vocab:
        raise CompressError(f"student and teacher tokenizers differ: student vocab size {s_vocab}, teacher {t_vocab}")
    has_tok = root is None or any((root / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    if not has_tok:
        return  # a bare config: it adopts the teacher's tokenizer
    from compress import models

    s_tok = models.load_tokenizer(ref)
    if s_tok.get_vocab() != teacher_tokenizer.get_vocab():
        raise CompressError("student and teacher tokenizers differ (different vocabularies): distillation needs "
                            "the same tokenizer")


def check_not_larger(student, teacher) -> None:
    n_s, n_t = count_params(student), count_params(teacher)
    if n_s > n_t:
        raise CompressError(f"the student ({n_s / 1e6:.2f}M parameters) is larger than the teacher "
                            f"({n_t / 1e6:.2f}M): swap them or pick a smaller student")
    l_s, l_t = getattr(student.config, "num_hidden_layers", 0), getattr(teacher.config, "num_hidden_layers", 0)
    if l_s > l_t:
        raise CompressError(f"the student has more layers ({l_s}) than the teacher ({l_t})")


def count_params(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
