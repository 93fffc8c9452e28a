"""Weight sources: one registered class per ``source = "..."`` kind in ``engine/data/models.toml``.

* ``pypi-gguf`` (:mod:`.pypi_gguf`, helpers in :mod:`.gguf_cache`): GGUF wheels -> verified safetensors cache.
* ``hf`` (:mod:`.hf`): Hugging Face ids, from local model directories or an offline HF cache only.
* ``local`` (:mod:`.local`): a Hugging Face model directory passed by path.
* ``tiny`` (:mod:`.tiny`): random-weight test models built in memory.

A new kind is a ``WeightSource`` subclass decorated with ``@register_source("kind")`` (see :mod:`.base`).
"""

from __future__ import annotations

from . import hf, local, pypi_gguf, tiny  # noqa: F401 - importing a module registers its source
from .base import SOURCES, WeightSource, register_source, source_for, unregister_source

__all__ = ["SOURCES", "WeightSource", "register_source", "source_for", "unregister_source"]
