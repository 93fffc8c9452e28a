"""Ablation methods: one module per method, each registering itself with ``register_method`` (see ``base``).

The built-ins are ``zero``, ``mean``, ``resample`` and ``noise`` (registered in that order); any other module
in this package is imported after them (alphabetically), so adding a method is adding one file here, or
calling ``register_method`` from outside the engine. A method module here is imported while
``engine.interventions`` itself is still initialising: it imports from the sibling modules (``..batch``,
``..sites``, ``.base``), not from the package.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    METHODS,
    REFERENCE_KINDS,
    FunctionMethod,
    Method,
    MethodNames,
    get_method,
    is_registered,
    names,
    register_method,
    unknown_method_message,
    unregister_method,
)

_BUILTINS = ("zero", "mean", "resample", "noise")
_NOT_METHODS = {"base"}


def _load_method_modules() -> None:
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_METHODS)
    for name in (*_BUILTINS, *(n for n in found if n not in _BUILTINS)):
        importlib.import_module(f"{__name__}.{name}")


_load_method_modules()

__all__ = ["METHODS", "REFERENCE_KINDS", "FunctionMethod", "Method", "MethodNames", "get_method", "is_registered",
           "names", "register_method", "unknown_method_message", "unregister_method"]
