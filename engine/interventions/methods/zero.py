"""``zero``: the activation (or a layer's contribution) is replaced by zeros."""

from __future__ import annotations

import torch

from .base import Method, register_method


@register_method("zero")
class Zero(Method):
    description = "zeros (for component 'layer': output := input)"
    needs_batch = False
    any_shape = True  # zeros need no positions: it also applies to generation steps with a KV cache

    def replacement(self, ctx, x, mask):
        return torch.zeros_like(x)
