"""A loaded model and the runtime it lives in: :class:`LoadedModel`, default device and dtype, seeding, freeing."""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .adapters import ArchAdapter
from .registry import ModelSpec


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    spec: ModelSpec
    n_layers: int
    d_model: int
    arch: str
    dtype: torch.dtype
    device: torch.device
    fingerprint: str
    adapter: ArchAdapter
    quant: str | None = None
    load_seconds: float = 0.0
    config: object = None  # the transformers config (also when loaded without weights: ``model`` is then None)

    @property
    def key(self) -> str:
        return self.spec.key

    def layers(self) -> list[nn.Module]:
        return self.adapter.layers(self.model)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def free(loaded: LoadedModel | None) -> None:
    """Release a model's memory (CPU and CUDA) before loading the next one."""
    if loaded is None:
        return
    loaded.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
