"""A measurement a claim reads, declared once: the spec the planner shows and the run computes.

A spec (:class:`Spec`) names one measurement on one model (an atlas sweep, a skip sweep, a steering or a
quantisation study): ``spec.need`` is the planner's description of it (:class:`engine.planner.Need`: shared
between claims by identity), ``spec.measure(load_model)`` computes it through the content-addressed cache. Each
block defines its specs next to its measurements (``engine.studies.atlas.common.AtlasSpec`` ...); a claim's rule
names the specs it reads (``hub_specs(model, sizes)``) and decides on :func:`measure`'s results, so what the
planner plans is what the run measures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from engine import models
from engine.planner import Need

Loader = Callable[..., Any]


class Spec(Protocol):
    """One measurement a rule reads (see the module docstring)."""

    model: str

    @property
    def need(self) -> Need: ...

    def measure(self, load_model: Loader) -> Any: ...


class Measured(Mapping[str, Any]):
    """The results of a claim's specs by name, and the loader (a decision that reads a model property, e.g.
    whether its tokenizer adds BOS, loads it from the same process cache)."""

    def __init__(self, results: Mapping[str, Any], load_model: Loader):
        self._results = dict(results)
        self.load_model = load_model

    def __getitem__(self, name: str) -> Any:
        return self._results[name]

    def __iter__(self):
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)


def measure(specs: Mapping[str, Spec], load_model: Loader) -> Measured:
    """Every spec's result, model by model in the order the specs first name them; a gpu-tier model is released
    once its specs are measured when another model follows (one large model in memory at a time)."""
    order = list(dict.fromkeys(spec.model for spec in specs.values()))
    results: dict[str, Any] = {}
    for i, key in enumerate(order):
        for name, spec in specs.items():
            if spec.model == key:
                results[name] = spec.measure(load_model)
        release = getattr(load_model, "release", None)
        if release is not None and i < len(order) - 1 and key in models.REGISTRY \
                and models.spec_for(key).tier == "gpu":
            release(key)
    return Measured({name: results[name] for name in specs}, load_model)


def measure_on(lm, specs: Mapping[str, Spec]) -> Measured:
    """:func:`measure` with one loaded model (every spec must be about it): unit tests and the CLI."""
    wrong = [name for name, spec in specs.items() if spec.model != lm.key]
    if wrong:
        raise ValueError(f"measure_on({lm.key}): specs {wrong} are about other models")
    return measure(specs, lambda key, **kwargs: lm)
