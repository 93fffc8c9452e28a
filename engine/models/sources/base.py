"""The weight-source interface and its registry.

A ``ModelSpec``'s ``source`` names the kind of place its weights come from. Each kind is one
:class:`WeightSource` subclass registered with ``@register_source("kind")``; the model layer never switches on
``spec.source`` but asks ``source_for(spec)``. A source answers: where the loadable weights are (``resolve``),
whether they are here (``is_present`` / ``availability``), how to get them (``pull``) and a listing row
(``describe``). Sources that build a model in memory instead (random test models) override ``build``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from ..errors import ModelError
from ..integrity import identity
from ..registry import ModelSpec

if TYPE_CHECKING:
    from ..loaded import LoadedModel


class WeightSource:
    """One kind of weight source. The defaults derive everything from ``resolve``; subclasses refine them."""

    kind: str = ""
    #: whether the registry's ``n_layers`` must match the loaded weights (false for ad-hoc local directories)
    pins_layer_count: bool = True
    #: whether ``resolve`` itself checks the directory's identity (with a full hash when ``verify``), so loading
    #: need not hash it a second time
    verifies_identity: bool = False

    #: whether the model is built in memory (``build``) rather than loaded from checkpoint files: such a model
    #: has no files to quantise
    in_memory: bool = False

    def identity(self, spec: ModelSpec) -> str:
        """The model's identity without loading it (what :attr:`LoadedModel.fingerprint` will be)."""
        return identity(self.resolve(spec))

    def build(self, spec: ModelSpec) -> LoadedModel | None:
        """A model built in memory without any weights on disk, or None to load ``resolve``'s directory."""
        return None

    def resolve(self, spec: ModelSpec, *, pull_if_missing: bool = True, verify: bool = False) -> Path:
        """Directory holding loadable safetensors weights for ``spec``, or a ModelError saying what to do."""
        raise ModelError(f"model {spec.key!r}: source {spec.source!r} has no weights to resolve")

    def is_present(self, spec: ModelSpec) -> bool:
        """Whether the weights are usable here now, without fetching or converting anything."""
        try:
            self.resolve(spec, pull_if_missing=False)
        except ModelError:
            return False
        return True

    def availability(self, spec: ModelSpec) -> tuple[bool, str]:
        """``(usable without a download, why not / what a first use will do)``."""
        try:
            self.resolve(spec, pull_if_missing=False)
        except ModelError as exc:
            return False, str(exc)
        return True, ""

    def pull(self, spec: ModelSpec, *, force: bool = False, progress: bool = True,
             gguf_file: str | Path | None = None) -> Path:
        """Fetch the weights into the local cache and return their directory."""
        raise ModelError(f"model {spec.key!r} (source {spec.source}) has nothing to pull")

    def way_out(self, spec: ModelSpec, directory: Path) -> str:
        """What to tell a user whose ``directory`` transformers could not load."""
        return (f"check that {directory} is a complete Hugging Face model directory (config.json, *.safetensors "
                "weights, tokenizer files) that transformers can load")

    def describe(self, spec: ModelSpec) -> dict:
        """The ``present`` / ``size_mb`` / ``where`` fields of a ``models.describe()`` row."""
        try:
            found = self.resolve(spec, pull_if_missing=False)
        except ModelError as exc:
            return {"present": False, "where": f"absent: {exc}"}
        return {"present": True, "where": str(found), "size_mb": safetensors_mb(found)}


def safetensors_mb(directory: Path) -> float:
    """Total size of a directory's ``*.safetensors`` files in MiB, rounded to 0.1."""
    return round(sum(f.stat().st_size for f in directory.glob("*.safetensors")) / 2**20, 1)


SOURCES: dict[str, WeightSource] = {}

_S = TypeVar("_S", bound=type[WeightSource])


def register_source(kind: str) -> Callable[[_S], _S]:
    """Class decorator: ``@register_source("kind")`` registers one instance of the class for ``source = "kind"``."""

    def decorate(cls: _S) -> _S:
        if kind in SOURCES:
            raise ValueError(f"weight source {kind!r} is already registered ({type(SOURCES[kind]).__name__})")
        cls.kind = kind
        SOURCES[kind] = cls()
        return cls

    return decorate


def unregister_source(kind: str) -> WeightSource | None:
    """Remove (and return) the source registered for ``kind``, if any."""
    return SOURCES.pop(kind, None)


def source_for(spec: ModelSpec) -> WeightSource:
    """The registered source for ``spec.source``, or a ModelError naming the kind and the registered ones."""
    try:
        return SOURCES[spec.source]
    except KeyError:
        raise ModelError(
            f"model {spec.key!r}: unknown weight source {spec.source!r} "
            f"(registered: {', '.join(sorted(SOURCES))}); register one with engine.models.register_source"
        ) from None
