"""``source = "hf"``: the seed's models by Hugging Face id, never downloaded at run time.

They load only from a local directory (``MI_ATLAS_MODEL_DIR``, ``os.pathsep``-separated, or ``--model-dir``)
or from an offline Hugging Face cache (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelError
from ..registry import ModelSpec
from .base import WeightSource, register_source, safetensors_mb


def model_dirs() -> list[Path]:
    """Local directories searched for the seed's models (``MI_ATLAS_MODEL_DIR``, ``os.pathsep``-separated)."""
    raw = os.environ.get("MI_ATLAS_MODEL_DIR", "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p]


def _find_hf_weights(spec: ModelSpec) -> Path | None:
    """A directory with ``spec``'s config and safetensors: under ``model_dirs()`` or in the offline HF cache."""
    names = {spec.key, spec.hf_id.split("/")[-1], spec.hf_id.replace("/", "--")}
    for root in model_dirs():
        for name in names:
            candidate = root / name
            if (candidate / "config.json").is_file() and any(candidate.glob("*.safetensors")):
                return candidate
        if root.name in names and (root / "config.json").is_file():
            return root
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(spec.hf_id, local_files_only=True,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception:  # noqa: BLE001 - any failure means "not in the offline cache"
        return None
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path
    return None


def _hf_missing_reason(spec: ModelSpec) -> str:
    where = ", ".join(str(p) for p in model_dirs()) or "MI_ATLAS_MODEL_DIR unset"
    return (f"weights of {spec.key} ({spec.hf_id}) are not present: not in the local model directories "
            f"({where}) and not in the offline Hugging Face cache. Nothing is downloaded at run time: put the "
            f"model directory under MI_ATLAS_MODEL_DIR (or pass --model-dir) or pre-populate the HF cache.")


@register_source("hf")
class HfSource(WeightSource):
    """A Hugging Face model id, found in a local model directory or the offline HF cache."""

    def resolve(self, spec: ModelSpec, *, pull_if_missing: bool = True, verify: bool = False) -> Path:
        found = _find_hf_weights(spec)
        if found is None:
            raise ModelError(_hf_missing_reason(spec))
        return found

    def is_present(self, spec: ModelSpec) -> bool:
        return _find_hf_weights(spec) is not None

    def availability(self, spec: ModelSpec) -> tuple[bool, str]:
        found = _find_hf_weights(spec)
        return (True, "") if found else (False, _hf_missing_reason(spec))

    def pull(self, spec: ModelSpec, *, force: bool = False, progress: bool = True,
             gguf_file: str | Path | None = None) -> Path:
        raise ModelError(f"model {spec.key!r} is a gpu-tier Hugging Face model: it is never downloaded at run "
                         "time. " + _hf_missing_reason(spec))

    def describe(self, spec: ModelSpec) -> dict:
        found = _find_hf_weights(spec)
        if not found:
            return {"where": f"absent: {spec.hf_id} (local dir / offline HF cache)"}
        return {"present": True, "where": str(found), "size_mb": safetensors_mb(found)}
