"""Edits: the dataclasses that read like the experiment (``Ablate``, ``AddVector``, ``Patch``) and the ``Trace``
of what installed edits did."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from torch import Tensor

from . import methods
from .batch import Positions
from .errors import InterventionError
from .sites import COMPONENTS, MODULE_NAMES, Captured, Site


@dataclass(frozen=True)
class Ablate:
    """Remove a component's activation at layer ``layer`` (``component``/``method`` as in the package doc).

    ``method`` is a registered ablation method (``engine.interventions.methods``). ``head`` is required for
    ``component="head"``, ``module`` (q, k, v, o, gate, up, down) for ``"module"``. ``seed`` seeds ``noise`` (per
    example, from the example's index) and nothing else.
    """

    component: str
    layer: int
    method: str = "zero"
    positions: Positions = None
    head: int | None = None
    module: str | None = None
    seed: int = 0

    def __post_init__(self):
        if self.component not in COMPONENTS:
            raise InterventionError(f"Ablate: unknown component {self.component!r}; choose from {COMPONENTS}")
        if not methods.is_registered(self.method):
            raise InterventionError(f"Ablate: {methods.unknown_method_message(self.method)}")
        if self.component == "head" and self.head is None:
            raise InterventionError("Ablate(component='head') needs head=<index>")
        if self.component == "module" and self.module not in MODULE_NAMES:
            raise InterventionError(f"Ablate(component='module') needs module= one of {MODULE_NAMES}")
        object.__setattr__(self, "positions", _freeze(self.positions))  # hashable; "all" -> None

    @property
    def site(self) -> Site:
        return Site(self.component, self.layer, self.head, self.module if self.component == "module" else None)


@dataclass(frozen=True, eq=False)
class AddVector:
    """Steering: the residual stream after layer ``layer`` += ``scale * vector`` (at ``positions``)."""

    layer: int
    vector: Tensor
    scale: float = 1.0
    positions: Positions = None

    def __post_init__(self):
        if self.vector.ndim != 1:
            raise InterventionError(f"AddVector: vector must be 1-D [d_model], got shape {tuple(self.vector.shape)}")
        object.__setattr__(self, "positions", _freeze(self.positions))

    @property
    def site(self) -> Site:
        return Site("resid", self.layer)


@dataclass(frozen=True, eq=False)
class Patch:
    """Replace a site's activation by ``source`` values (captured from another run, maybe another model).

    Example ``i`` of the receiving batch gets source example ``i``; positions are aligned by class (first
    token, answer) and by distance from the answer position (body), so prompts of different lengths patch
    sensibly.
    """

    component: str
    layer: int
    source: Captured
    positions: Positions = None
    head: int | None = None
    module: str | None = None

    def __post_init__(self):
        if self.component not in COMPONENTS:
            raise InterventionError(f"Patch: unknown component {self.component!r}; choose from {COMPONENTS}")
        object.__setattr__(self, "positions", _freeze(self.positions))

    @property
    def site(self) -> Site:
        return Site(self.component, self.layer, self.head, self.module if self.component == "module" else None)


Edit = Union[Ablate, AddVector, Patch]
EDIT_TYPES = (Ablate, AddVector, Patch)


def _freeze(positions):
    """Positions in canonical, hashable form: ``"all"`` becomes None, lists become tuples."""
    if positions is None or (isinstance(positions, str) and positions == "all"):
        return None
    if not isinstance(positions, (list, tuple)):
        return positions
    return tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in positions)


def describe(edit) -> str:
    """A short description of an edit for error messages."""
    if isinstance(edit, AddVector):
        return f"AddVector(layer={edit.layer}, scale={edit.scale}, positions={edit.positions!r})"
    return repr(edit) if not isinstance(edit, Patch) else f"Patch({edit.site.label()}, positions={edit.positions!r})"


@dataclass
class Trace:
    """What the installed edits did: per edit, whether it fired, how often, and whether it changed anything."""

    edits: tuple
    fired: list[bool] = field(default_factory=list)
    changed: list[bool] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)

    def __post_init__(self):
        k = len(self.edits)
        self.fired, self.changed, self.calls = [False] * k, [False] * k, [0] * k

    def record(self, index: int, changed: bool) -> None:
        self.fired[index] = True
        self.calls[index] += 1
        self.changed[index] = self.changed[index] or changed

    def check(self, require_change: bool = False) -> None:
        """Raise ``InterventionError`` if an edit never fired (or, with ``require_change``, changed nothing)."""
        for i, edit in enumerate(self.edits):
            if not self.fired[i]:
                raise InterventionError(f"intervention {describe(edit)} never fired: its hook was not reached "
                                        "(wrong layer/module, or no forward pass ran inside intervene)")
            if require_change and not self.changed[i]:
                raise InterventionError(f"intervention {describe(edit)} fired but left the activations unchanged")
