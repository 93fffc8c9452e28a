"""Running the model: plain hooked forwards (``next_token_logits``, ``patch``) and the clean-run fast path.

``clean_run`` keeps every layer's input residual and call arguments once; ``CleanRun.rerun(*edits)`` restarts
from the earliest edited layer with the edits hooked on the suffix (``run_from`` is the lower-level form that
takes an explicit start layer and hidden state, e.g. one ``edit_residual`` computed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .batch import Batch
from .bound import Bound
from .capture import capture
from .edits import Ablate, Edit, Patch, Trace
from .errors import InterventionError
from .hooks import intervene
from .reference import as_reference, prepare_reference
from .sites import Site, hidden_in, split_output


def _measure_rows_cols(batch: Batch, positions) -> tuple[Tensor, Tensor] | None:
    """(rows, cols) of the positions whose logits are measured; None for all positions."""
    if positions == "answer":
        return torch.arange(len(batch)), batch.answer_pos.cpu()
    if positions in (None, "all"):
        return None
    raise InterventionError(f"next_token_logits: positions must be 'answer' or 'all', got {positions!r}")


def logits_from_hidden(lm, hidden: Tensor) -> Tensor:
    """Final norm + LM head (+ the model's final logit soft-capping, e.g. Gemma) on residual vectors."""
    normed = lm.adapter.final_norm(lm.model)(hidden)
    logits = lm.adapter.lm_head(lm.model)(normed)
    cap = getattr(getattr(lm.adapter.base(lm.model), "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def next_token_logits(lm, batch: Batch, *edits: Edit, positions="answer", reference=None) -> Tensor:
    """Logits (fp32) with ``edits`` applied: [n, vocab] at the answer positions, or [n, T, vocab] for ``"all"``.

    A full forward of the HF model (the plain path every fast path is tested against). Raises if an edit
    did not fire.
    """
    with intervene(lm, *edits, batch=batch, reference=reference):
        out = lm.model(**batch.model_inputs())
    logits = out.logits.float()
    where = _measure_rows_cols(batch, positions)
    if where is None:
        return logits
    rows, cols = where
    return logits[rows.to(logits.device), cols.to(logits.device)]


@torch.no_grad()
def patch(lm, clean_batch: Batch, corrupt_batch: Batch, component: str, layer: int, *, positions=None,
          head: int | None = None, module: str | None = None, source_lm=None, measure="answer") -> Tensor:
    """Activation patching: run ``corrupt_batch`` with one site replaced by its value on ``clean_batch``.

    ``source_lm`` (default ``lm``) may be another model of the same width: the clean activation is taken
    from it. Returns the patched logits at ``measure`` positions (as ``next_token_logits``).
    """
    site = Site(component, layer, head, module if component == "module" else None)
    source = capture(source_lm or lm, clean_batch, [site])[site]
    edit = Patch(component, layer, source, positions=positions, head=head, module=module)
    return next_token_logits(lm, corrupt_batch, edit, positions=measure)


def kl(clean_logits: Tensor, edited_logits: Tensor) -> Tensor:
    """KL(clean || edited) of the softmax distributions over the last axis, in nats (computed in fp32)."""
    from engine.metrics import kl as _kl

    return _kl(clean_logits, edited_logits)


# --------------------------------------------------------------------------------------------- fast path


@dataclass
class CleanRun:
    """A clean forward with what a layer sweep needs to restart at any layer.

    ``resid[l]`` is the residual entering layer ``l`` (``resid[n_layers]`` the final pre-norm hidden state);
    ``layer_kwargs[l]`` the exact keyword arguments the HF model passed to layer ``l`` (attention mask(s),
    rotary position embeddings, position ids), so a restarted suffix sees precisely what the model built
    with its own ``create_causal_mask`` / ``create_sliding_window_causal_mask`` / ``rotary_emb``. ``lm`` is the
    model it ran (what ``rerun`` runs).
    """

    batch: Batch
    resid: list[Tensor]
    layer_kwargs: list[dict]
    logits: Tensor  # clean logits at the measured positions (fp32)
    positions: str
    lm: Any = field(default=None, repr=False, compare=False)

    def rerun(self, *edits: Edit, reference=None, start: int | None = None) -> Tensor:
        """Logits at the measured positions with ``edits`` hooked, restarted from the clean residual entering
        the earliest edited layer (``start`` overrides it; needed when there are no edits, e.g. to rerun the
        clean suffix under hooks of one's own). Equals ``run_from(lm, run, L, run.resid[L], *edits, ...)``."""
        if self.lm is None:
            raise InterventionError("CleanRun.rerun: this run records no model (build it with clean_run)")
        if start is None:
            if not edits:
                raise InterventionError("CleanRun.rerun: no edits to pick the start layer from; pass start=")
            start = min(int(edit.layer) for edit in edits)
        if not 0 <= start <= len(self.layer_kwargs):
            raise InterventionError(f"CleanRun.rerun: start layer {start} out of range (0..{len(self.layer_kwargs)})")
        return run_from(self.lm, self, start, self.resid[start], *edits, reference=reference)


@torch.no_grad()
def clean_run(lm, batch: Batch, positions="answer") -> CleanRun:
    """Run the clean model once, keeping every layer's input residual and call arguments."""
    layers = lm.adapter.layers(lm.model)
    resid: list[Tensor | None] = [None] * (len(layers) + 1)
    kwargs_list: list[dict | None] = [None] * len(layers)
    handles = []

    def make_pre(idx):
        def pre(module, args, kwargs):
            resid[idx] = hidden_in(args, kwargs).detach()
            kwargs_list[idx] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        return pre

    def last_hook(module, args, output):
        resid[len(layers)] = split_output(output)[0].detach()

    try:
        for idx, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(make_pre(idx), with_kwargs=True))
        handles.append(layers[-1].register_forward_hook(last_hook))
        _decoder(lm)(**batch.model_inputs())
    finally:
        for handle in handles:
            handle.remove()
    if any(r is None for r in resid) or any(k is None for k in kwargs_list):
        raise InterventionError("clean_run: some layers were not reached by the forward pass")
    for kw in kwargs_list:
        if kw.get("cache") is not None or kw.get("past_key_values") is not None:
            raise InterventionError("clean_run: the model ran with a KV cache; it must run with use_cache=False")
    logits = _measure_logits(lm, batch, resid[-1], positions)
    return CleanRun(batch, resid, kwargs_list, logits, positions, lm=lm)


def _decoder(lm) -> nn.Module:
    """The decoder stack (embeddings, layers, final norm) without the LM head."""
    base = lm.adapter.base(lm.model)
    return getattr(base, base.base_model_prefix, base) if hasattr(base, "base_model_prefix") else base.model


def _measure_logits(lm, batch: Batch, hidden: Tensor, positions) -> Tensor:
    where = _measure_rows_cols(batch, positions)
    if where is None:
        return logits_from_hidden(lm, hidden).float()
    rows, cols = where
    return logits_from_hidden(lm, hidden[rows.to(hidden.device), cols.to(hidden.device)]).float()


@torch.no_grad()
def run_from(lm, run: CleanRun, start_layer: int, hidden: Tensor, *edits: Edit, reference=None) -> Tensor:
    """Logits at the run's measured positions after running layers ``start_layer..L-1`` from ``hidden``.

    ``hidden`` replaces the residual entering ``start_layer`` (``start_layer == n_layers`` means "this is
    the final hidden state"). ``edits`` are installed as hooks for the suffix (they must act at or after
    ``start_layer``; an edit earlier than that would never fire and raises). ``run.rerun(*edits)`` is this
    with the clean residual entering the earliest edited layer.
    """
    layers = lm.adapter.layers(lm.model)
    with intervene(lm, *edits, batch=run.batch, reference=reference):
        h = hidden
        for idx in range(start_layer, len(layers)):
            out = layers[idx](h, **run.layer_kwargs[idx])
            h = split_output(out)[0]
    return _measure_logits(lm, run.batch, h, run.positions)


def edit_residual(lm, run: CleanRun, edit: Ablate, reference=None) -> tuple[Tensor, Trace]:
    """The residual after layer ``edit.layer`` under a ``layer``/``resid`` ablation, computed from the clean run
    without re-running the layer (its clean input and output are both cached). Returns (residual, trace)."""
    if not isinstance(edit, Ablate) or edit.component not in ("layer", "resid"):
        raise InterventionError("edit_residual handles Ablate('layer'|'resid', ...) only")
    trace = Trace((edit,))
    ref = as_reference(reference)
    prepare_reference(lm, [edit], ref)
    bound = Bound(lm, edit, 0, trace, run.batch, ref)
    inp, out = run.resid[edit.layer], run.resid[edit.layer + 1]
    new = bound.apply_layer(inp, out)
    trace.check()
    return new, trace

