"""The task-family registry: every family of the suite is a registered :class:`Family`.

A family module defines its generators and registers a :class:`Family` subclass under the family's name::

    @register_family("arithmetic", scorer="numeric")
    class Arithmetic(Family):
        def synthetic(self, rng, split, state):   # one few-shot Item for the "short" or "long" split
            return gen_arithmetic(rng, split)

        def natural(self, rng, state):            # one natural-language Item
            return nl_arithmetic(rng)

The twelve built-in families live in :mod:`engine.tasks.families` (one module each); any lookup here
imports that package first, so they are always registered. The generator (:mod:`engine.tasks.generate`)
walks :data:`engine.tasks.FAMILIES`, the fixed canonical order, not the registry: registering another
family never changes the built-in suite, which stays byte for byte what ``fixtures/manifest.json``
records. A registered family is generated only when it is named (``build_suites(families=["toy"])``),
and the strict suite loader accepts its files while it is registered.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from engine.tasks.vocabulary import FAMILIES, SCORER_NAMES, SuiteError

if TYPE_CHECKING:
    import random

    from engine.tasks.families.base import Item

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_COUNT_KEYS = ("short", "long", "nl")


class Family:
    """A task family: how to draw one :class:`~engine.tasks.families.base.Item` of it.

    Subclass it, override :meth:`synthetic` and :meth:`natural`, and register the class with
    :func:`register_family`. Class attributes (or the decorator's keywords) describe the family:

    * ``scorer``: the scorer its items use when an :class:`Item` leaves ``scorer`` None (None: every item
      names its own, e.g. ``code_semantics`` mixes ``numeric`` and ``exact``);
    * ``stateful``: whether the generators keep something in ``state`` (one dict per fixture file, shared by
      all draws of that file, e.g. a cycle through the facts), so one file's items must be drawn in one
      sequential pass; stateless generators ignore ``state``;
    * ``counts``: default examples per split (``{"short": n, "long": n, "nl": n}``; a missing split is not
      generated) for a family outside the built-in suite, whose counts :mod:`engine.tasks.generate` fixes.

    Every draw must come from ``rng`` alone (and ``state``), so a family is deterministic under its seed.
    """

    name: str = ""
    scorer: str | None = None
    stateful: bool = False
    counts: Mapping[str, int] | None = None

    def synthetic(self, rng: random.Random, split: str, state: dict) -> Item:
        """One few-shot prompt for the synthetic suite's ``split`` (``"short"`` or ``"long"``)."""
        raise NotImplementedError(f"task family {self.name!r} has no synthetic generator")

    def natural(self, rng: random.Random, state: dict) -> Item:
        """One natural-language prompt (the ``nl`` suite)."""
        raise NotImplementedError(f"task family {self.name!r} has no natural-language generator")

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name!r} scorer={self.scorer!r} stateful={self.stateful}"
                f"{' builtin' if self.name in FAMILIES else ''}>")


_REGISTRY: dict[str, Family] = {}
_builtins_loaded = False
FamilyT = TypeVar("FamilyT", bound=type[Family])


def _load_builtins() -> None:
    """Import :mod:`engine.tasks.families` once (its modules register the built-in families)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True  # set first: the family modules call register_family while importing
        import engine.tasks.families  # noqa: F401


def register_family(name: str, *, scorer: str | None = None, stateful: bool | None = None,
                    counts: Mapping[str, int] | None = None) -> Callable[[FamilyT], FamilyT]:
    """Class decorator: register an instance of a :class:`Family` subclass as task family ``name``.

    ``scorer``/``stateful``/``counts`` override the class attributes of the same name. The name must be
    new (lower-case letters, digits, ``_``: it is used in fixture paths and example ids); a family is
    removed again with :func:`unregister_family`. Returns the class unchanged.
    """
    _load_builtins()
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"task family name {name!r}: use lower-case letters, digits and '_', starting "
                         "with a letter")

    def decorate(cls: FamilyT) -> FamilyT:
        if not (isinstance(cls, type) and issubclass(cls, Family)):
            raise TypeError(f"register_family({name!r}) decorates a Family subclass, got {cls!r}")
        family = cls()
        family.name = name
        if scorer is not None:
            family.scorer = scorer
        if stateful is not None:
            family.stateful = stateful
        if counts is not None:
            family.counts = dict(counts)
        if family.scorer is not None and family.scorer not in SCORER_NAMES:
            raise ValueError(f"task family {name!r}: scorer {family.scorer!r}; choose from "
                             f"{', '.join(SCORER_NAMES)}")
        if family.counts is not None:
            unknown = set(family.counts) - set(_COUNT_KEYS)
            if unknown:
                raise ValueError(f"task family {name!r}: counts for unknown split(s) {sorted(unknown)}; "
                                 f"splits are {', '.join(_COUNT_KEYS)}")
        if name in _REGISTRY:
            raise ValueError(f"task family {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = family
        return cls

    return decorate


def unregister_family(name: str) -> Family:
    """Remove a registered family and return it; the built-in families cannot be removed."""
    _load_builtins()
    if name in FAMILIES:
        raise ValueError(f"{name!r} is a built-in task family; it cannot be unregistered")
    if name not in _REGISTRY:
        raise SuiteError(f"no task family {name!r} is registered")
    return _REGISTRY.pop(name)


def get_family(name: str) -> Family:
    """The registered family ``name``; :class:`~engine.tasks.SuiteError` names the registered ones."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SuiteError(f"unknown task family {name!r}; registered: {', '.join(registered_families())}") from None


def is_registered(name: str) -> bool:
    _load_builtins()
    return name in _REGISTRY


def registered_families() -> tuple[str, ...]:
    """Every registered family name: the built-ins in :data:`~engine.tasks.FAMILIES` order, then the
    others in registration order."""
    _load_builtins()
    return tuple(f for f in FAMILIES if f in _REGISTRY) + tuple(f for f in _REGISTRY if f not in FAMILIES)
