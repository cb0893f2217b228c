"""The eval result file (`eval.json`, schema_version 1) and recovery ratios against a baseline.

Metrics are also kept flat (`metrics`: name → value, `higher_is_better`: name → bool) so gates,
reports and the recipe runner read one dict: `ppl:<source>`, `bpb:<source>` and `<task>:<metric>`.
Recovery follows llm-compressor's lm-eval gates: value / baseline for higher-is-better metrics and
baseline / value for lower-is-better ones (perplexity, bits per byte), so 1.0 means "as good as the
baseline" and below 1.0 means worse, whichever way the metric points.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from compress.errors import CompressError
from compress.formats import StrictModel as _Strict

SCHEMA_VERSION = 1


class ModelInfo(_Strict):
    spec: str
    kind: str  # dir | artifact | gguf | hub
    path: str
    method: str | None = None  # quantization method from the checkpoint's config, if any
    size_bytes: int | None = None  # weight files on disk (the .gguf file for a GGUF model)


class EvalSettings(_Strict):
    context_len: int
    stride: int
    max_tokens: int | None  # perplexity tokens per source (None: all)
    limit: int | None  # examples per task (None: all)
    batch_size: int
    num_fewshot: int | None
    device: str
    dtype: str
    seed: int


class PerplexityEntry(_Strict):
    source: str
    perplexity: float
    bits_per_byte: float
    nll_sum: float
    tokens_scored: int
    bytes_scored: int
    context_len: int
    stride: int


class TaskEntry(_Strict):
    metrics: dict[str, float]
    stderr: dict[str, float] = {}
    samples: int
    version: Any = None
    higher_is_better: dict[str, bool]


class BaselineInfo(_Strict):
    spec: str
    metrics: dict[str, float]


class EvalResult(_Strict):
    schema_version: int = SCHEMA_VERSION
    kind: Literal["eval"] = "eval"
    model: ModelInfo
    settings: EvalSettings
    perplexity: dict[str, PerplexityEntry] = {}
    tasks: dict[str, TaskEntry] = {}
    metrics: dict[str, float] = {}
    higher_is_better: dict[str, bool] = {}
    baseline: BaselineInfo | None = None
    recovery: dict[str, float] = {}
    versions: dict[str, str]
    hardware: dict[str, Any]
    created_at: str
    time_s: float

    def flatten(self) -> None:
        """Fill `metrics` / `higher_is_better` from the per-source and per-task entries."""
        for key, p in self.perplexity.items():
            self.metrics[f"ppl:{key}"] = p.perplexity
            self.metrics[f"bpb:{key}"] = p.bits_per_byte
            self.higher_is_better[f"ppl:{key}"] = False
            self.higher_is_better[f"bpb:{key}"] = False
        for task, t in self.tasks.items():
            for m, v in t.metrics.items():
                self.metrics[f"{task}:{m}"] = v
                self.higher_is_better[f"{task}:{m}"] = t.higher_is_better.get(m, True)


def recovery(metrics: dict[str, float], baseline: dict[str, float], higher_is_better: dict[str, bool]) -> dict[str, float]:
    """Per shared metric: value/baseline (higher is better) or baseline/value (lower is better)."""
    out = {}
    for name, value in metrics.items():
        base = baseline.get(name)
        if base is None:
            continue
        num, den = (value, base) if higher_is_better.get(name, True) else (base, value)
        out[name] = num / den if den else float("nan")
    return out


# Settings that change what a number means: two results compare only if these agree.
COMPARABLE_SETTINGS = ("context_len", "stride", "max_tokens", "limit", "num_fewshot")


def check_comparable(a: EvalSettings, b: EvalSettings, what: str) -> None:
    diff = [f"{k} {getattr(a, k)} vs {getattr(b, k)}" for k in COMPARABLE_SETTINGS if getattr(a, k) != getattr(b, k)]
    if diff:
        raise CompressError(f"{what} was measured with different settings ({'; '.join(diff)}): ratios would mislead")


def load_eval(path: str | Path) -> EvalResult:
    from compress.formats import read_versioned_json, validate

    return validate(EvalResult, read_versioned_json(path, "eval", "eval result", SCHEMA_VERSION), path)


def write_json_atomic(path: str | Path, data: dict) -> Path:
    """Write JSON to a temp file beside `path`, then rename: readers never see half a file."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
