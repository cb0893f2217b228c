"""The `compress` command line: a thin layer over the library.

Each command lives in its own module here and does three things: parse options, call one library
function, print the result. Errors the user can fix (CompressError) become one line on stderr
and exit code 2; anything else is a bug, reported in one line with exit code 1
(COMPRESS_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console

from compress.errors import CompressError

app = typer.Typer(
    name="compress",
    help="Make LLMs cheaper and faster to serve: quantize, distill, evaluate, benchmark, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Make LLMs cheaper and faster to serve: quantize, distill, evaluate, benchmark, serve."""


def _register() -> None:
    # Imported for their side effect of adding a command to `app`.
    from compress.cli import bench, distill, eval, export, manifest, quantize, report, router, run, serve  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        app(args=argv, prog_name="compress")
    except CompressError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the CLI edge: a bug, still one line unless debugging
        if os.environ.get("COMPRESS_DEBUG"):
            raise
        text = (str(e).strip() or "").splitlines()
        err_console.print(f"[bold red]internal error:[/] {type(e).__name__}: {text[0] if text else ''} "
                          "(COMPRESS_DEBUG=1 shows the traceback)", highlight=False, soft_wrap=True)
        sys.exit(1)
