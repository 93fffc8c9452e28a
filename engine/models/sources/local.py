"""``source = "local"``: any Hugging Face model directory passed by path (``models.load("/path/to/dir")``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from ..registry import ModelSpec
from .base import WeightSource, register_source


@register_source("local")
class LocalSource(WeightSource):
    """The directory itself; its layer count is read from its config, not pinned by the registry."""

    pins_layer_count = False

    def resolve(self, spec: ModelSpec, *, pull_if_missing: bool = True, verify: bool = False) -> Path:
        return Path(spec.path)

    def is_present(self, spec: ModelSpec) -> bool:
        return True

    def availability(self, spec: ModelSpec) -> tuple[bool, str]:
        return True, ""

    def pull(self, spec: ModelSpec, *, force: bool = False, progress: bool = True,
             gguf_file: str | Path | None = None) -> Path:
        raise ModelError(f"model {spec.path!r} (source {spec.source}) has nothing to pull")

    def describe(self, spec: ModelSpec) -> dict:
        return {"present": True, "where": str(spec.path)}
