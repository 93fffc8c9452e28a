"""The ``mi-atlas`` command line's one exception boundary (:func:`user_errors`, around every command by
``engine.cli.app.BoundaryGroup``).

An error a user can cause (a bad or over-long argument, a missing, unreadable or read-only file, a malformed data
file, an unreachable service: ``OSError``, ``ValueError``, ``RecursionError``, ``MemoryError`` and the engine's own
error classes) is ONE line ``error: ...`` on stderr and exit status 2. Anything else is a bug and keeps its
traceback; ``MI_ATLAS_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys

import typer

DEBUG_ENV = "MI_ATLAS_DEBUG"
EXIT_USER_ERROR = 2
# The engine's user-error classes, by module and name: looked up in sys.modules when an error reaches the boundary
# (an exception of a module that was never imported cannot have been raised), so the CLI imports no heavy module
# (torch) to know them.
USER_ERROR_CLASSES = (
    ("engine.models.errors", "ModelError"), ("engine.interventions.errors", "InterventionError"),
    ("engine.cache", "CacheError"), ("engine.quant", "QuantError"), ("engine.devices", "DeviceError"),
    ("engine.lora.adapters", "LoraError"),
)
MAX_WORD = 200  # a longer run of non-blank characters (a 5,000-character argument) is shortened in the error line


def debug() -> bool:
    """``$MI_ATLAS_DEBUG`` set (not empty, not 0): user errors show their traceback too."""
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def is_user_error(exc: BaseException) -> bool:
    """An error the user can cause and fix (reported as one line), not a bug (reported with its traceback)."""
    if isinstance(exc, BrokenPipeError):  # `mi-atlas report | head`: click's own quiet exit
        return False
    if isinstance(exc, (OSError, ValueError, RecursionError, MemoryError)):
        return True
    for module, name in USER_ERROR_CLASSES:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _shorten(word: re.Match) -> str:
    text = word.group(0)
    return f"{text[:60]}...[{len(text):,} characters]...{text[-20:]}"


def one_line(exc: BaseException) -> str:
    """The error as one line: its message with line breaks folded, over-long words shortened, an ``OSError``
    as ``PATH: reason``, and an out-of-memory or too-deep input named as such."""
    if isinstance(exc, RecursionError):
        text = f"input nested too deeply to read ({exc})"
    elif isinstance(exc, MemoryError):
        text = f"out of memory{f' ({exc})' if str(exc) else ''}: the input asks for more than this machine has"
    elif isinstance(exc, OSError) and exc.strerror and exc.filename is not None and str(exc).startswith("[Errno"):
        text = f"{exc.filename}: {exc.strerror}" + (f" (-> {exc.filename2})" if exc.filename2 is not None else "")
    else:
        text = str(exc).strip() or type(exc).__name__
        if isinstance(exc, KeyError) and exc.args:
            text = f"missing key {exc.args[0]!r}"
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return re.sub(rf"\S{{{MAX_WORD + 1},}}", _shorten, text)


def report_user_error(exc: BaseException) -> None:
    """Print the boundary's one line for ``exc`` on stderr."""
    typer.echo(f"error: {one_line(exc)}", err=True)


@contextlib.contextmanager
def user_errors():
    """The boundary: a user error raised in the body is printed as one line on stderr and ends the command with
    exit status 2 (``typer.Exit``); typer's own exits and usage errors, and bugs, pass through unchanged."""
    try:
        yield
    except Exception as exc:
        if _cli_control(exc) or debug() or not is_user_error(exc):
            raise
        report_user_error(exc)
        raise typer.Exit(EXIT_USER_ERROR) from None


def _cli_control(exc: BaseException) -> bool:
    """An exit, an abort or a usage error of typer / click (typer may vendor click): theirs to report."""
    return any(cls.__module__.split(".")[0] in ("typer", "click") for cls in type(exc).__mro__)
