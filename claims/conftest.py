"""Shared fixtures of the claim tests: real models loaded once per session.

``load_model(key, **kwargs) -> models.LoadedModel`` loads a registry model (or a local model directory) the
first time a (key, kwargs) pair is asked for and returns the same object afterwards; every model it loaded is
freed when the session ends (``load_model.release(key)`` frees one earlier, e.g. between the large models of a
multi-model gpu-tier claim). Weights that are not present here give ``pytest.skip("UNTESTED: ...")`` (the claims
plugin records it as an UNTESTED verdict with that reason). gpu-tier claim tests without CUDA or weights are
already UNTESTED before any fixture runs, so this path matters mainly for ``--allow-cpu-gpu-tier`` runs.
"""

from __future__ import annotations

import pytest

from engine import models


@pytest.fixture(scope="session")
def load_model():
    """A session-cached loader: ``load_model("smollm2-135m")``, ``load_model("gemma3-270m", quant="nf4")``."""
    loaded: dict[tuple, models.LoadedModel] = {}

    def _load(key: str, **kwargs) -> models.LoadedModel:
        cache_key = (key, tuple(sorted((name, repr(value)) for name, value in kwargs.items())))
        if cache_key not in loaded:
            present, why = models.availability(key)
            if not present:
                pytest.skip(f"UNTESTED: {why}")
            try:
                loaded[cache_key] = models.load(key, **kwargs)
            except models.ModelError as exc:
                pytest.skip(f"UNTESTED: {exc}")
        return loaded[cache_key]

    def release(key: str) -> None:
        """Free every cached load of ``key`` (a later ``load_model(key)`` loads it again)."""
        for cache_key in [k for k in loaded if k[0] == key]:
            models.free(loaded.pop(cache_key))

    _load.release = release
    yield _load
    for lm in loaded.values():
        models.free(lm)
    loaded.clear()
