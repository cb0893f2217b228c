"""`evaluate(MODEL, EvalConfig)`: perplexity on text sources plus lm-eval tasks, on one loaded model.

Defaults live in EvalConfig. With no perplexity source and no task given, a model is measured on the
built-in Python docs text and on the local tasks in `evals/`, so `compress eval MODEL` is useful offline.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compress import runtime
from compress.artifacts import now_iso
from compress.data import load_texts
from compress.errors import CompressError
from compress.formats import validation_message
from compress.evaluate import harness
from compress.evaluate.perplexity import perplexity
from compress.evaluate.remote import parse_spec
from compress.evaluate.results import (
    BaselineInfo, EvalResult, EvalSettings, ModelInfo, PerplexityEntry, TaskEntry, check_comparable,
    load_eval, recovery,
)
from compress.models import ModelRef, checkpoint_dir, load_causal_lm, load_tokenizer, quant_method, resolve

EVAL_FILE = "eval.json"


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    perplexity: list[str] = []  # data specs (compress.data); [] and no tasks: ["builtin"]
    tasks: list[str] = []  # lm-eval task names; [] and no perplexity: every local task
    task_dir: str | None = None  # extra local task folder (evals/ is always included)
    limit: int | None = Field(None, ge=1)  # examples per task
    batch_size: int = Field(8, ge=1)
    num_fewshot: int | None = Field(None, ge=0)
    context_len: int = Field(1024, ge=2)
    stride: int | None = Field(None, ge=1)  # None: = context_len (disjoint windows, as in the GPTQ paper)
    max_tokens: int | None = Field(None, ge=2)  # perplexity tokens per source
    device: str | None = None
    seed: int = 0
    tokenizer: str | None = None  # URL#MODEL: the served model's tokenizer (local dir or hub id)
    max_length: int = Field(2048, ge=2)  # URL#MODEL: longest context lm-eval sends


def make_eval_config(**kwargs) -> EvalConfig:
    try:
        cfg = EvalConfig(**kwargs)
    except ValidationError as e:
        raise CompressError(f"invalid eval option {validation_message(e)}") from e
    if cfg.stride is not None and cfg.stride > cfg.context_len:
        raise CompressError(f"--stride ({cfg.stride}) must not exceed --context-len ({cfg.context_len})")
    if not cfg.perplexity and not cfg.tasks:
        cfg.perplexity = ["builtin"]
        cfg.tasks = harness.local_tasks(cfg.task_dir)
    return cfg


def default_output(model: str) -> Path:
    if parse_spec(model) is not None:
        raise CompressError(f"{model} is an endpoint: pass --output FILE.json")
    ref = resolve(model)
    if ref.kind in ("dir", "artifact"):
        return Path(ref.path) / EVAL_FILE
    raise CompressError(f"{ref.spec} is not a directory: pass --output FILE.json")


def source_key(spec: str) -> str:
    """Short name of a perplexity source for metric names (a file's name, else the spec)."""
    p = Path(spec).expanduser()
    return p.name if p.exists() else spec


def model_info(ref: ModelRef) -> ModelInfo:
    if ref.kind == "gguf":
        size = Path(ref.path).stat().st_size
    elif ref.is_local:
        size = sum(f.stat().st_size for f in Path(ref.path).glob("*") if f.suffix in (".safetensors", ".bin"))
    else:
        size = None
    method = quant_method(ref) if ref.is_local else None
    return ModelInfo(spec=ref.spec, kind=ref.kind, path=ref.path, method=method, size_bytes=size)


def evaluate(model: str, cfg: EvalConfig, baseline: str | None = None, progress: bool = True) -> EvalResult:
    """Measure MODEL (a local model, or `URL#MODEL`: an OpenAI-compatible endpoint); with `baseline`
    (a model or an eval JSON), add recovery ratios per metric."""
    if parse_spec(model) is None:
        resolve(model)
    elif cfg.tokenizer is None:
        raise CompressError(f"{model}: an endpoint needs --tokenizer (the served model's tokenizer)")
    # Everything that can fail cheaply fails before a model is loaded.
    texts = {source_key(s): load_texts(s) for s in cfg.perplexity}
    if cfg.tasks:
        harness.check_tasks(cfg.tasks, cfg.task_dir)
    base_result = None
    if baseline is not None and baseline.endswith(".json"):
        base_result = load_eval(baseline)
    elif baseline is not None and parse_spec(baseline) is None:
        resolve(baseline)
    result = _measure_spec(model, cfg, texts, progress)
    if baseline is not None:
        if base_result is None:
            base_result = _measure_spec(baseline, cfg, texts, progress)
        check_comparable(result.settings, base_result.settings, f"baseline {baseline}")
        result.baseline = BaselineInfo(spec=baseline, metrics=base_result.metrics)
        result.recovery = recovery(result.metrics, base_result.metrics, result.higher_is_better)
        if not result.recovery:
            raise CompressError(f"baseline {baseline} shares no metric with this evaluation")
    return result


def _measure_spec(spec: str, cfg: EvalConfig, texts: dict[str, list[str]], progress: bool) -> EvalResult:
    remote = parse_spec(spec)
    return _measure_remote(spec, *remote, cfg, texts, progress) if remote else _measure(resolve(spec), cfg, texts,
                                                                                      progress)


def _measure_remote(spec: str, url: str, model: str, cfg: EvalConfig, texts: dict[str, list[str]],
                    progress: bool) -> EvalResult:
    """The same measurements through an endpoint: the same windows, the same lm-eval tasks."""
    from compress.evaluate.remote import Endpoint, remote_perplexity, remote_tasks

    t0 = time.perf_counter()
    tok = load_tokenizer(cfg.tokenizer)
    stride = cfg.stride or cfg.context_len
    endpoint = Endpoint(url, model)
    try:
        ppl = {key: PerplexityEntry(source=key, **remote_perplexity(
                   endpoint, tok, docs, cfg.context_len, stride, cfg.max_tokens, progress).to_dict())
               for key, docs in texts.items()}
    finally:
        endpoint.close()
    tasks = remote_tasks(url, model, cfg.tokenizer, cfg.tasks, cfg.task_dir, cfg.limit, cfg.batch_size,
                         cfg.num_fewshot, cfg.seed, cfg.max_length)
    result = EvalResult(
        model=ModelInfo(spec=spec, kind="remote", path=url),
        settings=EvalSettings(context_len=cfg.context_len, stride=stride, max_tokens=cfg.max_tokens,
                              limit=cfg.limit, batch_size=cfg.batch_size, num_fewshot=cfg.num_fewshot,
                              device="remote", dtype="unknown", seed=cfg.seed),
        perplexity=ppl, tasks={k: TaskEntry(**v) for k, v in tasks.items()},
        versions=runtime.library_versions(), hardware=runtime.hardware(), created_at=now_iso(),
        time_s=round(time.perf_counter() - t0, 2),
    )
    result.flatten()
    return result


def _measure(ref: ModelRef, cfg: EvalConfig, texts: dict[str, list[str]], progress: bool) -> EvalResult:
    device = cfg.device or runtime.default_device()
    t0 = time.perf_counter()
    checkpoint_dir(ref)  # GGUF: convert (cached) before timing anything else
    model = load_causal_lm(ref, device=device)
    tok = load_tokenizer(ref)
    stride = cfg.stride or cfg.context_len
    ppl = {}
    for key, docs in texts.items():
        r = perplexity(model, tok, docs, context_len=cfg.context_len, stride=stride,
                       max_tokens=cfg.max_tokens, progress=progress)
        ppl[key] = PerplexityEntry(source=key, **r.to_dict())
    tasks = harness.run_tasks(model, tok, cfg.tasks, cfg.task_dir, cfg.limit, cfg.batch_size,
                              cfg.num_fewshot, cfg.seed)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    result = EvalResult(
        model=model_info(ref),
        settings=EvalSettings(context_len=cfg.context_len, stride=stride, max_tokens=cfg.max_tokens,
                              limit=cfg.limit, batch_size=cfg.batch_size, num_fewshot=cfg.num_fewshot,
                              device=device, dtype=dtype, seed=cfg.seed),
        perplexity=ppl, tasks={k: TaskEntry(**v) for k, v in tasks.items()},
        versions=runtime.library_versions(), hardware=runtime.hardware(), created_at=now_iso(),
        time_s=round(time.perf_counter() - t0, 2),
    )
    result.flatten()
    return result
