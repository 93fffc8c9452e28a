"""The ``mi-atlas`` command line: a thin layer over the engine's functions (no logic of its own).

``app.py`` holds the typer app and its global options; every other module here is one command group and
exposes ``register(app)`` (mounted by ``app.py``): adding a command is adding a file. ``main(argv)`` runs the
command line in this process; every command runs inside ``app.py``'s one exception boundary (a user error: one line
on stderr, exit 2).
"""

from engine.cli.app import app, main

__all__ = ["app", "main"]
