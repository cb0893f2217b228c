"""`compress eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compress.cli import app, console


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="Model: checkpoint directory, artifact, .gguf file, hub id, or URL#MODEL (an OpenAI-compatible endpoint, e.g. http://host:8000/v1#tier; key from OPENAI_API_KEY).")],
    perplexity: Annotated[Optional[list[str]], typer.Option(
        "--perplexity", help="Text for perplexity: .txt/.jsonl file or dir, dataset name, or 'builtin'. Repeatable.")] = None,
    tasks: Annotated[Optional[str], typer.Option(help="lm-eval task names, comma-separated (local evals/ tasks or registered ones).")] = None,
    task_dir: Annotated[Optional[Path], typer.Option(help="Extra folder of lm-eval YAML task definitions.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Examples per task (default: all).")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size for lm-eval requests.")] = 8,
    num_fewshot: Annotated[Optional[int], typer.Option(help="Few-shot examples per task (default: the task's own).")] = None,
    context_len: Annotated[int, typer.Option(help="Perplexity window, tokens.")] = 1024,
    stride: Annotated[Optional[int], typer.Option(help="Perplexity window step (default: = context length, disjoint windows).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Perplexity tokens per source (default: all).")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="Baseline model or eval JSON: adds recovery ratios.")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Result JSON (default: MODEL/eval.json for a directory).")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="URL#MODEL only: the served model's tokenizer (directory or hub id).")] = None,
    max_length: Annotated[int, typer.Option(help="URL#MODEL only: longest context lm-eval sends, tokens.")] = 2048,
) -> None:
    """Measure MODEL's quality: sliding-window perplexity + bits per byte, and lm-eval tasks."""
    from compress.evaluate.results import write_json_atomic
    from compress.evaluate.run import default_output, evaluate, make_eval_config
    from compress.evaluate.table import eval_table

    cfg = make_eval_config(
        perplexity=perplexity or [], tasks=[t.strip() for t in (tasks or "").split(",") if t.strip()],
        task_dir=str(task_dir) if task_dir else None, limit=limit, batch_size=batch_size, num_fewshot=num_fewshot,
        context_len=context_len, stride=stride, max_tokens=max_tokens, device=device, tokenizer=tokenizer,
        max_length=max_length,
    )
    out = output or default_output(model)
    result = evaluate(model, cfg, baseline=baseline)
    write_json_atomic(out, result.model_dump(mode="json"))
    console.print(eval_table(result))
    console.print(f"wrote {out}")
