"""``mean``: the mean of the same site over a reference sample, per position class (first token / body / answer)."""

from __future__ import annotations

from .base import Method, register_method


@register_method("mean")
class Mean(Method):
    description = "per-position-class mean over the reference sample"
    reference = "means"
    needs_reference = True

    def replacement(self, ctx, x, mask):
        means = ctx.reference.means(ctx.lm, ctx.site).to(device=x.device, dtype=x.dtype)
        cls = ctx.batch.class_ids().clamp(min=0).to(x.device)
        return means[cls]
