"""``noise``: Gaussian noise with the activation's own standard deviation *replaces* the activation (so it erases
like the other methods). Seeded per example from ``Ablate.seed``, the example's index and the site."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from .base import Method, register_method


@register_method("noise")
class Noise(Method):
    description = "Gaussian noise at the activation's standard deviation"

    def replacement(self, ctx, x, mask):
        return matched_noise(x, mask, ctx.batch, ctx.edit.seed, ctx.site)


def matched_noise(x: Tensor, mask: Tensor | None, batch, seed: int, site) -> Tensor:
    """Gaussian noise with each example's activation std (over the edited positions), seeded per example."""
    n, T, d = x.shape
    out = torch.zeros_like(x)
    for i in range(n):
        sel = x[i][mask[i, :, 0]] if mask is not None else x[i]
        sigma = sel.float().std(unbiased=False) if sel.numel() > 1 else sel.float().abs().mean()
        start = int(batch.start[i])
        key = f"{seed}|{int(batch.index[i])}|{site.label()}".encode()
        gen = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)
        z = torch.randn(T - start, d, generator=gen)
        out[i, start:] = (sigma.cpu() * z).to(device=x.device, dtype=x.dtype)
    return out
