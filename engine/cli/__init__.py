"""The ``mi-atlas`` command line: a thin layer over the engine's functions (no logic of its own).

``app.py`` holds the typer app and its global options; every other module here is one command group and
exposes ``register(app)`` (mounted by ``app.py``): adding a command is adding a file.
"""

from engine.cli.app import app

__all__ = ["app"]
