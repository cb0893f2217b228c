"""`compress router train`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compress.cli import app, console

router_app = typer.Typer(help="Learned routing for `model: auto`: train a router from per-request outcomes.",
                         no_args_is_help=True)
app.add_typer(router_app, name="router")


@router_app.callback()
def _router() -> None:
    """Learned routing for `model: auto`: train a router from per-request outcomes."""


@router_app.command()
def train(
    outcomes: Annotated[list[Path], typer.Argument(help='JSONL files of {"prompt", "tier", "correct"} rows (optional "max_tokens").')],
    output: Annotated[Path, typer.Option("--output", "-o", help="router.json to write.")],
    manifest: Annotated[Optional[Path], typer.Option(help="Check the outcome tiers against this manifest's tiers.")] = None,
    l2: Annotated[Optional[float], typer.Option(help="L2 penalty, as scikit-learn's 1/C (larger = predictions closer to each tier's success rate); default: chosen per tier by cross-validation.")] = None,
    hash_bits: Annotated[int, typer.Option(help="Hashed n-gram buckets: 2^N.")] = 14,
    folds: Annotated[int, typer.Option(help="Cross-validation folds for the held-out accuracy.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the cross-validation folds.")] = 0,
) -> None:
    """Train one classifier per tier (P(correct | prompt)) and write router.json; `compress manifest --router` uses it."""
    from compress.serve.learned import router_table, train_router_files, write_router

    router = train_router_files(outcomes, hash_bits=hash_bits, l2=l2, folds=folds, seed=seed, manifest=manifest)
    write_router(router, output)
    console.print(router_table(router))
    for name, m in router.tiers.items():
        if m.stats.constant:
            console.print(f"note: {name} was {'always' if m.stats.success_rate >= 0.5 else 'never'} right here: "
                          f"a constant prediction", highlight=False)
    console.print(f"wrote {output}")
