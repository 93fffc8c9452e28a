"""``resample``: the activation of another example at the aligned position.

Without a reference: a cyclic shift of the batch (row i takes row i + 1). With one: example ``g`` takes
reference example ``(g + reference.shift) % n_ref``.
"""

from __future__ import annotations

import torch

from ..batch import aligned_gather
from ..sites import Captured
from .base import Method, register_method


@register_method("resample")
class Resample(Method):
    description = "another example's activation at the aligned position"
    reference = "activations"

    def replacement(self, ctx, x, mask):
        if ctx.reference is None:  # cyclic shift within the batch
            n = x.shape[0]
            rows = (torch.arange(n) + 1) % n
            donor = Captured(ctx.site, x.detach(), ctx.batch)
        else:
            donor = ctx.reference.activations(ctx.lm, ctx.site)
            rows = (ctx.batch.index + ctx.reference.shift) % len(donor.batch)
        return aligned_gather(ctx.batch, donor.batch, donor.values, rows).to(device=x.device, dtype=x.dtype)
