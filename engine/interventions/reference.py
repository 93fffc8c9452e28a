"""The reference sample for methods that need one (``mean``: per-class means; ``resample``: donor activations).

What a method needs prepared is its registered ``reference`` declaration (``"means"`` / ``"activations"``),
read by ``prepare_reference`` (before hooks are installed) and by ``engine.atlas``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .batch import N_CLASSES, Batch
from .capture import capture
from .edits import Ablate
from .errors import InterventionError
from .methods import REFERENCE_KINDS, get_method
from .sites import Captured, Site


class Reference:
    """A reference sample for ``mean`` and ``resample``: per-site activations of ``batch`` under ``lm``.

    Means are per position class (first token / body / answer), computed once per site and model and kept;
    full activations (for ``resample``) are captured on demand. ``shift`` picks resample donors: example
    with index ``g`` gets reference example ``(g + shift) % n_ref`` (shift 1 with the suite itself as
    reference means no example is its own donor).
    """

    def __init__(self, batch: Batch, shift: int = 1, chunk_size: int = 32):
        self.batch = batch
        self.shift = shift
        self.chunk_size = chunk_size
        self._means: dict[tuple[str, Site], Tensor] = {}
        self._acts: dict[tuple[str, Site], Tensor] = {}

    def prepare(self, lm, sites: Sequence[Site], *, means: bool = True, acts: bool = False) -> None:
        """Compute means (and/or full activations) for several sites with one pass over the reference."""

        todo = [s for s in sites if (means and (lm.fingerprint, s) not in self._means)
                or (acts and (lm.fingerprint, s) not in self._acts)]
        if not todo:
            return
        sums = {s: None for s in todo}
        counts = torch.zeros(N_CLASSES, dtype=torch.float64)
        full: dict[Site, list[Tensor]] = {s: [] for s in todo}
        T = self.batch.seq_len
        for chunk in self.batch.chunks(self.chunk_size):
            captured = capture(lm, chunk, todo)
            cls = chunk.class_ids()
            onehot = torch.nn.functional.one_hot(cls.clamp(min=0), N_CLASSES).double() * (cls >= 0)[..., None]
            counts += onehot.sum((0, 1))
            for s in todo:
                v = captured[s].values.double().cpu()
                part = torch.einsum("ntc,ntd->cd", onehot, v)
                sums[s] = part if sums[s] is None else sums[s] + part
                if acts:
                    pad = T - v.shape[1]
                    full[s].append(torch.nn.functional.pad(captured[s].values, (0, 0, pad, 0)))
        for s in todo:
            if means:
                overall = sums[s].sum(0) / counts.sum()
                per_class = torch.where(counts[:, None] > 0, sums[s] / counts.clamp(min=1)[:, None], overall)
                self._means[(lm.fingerprint, s)] = per_class.float()
            if acts:
                self._acts[(lm.fingerprint, s)] = torch.cat(full[s])

    def prepare_kind(self, lm, sites: Sequence[Site], kind: str) -> None:
        """``prepare`` what a method's ``reference`` declaration names: ``"means"`` or ``"activations"``."""
        if kind == "means":
            self.prepare(lm, sites, means=True)
        elif kind == "activations":
            self.prepare(lm, sites, means=False, acts=True)
        else:
            raise InterventionError(f"unknown reference kind {kind!r}; choose from {REFERENCE_KINDS}")

    def means(self, lm, site: Site) -> Tensor:
        """[3, d] mean activation of ``site`` per position class (first, body, answer)."""
        if (lm.fingerprint, site) not in self._means:
            self.prepare(lm, [site], means=True)
        return self._means[(lm.fingerprint, site)]

    def activations(self, lm, site: Site) -> Captured:
        if (lm.fingerprint, site) not in self._acts:
            self.prepare(lm, [site], means=False, acts=True)
        return Captured(site, self._acts[(lm.fingerprint, site)], self.batch)


def as_reference(reference) -> Reference | None:
    """``reference=`` as given to ``intervene``: None, a ``Reference``, or a ``Batch`` (wrapped)."""
    if reference is None or isinstance(reference, Reference):
        return reference
    if isinstance(reference, Batch):
        return Reference(reference)
    raise InterventionError(f"reference must be a Reference or a Batch, got {type(reference).__name__}")


def prepare_reference(lm, edits, ref: Reference | None) -> None:
    """Prepare, in one pass per kind, the reference data the edits' methods declare (before any hook exists)."""
    if ref is None:
        return
    wanted: dict[str, list[Site]] = {kind: [] for kind in REFERENCE_KINDS}
    for edit in edits:
        if isinstance(edit, Ablate):
            kind = get_method(edit.method).reference
            if kind is not None:
                wanted[kind].append(edit.site)
    for kind in REFERENCE_KINDS:
        if wanted[kind]:
            ref.prepare_kind(lm, wanted[kind], kind)
