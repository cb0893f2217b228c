"""`compress run` and `compress gate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from compress.cli import app, console


def gates_table(checks) -> Table:
    t = Table(title="gates")
    for col in ("tier", "rule", "metric", "limit", "value", "margin", "result"):
        t.add_column(col)
    for g in checks:
        t.add_row(g.tier, g.rule, g.metric, f"{g.limit:g}", f"{g.value:.4g}", f"{g.margin:+.4g}",
                  "[green]pass[/]" if g.passed else "[bold red]FAIL[/]")
    return t


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Results directory (default: the recipe's).")] = None,
    serve: Annotated[bool, typer.Option(help="Start `compress serve` on the manifest at the end.")] = False,
) -> None:
    """Run a recipe: build each tier, evaluate and benchmark it, write the manifest, report and gates."""
    from compress.pipeline import run_recipe
    from compress.recipe import load_recipe

    r = load_recipe(recipe)
    result = run_recipe(r, output, log=lambda msg: console.print(msg, highlight=False, markup=False))
    console.print(result.manifest.read_text(), highlight=False)
    if result.gates:
        console.print(gates_table(result.gates))
    console.print(f"manifest: {result.manifest}\nreport:   {result.report}\n"
                  f"gates:    {'all pass' if result.passed else 'FAILED'} ({len(result.gates)} checks)")
    if serve:
        from compress.cli.serve import serve as serve_cmd

        serve_cmd(manifest=result.manifest, **r.serve.model_dump(exclude_unset=True))
    if not result.passed:
        raise typer.Exit(1)


@app.command()
def gate(
    results: Annotated[Path, typer.Argument(help="Results directory written by `compress run`.")],
    recipe: Annotated[Path, typer.Option(help="The recipe whose gates apply.")],
) -> None:
    """Exit 0 when every gate passes, 1 when one fails (with a table of what failed by how much), 2 on bad input."""
    from compress.gate import check_gates
    from compress.recipe import load_recipe

    checks = check_gates(results, load_recipe(recipe))
    console.print(gates_table(checks))
    failed = [g for g in checks if not g.passed]
    console.print(f"{len(checks) - len(failed)}/{len(checks)} gates pass")
    if failed:
        raise typer.Exit(1)
