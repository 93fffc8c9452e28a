"""Shared fixtures of the claim tests: real models loaded once per session.

``load_model(key, **kwargs) -> models.LoadedModel`` loads a registry model (or a local model directory) the
first time a (key, kwargs) pair is asked for and returns the same object afterwards: it is the process's model
cache, ``engine.models.shared`` (unbounded here), which executor workers and atlas jobs use too. Every cached
model is freed when the session ends (``load_model.release(key)``, i.e. ``models.release(key)``, frees one
earlier, e.g. between the large models of a multi-model gpu-tier claim). Weights that are not present here give
``pytest.skip("UNTESTED: ...")`` (the claims plugin records it as an UNTESTED verdict with that reason). gpu-tier
claim tests without CUDA or weights are already UNTESTED before any fixture runs, so this path matters mainly
for ``--allow-cpu-gpu-tier`` runs.
"""

from __future__ import annotations

import pytest

from engine import models


@pytest.fixture(scope="session")
def load_model():
    """A session-cached loader: ``load_model("smollm2-135m")``, ``load_model("gemma3-270m", quant="nf4")``."""

    def _load(key: str, **kwargs) -> models.LoadedModel:
        if not models.holds(key, **kwargs):
            present, why = models.availability(key)
            if not present:
                pytest.skip(f"UNTESTED: {why}")
        try:
            return models.shared(key, **kwargs)
        except models.ModelError as exc:
            pytest.skip(f"UNTESTED: {exc}")

    _load.release = models.release
    yield _load
    models.release()
