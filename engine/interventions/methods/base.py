"""The ablation-method registry: what ``Ablate(method=...)`` may name.

A method is an object with a ``replacement(ctx, x, mask)`` computation and a few declarations that the rest of
the engine reads instead of switching on method names:

* ``reference``: the reference data to prepare before hooks are installed: ``"means"`` (per position class),
  ``"activations"`` (full activations, e.g. for donors) or None.
* ``needs_reference``: an error without ``reference=`` (``mean``); ``resample`` uses one when given.
* ``needs_batch``: an error without the batch (anything that reads positions or example indices).
* ``any_shape``: with ``positions=None`` it also applies to activations whose shape is not the batch's
  (generation steps with a KV cache); ``zero`` only.

``replacement(ctx, x, mask)`` returns the tensor that replaces ``x`` ([n, T, d]: the site's activation, or a
decoder layer's contribution ``output - input`` for component ``layer``) at the edited positions; ``mask`` is
the [n, T, 1] bool mask of those positions (None: everywhere). ``ctx`` is the bound edit
(``engine.interventions.bound.Bound``): ``ctx.lm``, ``ctx.edit`` (the ``Ablate``), ``ctx.site``, ``ctx.batch``
(may be None unless ``needs_batch``) and ``ctx.reference`` (a ``Reference`` or None).

Register with ``register_method(name)`` as a class decorator (the class is instantiated once), or
``register_method(name, obj)`` with an instance, a ``Method`` subclass or a plain function
``fn(ctx, x, mask)`` (declarations then as keyword arguments). ``unregister_method(name)`` undoes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

from ..errors import InterventionError

REFERENCE_KINDS = ("means", "activations")

_REGISTRY: dict[str, "Method"] = {}


class Method:
    """Base class of ablation methods (module doc); subclasses override ``replacement``."""

    name: str = ""
    reference: str | None = None
    needs_reference: bool = False
    needs_batch: bool = True
    any_shape: bool = False
    description: str = ""

    def replacement(self, ctx, x, mask):
        raise NotImplementedError(f"ablation method {self.name!r} defines no replacement")

    def __repr__(self) -> str:
        return f"<ablation method {self.name!r}>"


class FunctionMethod(Method):
    """A method from a plain function ``fn(ctx, x, mask)``."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.description = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""

    def replacement(self, ctx, x, mask):
        return self.fn(ctx, x, mask)


def names() -> tuple[str, ...]:
    """The registered method names, in registration order (the built-ins first: zero, mean, resample, noise)."""
    return tuple(_REGISTRY)


def is_registered(name: str) -> bool:
    return isinstance(name, str) and name in _REGISTRY


def unknown_method_message(name) -> str:
    """The one-line error for a name that is not registered."""
    return f"unknown method {name!r}; registered methods: {', '.join(_REGISTRY)}"


def get_method(name: str) -> Method:
    """The registered method ``name``; ``InterventionError`` (one line, listing the registered names) if none."""
    if not is_registered(name):
        raise InterventionError(unknown_method_message(name))
    return _REGISTRY[name]


def _as_method(obj, attrs: dict) -> Method:
    if isinstance(obj, type) and issubclass(obj, Method):
        method = obj()
    elif isinstance(obj, Method):
        method = obj
    elif callable(obj) and not isinstance(obj, type):
        method = FunctionMethod(obj)
    else:
        raise InterventionError(f"register_method: {obj!r} is not a Method (subclass or instance) or a function "
                                "fn(ctx, x, mask)")
    for key, value in attrs.items():
        if not hasattr(Method, key) or key == "replacement":
            raise InterventionError(f"register_method: unknown declaration {key!r}")
        setattr(method, key, value)
    return method


def register_method(name: str, obj=None, *, replace: bool = False, **attrs):
    """Register an ablation method under ``name`` (module doc). Returns ``obj`` (so it works as a decorator).

    Raises ``InterventionError`` if ``name`` is taken (unless ``replace``) or a declaration is invalid.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise InterventionError(f"register_method: a method name must be a non-empty word, got {name!r}")

    def add(target):
        if name in _REGISTRY and not replace:
            raise InterventionError(f"register_method: {name!r} is already registered ({_REGISTRY[name]!r}); "
                                    "pass replace=True to override it")
        method = _as_method(target, attrs)
        if method.reference not in (None, *REFERENCE_KINDS):
            raise InterventionError(f"register_method({name!r}): reference must be None or one of "
                                    f"{REFERENCE_KINDS}, got {method.reference!r}")
        if method.needs_reference and method.reference is None:
            raise InterventionError(f"register_method({name!r}): needs_reference without a reference kind")
        method.name = name
        _REGISTRY[name] = method
        return target

    return add if obj is None else add(obj)


def unregister_method(name: str) -> Method:
    """Remove ``name`` from the registry; returns the method that was registered."""
    if name not in _REGISTRY:
        raise InterventionError(unknown_method_message(name))
    return _REGISTRY.pop(name)


class MethodNames(Sequence):
    """A live, read-only view of the registered names (``METHODS``): compares equal to the tuple ``names()``."""

    def __getitem__(self, index):
        return names()[index]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __contains__(self, name) -> bool:
        return is_registered(name)

    def __iter__(self):
        return iter(names())

    def __eq__(self, other) -> bool:
        if isinstance(other, (tuple, list, MethodNames)):
            return names() == tuple(other)
        return NotImplemented

    __hash__ = None  # a live view: its value changes with the registry

    def __repr__(self) -> str:
        return repr(names())


METHODS = MethodNames()
