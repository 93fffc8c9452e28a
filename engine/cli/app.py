"""The ``mi-atlas`` typer app, its global options and ``version``; sub-commands live one module each beside it."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from pathlib import Path

import typer
from rich.console import Console

from engine import ENGINE_VERSION

app = typer.Typer(help="MI-Atlas: verify mechanistic-interpretability claims on real small language models.",
                  no_args_is_help=True, add_completion=False)
console = Console(width=None if sys.stdout.isatty() else 160)


@app.callback()
def main(model_dir: str = typer.Option(None, "--model-dir", help="Directory holding local HF model folders "
                                        "(the seed's models); same as MI_ATLAS_MODEL_DIR.")) -> None:
    if model_dir:
        os.environ["MI_ATLAS_MODEL_DIR"] = model_dir


@app.command()
def version() -> None:
    """Print the engine version."""
    console.print(ENGINE_VERSION)


def _register_subcommands() -> None:
    """Mount every command module of this package: each exposes ``register(app)``; adding one is adding a file."""
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name != "app":
            importlib.import_module(f"{__package__}.{info.name}").register(app)


_register_subcommands()
