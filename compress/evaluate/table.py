"""The rich table `compress eval` prints."""

from __future__ import annotations

from rich.table import Table

from compress.evaluate.results import EvalResult


def eval_table(result: EvalResult) -> Table:
    s = result.settings
    table = Table(title=f"{result.model.spec} ({result.model.method or 'unquantized'}, {s.device} {s.dtype}); "
                        f"perplexity window {s.context_len}, stride {s.stride}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("±", justify="right")
    table.add_column("better", justify="center")
    if result.baseline:
        table.add_column("baseline", justify="right")
        table.add_column("recovery", justify="right")
    for name, value in result.metrics.items():
        task, _, metric = name.rpartition(":")
        err = result.tasks[task].stderr.get(metric) if task in result.tasks else None
        row = [name, f"{value:.4f}", f"{err:.4f}" if err is not None else "",
               "↑" if result.higher_is_better.get(name, True) else "↓"]
        if result.baseline:
            base = result.baseline.metrics.get(name)
            rec = result.recovery.get(name)
            row += [f"{base:.4f}" if base is not None else "-", f"{rec:.3f}" if rec is not None else "-"]
        table.add_row(*row)
    return table
