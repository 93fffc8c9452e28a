"""One edit bound to a model, a batch and a trace slot: computes the edited activation.

``AddVector`` and ``Patch`` are computed here; an ``Ablate``'s replacement comes from its registered method
(``engine.interventions.methods``), whose declarations also decide what the binding requires.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .batch import Batch, aligned_gather
from .edits import Ablate, AddVector, Edit, Patch, Trace, describe
from .errors import InterventionError
from .methods import get_method


class Bound:
    """An edit bound for one ``intervene`` (or one ``edit_residual``); what a method's ``replacement`` gets as
    ``ctx``: ``lm``, ``edit``, ``site``, ``batch`` (or None), ``reference`` (or None), ``method`` (or None)."""

    def __init__(self, lm, edit: Edit, slot: int, trace: Trace, batch: Batch | None, reference):
        self.lm, self.edit, self.slot, self.trace, self.batch, self.reference = lm, edit, slot, trace, batch, reference
        self.site = edit.site
        self.method = get_method(edit.method) if isinstance(edit, Ablate) else None
        self._mask_cache: dict[tuple, Tensor] = {}
        if self.method is not None and self.method.needs_reference and reference is None:
            raise InterventionError(f"{describe(edit)}: method {edit.method!r} needs reference= (a Reference or a "
                                    "Batch)")
        if self.method is not None and self.method.needs_batch and batch is None:
            raise InterventionError(f"{describe(edit)}: method {edit.method!r} needs the batch (pass batch= to "
                                    "intervene, or use next_token_logits)")
        if edit.positions is not None and batch is None:
            raise InterventionError(f"{describe(edit)}: positions={edit.positions!r} need the batch (pass batch= "
                                    "to intervene, or use next_token_logits)")

    def _mask(self, x: Tensor) -> Tensor | None:
        """[n, T, 1] bool mask of positions to edit, or None for 'everything'."""
        if self.batch is None:
            return None
        n, T = x.shape[0], x.shape[1]
        if (n, T) != tuple(self.batch.input_ids.shape):
            if self.edit.positions is None and (self.method is None or self.method.any_shape):
                return None  # e.g. generation steps with a KV cache: apply everywhere
            raise InterventionError(f"{describe(self.edit)}: activation shape {tuple(x.shape[:2])} does not match the "
                                    f"batch {tuple(self.batch.input_ids.shape)} (generation with a KV cache supports "
                                    "positions=None only)")
        key = (x.device,)
        if key not in self._mask_cache:
            self._mask_cache[key] = self.batch.position_mask(self.edit.positions).to(x.device)[..., None]
        return self._mask_cache[key]

    def apply(self, x: Tensor) -> Tensor:
        """The edited activation (x: [n, T, d]); records that the edit fired and whether it changed x."""
        mask = self._mask(x)
        new = self._replacement(x, mask)
        out = new if mask is None else torch.where(mask, new, x)
        self.trace.record(self.slot, not torch.equal(out, x))
        return out

    def apply_contribution(self, inp: Tensor, out: Tensor) -> Tensor:
        """A decoder layer's output with its contribution ``out - inp`` edited (``zero``: output := input).
        Unedited positions keep ``out`` bit for bit."""
        delta = out - inp
        mask = self._mask(delta)
        new = self._replacement(delta, mask)
        if mask is None:
            result = inp + new
        else:
            result = torch.where(mask, inp + new, out)
        self.trace.record(self.slot, not torch.equal(result, out))
        return result

    def apply_layer(self, inp: Tensor, out: Tensor) -> Tensor:
        """The decoder layer's edited output: ``resid`` edits the output, ``layer`` its contribution."""
        return self.apply(out) if self.site.component == "resid" else self.apply_contribution(inp, out)

    def _replacement(self, x: Tensor, mask: Tensor | None) -> Tensor:
        edit = self.edit
        if isinstance(edit, AddVector):
            vec = edit.vector.to(device=x.device, dtype=x.dtype)
            if vec.shape[0] != x.shape[-1]:
                raise InterventionError(f"{describe(edit)}: vector has {vec.shape[0]} dims, the residual {x.shape[-1]}")
            return x + edit.scale * vec
        if isinstance(edit, Patch):
            src = edit.source
            if src.values.shape[-1] != x.shape[-1]:
                raise InterventionError(f"Patch {edit.site.label()}: source width {src.values.shape[-1]} != "
                                        f"target width {x.shape[-1]} (patching across models needs the same width)")
            if len(src.batch) != x.shape[0]:
                raise InterventionError(f"Patch {edit.site.label()}: source has {len(src.batch)} examples, the "
                                        f"batch {x.shape[0]}")
            rows = torch.arange(x.shape[0])
            return aligned_gather(self.batch, src.batch, src.values, rows).to(device=x.device, dtype=x.dtype)
        return self.method.replacement(self, x, mask)
