"""lm-evaluation-harness tasks on an already-loaded model.

Tasks are looked up by name in lm_eval's registry (needs the hub for its datasets) and in local task
folders (`--task-dir`, default: the repository's `evals/`), which lm_eval reads as ordinary YAML task
definitions through `TaskManager(include_path=...)`. The loaded model is wrapped in lm_eval's own HFLM,
so scores are the harness's own, computed on exactly the weights `compress` loaded (GGUF, int8, GPTQ...).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from compress.errors import CompressError

# Aggregate metric keys lm_eval reports as "<metric>,<filter>"; these are the ones we keep.
_KEEP = ("acc", "acc_norm", "exact_match", "f1", "mcc", "word_perplexity", "byte_perplexity", "bits_per_byte")
LOWER_IS_BETTER = {"word_perplexity", "byte_perplexity", "bits_per_byte", "perplexity"}


def default_task_dir() -> Path | None:
    """The `evals/` folder shipped beside the package (a source checkout or an editable install)."""
    here = Path(__file__).resolve().parents[2] / "evals"
    return here if here.is_dir() else None


def task_manager(task_dir: str | Path | None):
    from lm_eval.tasks import TaskManager

    include = []
    for d in (default_task_dir(), task_dir):
        if d is None:
            continue
        d = Path(d).expanduser()
        if not d.is_dir():
            raise CompressError(f"task directory not found: {d}")
        include.append(str(d.resolve()))
    return TaskManager(include_path=include or None)


def local_tasks(task_dir: str | Path | None = None) -> list[str]:
    """Task names defined by the YAML files of the local task folders."""
    names = []
    for d in (default_task_dir(), task_dir):
        if d is not None and Path(d).is_dir():
            for f in sorted(Path(d).rglob("*.yaml")):
                m = re.search(r"^task:\s*(\S+)", f.read_text(), re.M)
                if m:
                    names.append(m.group(1))
    return names


def check_tasks(names: list[str], task_dir: str | Path | None):
    """Fail before loading any model when a task name is unknown; return the TaskManager."""
    tm = task_manager(task_dir)
    unknown = [n for n in names if n not in set(tm.all_tasks)]
    if unknown:
        raise CompressError(f"unknown task(s): {', '.join(unknown)} "
                            f"(local tasks: {', '.join(local_tasks(task_dir)) or 'none'})")
    return tm


def run_tasks(model, tokenizer, names: list[str], task_dir: str | Path | None = None, limit: int | None = None,
              batch_size: int = 8, num_fewshot: int | None = None, seed: int = 0) -> dict[str, dict]:
    """{task: {"metrics": {name: value}, "stderr": {name: value}, "samples": n, "version": v}}"""
    if not names:
        return {}
    from lm_eval.models.huggingface import HFLM

    return run_tasks_on(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), names, task_dir, limit,
                        num_fewshot, seed)


def run_tasks_on(lm, names: list[str], task_dir: str | Path | None = None, limit: int | None = None,
                 num_fewshot: int | None = None, seed: int = 0) -> dict[str, dict]:
    """The tasks on any lm_eval model object (HFLM on a loaded model, or an API model for an endpoint)."""
    from lm_eval import evaluator

    tm = check_tasks(names, task_dir)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    try:
        out = evaluator.simple_evaluate(
            model=lm, tasks=names, task_manager=tm, limit=limit, num_fewshot=num_fewshot,
            bootstrap_iters=1000, log_samples=False, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed,
        )
    except (FileNotFoundError, ConnectionError, OSError) as e:
        raise CompressError(f"lm_eval could not load the task data ({e.__class__.__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}); hub tasks need a network") from e
    results = {}
    for name in names:
        raw = out["results"].get(name, {})
        metrics, stderr = {}, {}
        for key, value in raw.items():
            metric, _, _filter = key.partition(",")
            if not isinstance(value, (int, float)):
                continue
            if metric.endswith("_stderr") and metric[: -len("_stderr")] in _KEEP:
                stderr[metric[: -len("_stderr")]] = float(value)
            elif metric in _KEEP:
                metrics[metric] = float(value)
        results[name] = {
            "metrics": metrics, "stderr": stderr,
            "samples": int(out.get("n-samples", {}).get(name, {}).get("effective", 0)),
            "version": out.get("versions", {}).get(name),
            "higher_is_better": {m: m not in LOWER_IS_BETTER for m in metrics},
        }
    return results
