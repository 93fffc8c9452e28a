"""Hooks that edit: ``install`` one bound edit, ``intervene`` (edits for the duration of a block).

Edits reach their site through ``sites.resolve``, as reads do (:mod:`.capture`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from .batch import Batch
from .bound import Bound
from .edits import EDIT_TYPES, Edit, Trace, describe
from .errors import InterventionError
from .reference import as_reference, prepare_reference
from .sites import resolve


def install(lm, bound: Bound) -> list:
    """Register the hook(s) that apply one bound edit; returns the handles."""
    hook = resolve(lm, bound.site, describe(bound.edit))
    return [hook.attach(bound.apply_layer if hook.kind == "layer" else bound.apply)]


@contextmanager
def intervene(lm, *edits: Edit, batch: Batch | None = None, reference=None, strict: bool = True) -> Iterator[Trace]:
    """Install ``edits`` on ``lm`` for the duration of the block; yields a ``Trace``.

    ``batch`` is the batch the block will run (needed for positions, mean/resample/noise); ``reference`` a
    ``Reference`` (or a ``Batch``, wrapped) for ``mean`` and reference ``resample``. Hooks are removed on
    every exit; with ``strict`` (default) leaving the block normally with an edit that never fired raises
    ``InterventionError``.
    """
    ref = as_reference(reference)
    trace = Trace(tuple(edits))
    handles: list = []
    prepare_reference(lm, edits, ref)  # before any hook exists: the reference runs the clean model
    try:
        for slot, edit in enumerate(edits):
            if not isinstance(edit, EDIT_TYPES):
                raise InterventionError(f"intervene: {edit!r} is not an edit (Ablate, AddVector, Patch)")
            handles += install(lm, Bound(lm, edit, slot, trace, batch, ref))
        yield trace
    finally:
        for handle in handles:
            handle.remove()
    if strict:
        trace.check()
