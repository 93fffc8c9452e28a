"""``source = "tiny"``: random-weight test models built in memory (see :mod:`engine.models.tiny_models`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import ModelSpec
from ..tiny_models import tiny
from .base import WeightSource, register_source

if TYPE_CHECKING:
    from ..loaded import LoadedModel


@register_source("tiny")
class TinySource(WeightSource):
    """No weights anywhere: ``build`` makes the model; ``resolve`` says there is nothing to resolve."""

    in_memory = True

    def identity(self, spec: ModelSpec) -> str:
        return self.build(spec).fingerprint

    def build(self, spec: ModelSpec) -> LoadedModel:
        return tiny(spec.arch, n_layers=spec.n_layers)

    def is_present(self, spec: ModelSpec) -> bool:
        return True

    def availability(self, spec: ModelSpec) -> tuple[bool, str]:
        return True, ""

    def describe(self, spec: ModelSpec) -> dict:
        return {"present": True, "where": "built in memory"}
