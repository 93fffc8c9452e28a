"""Reads: ``capture`` the activations of sites on a clean forward (no edit), through ``sites.resolve``."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .batch import Batch
from .errors import InterventionError
from .sites import Captured, Site, resolve


@torch.no_grad()
def capture(lm, batch: Batch, sites: Sequence[Site]) -> dict[Site, Captured]:
    """Activations of ``sites`` on a clean forward of ``batch`` (values detached, on the model's device)."""
    store: dict[Site, Tensor] = {}
    handles = []
    try:
        for site in sites:
            hook = resolve(lm, site, f"capture {site.label()}")

            def read(*seen, hook=hook):
                store[hook.site] = hook.value(*seen)  # returns None: the forward is unchanged
            handles.append(hook.attach(read))
        lm.model(**batch.model_inputs())
    finally:
        for handle in handles:
            handle.remove()
    missing = [s.label() for s in sites if s not in store]
    if missing:
        raise InterventionError(f"capture: sites never reached: {missing}")
    return {s: Captured(s, store[s].detach(), batch) for s in sites}
