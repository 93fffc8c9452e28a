"""The ``mi-atlas`` typer app, its global options, ``version`` and ``main``; sub-commands live one module each
beside it.

Every command runs inside the CLI's one exception boundary (:class:`BoundaryGroup`, ``engine/cli/_boundary.py``): a
user error is one line ``error: ...`` on stderr and exit status 2; a bug keeps its traceback (``MI_ATLAS_DEBUG=1``:
user errors too).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console
from typer.core import TyperGroup

from engine import ENGINE_VERSION
from engine.cli._boundary import user_errors


class BoundaryGroup(TyperGroup):
    """The ``mi-atlas`` group: every sub-command runs inside the one exception boundary
    (:func:`engine.cli._boundary.user_errors`)."""

    def invoke(self, ctx):
        with user_errors():
            return super().invoke(ctx)


app = typer.Typer(cls=BoundaryGroup, help="MI-Atlas: verify mechanistic-interpretability claims on real small "
                  "language models.", no_args_is_help=True, add_completion=False)
console = Console(width=None if sys.stdout.isatty() else 160)


@app.callback()
def global_options(model_dir: str = typer.Option(None, "--model-dir", help="Directory holding local HF model "
                                                  "folders (the seed's models); same as MI_ATLAS_MODEL_DIR.")) -> None:
    if model_dir:
        os.environ["MI_ATLAS_MODEL_DIR"] = model_dir


@app.command()
def version() -> None:
    """Print the engine version."""
    console.print(ENGINE_VERSION)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mi-atlas ARGV`` (default: ``sys.argv[1:]``) in this process; returns the exit status (0 done, 1 a
    negative outcome such as a flipped verdict, 2 a user error: one line on stderr)."""
    try:
        typer.main.get_command(app).main(args=None if argv is None else list(argv), prog_name="mi-atlas")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        typer.echo(code, err=True)
        return 1
    return 0


def _register_subcommands() -> None:
    """Mount every command module of this package: each exposes ``register(app)``; adding one is adding a file."""
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name != "app" and not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}").register(app)


_register_subcommands()
