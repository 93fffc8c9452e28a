"""Interventions on a loaded decoder-only model: ablate, add a vector, patch activations.

An intervention is a small dataclass that reads like the experiment::

    batch = encode(lm, examples)
    clean = next_token_logits(lm, batch)
    ablated = next_token_logits(lm, batch, Ablate("layer", 3))          # layer 3's contribution removed
    effect = kl(clean, ablated)                                          # KL(clean || ablated), nats

    run = clean_run(lm, batch)                                           # the fast path: one clean forward,
    ablated = run.rerun(Ablate("mlp", 3))                                # then restart at the edited layer

    with intervene(lm, AddVector(5, direction, scale=4.0), batch=batch) as trace:
        lm.model.generate(...)

Components (``Ablate.component``), resolved through the model's ``ArchAdapter`` (no attribute names here; the
one lookup is ``sites.resolve``):

* ``layer``  - the decoder layer's contribution to the residual stream: ``output := input`` for ``zero``
  (``output - input`` is the value that ``mean``/``resample``/``noise`` replace; for Gemma3's sandwich norms
  this is still the whole layer's contribution).
* ``resid``  - the residual stream after layer ``l`` (the layer's output); zeroing it is the seed's "layer
  ablation" (see the project's ``seed-protocols.md``, ``../shared/seed-protocols.md`` from the repository root).
* ``attn`` / ``mlp`` - the attention / MLP block's output (before Gemma3's post-norms).
* ``head``   - one attention head: its slice of the ``o_proj`` input.
* ``module`` - one projection's output: ``q, k, v, o, gate, up, down``.

Methods (``Ablate.method``) are a registry (``methods``: one module per method, ``register_method(name)`` to add
one; ``METHODS`` / ``methods.names()`` list them). Built in: ``zero``; ``mean`` (the mean of the same site over
a reference sample, per position class: first token / prompt body / answer position); ``resample`` (the
activation of another example at the aligned position: a cyclic shift of the batch, or a reference batch);
``noise`` (Gaussian noise with the activation's own standard deviation *replaces* the activation, so it erases
like the other methods).

Positions (``positions=``): ``None`` (every real token), ``"bos"`` (the BOS token; an error if the tokenizer adds
none), ``"first"`` (the first prompt token, BOS or not: the seed's "bos"), ``"body"`` (prompt tokens other than the
first and the answer position), ``"answer"`` (the last prompt token, whose logits predict the answer),
``"last3"`` (the last three prompt tokens, the seed's "answer"); aliases ``"all"`` (= None), ``"prompt"``
(= ``"body"``), ``"last"`` (= ``"answer"``); or explicit token indices (into the rendered,
unpadded prompt; negative counts from the end), either one list for all examples or one list per example.

Every edit records whether it fired and whether it changed the activations (``Trace``); leaving
``intervene`` with an edit that never fired raises ``InterventionError`` (silent no-op interventions are the
most common silent failure in interpretability tools). Hooks are removed on every exit path.

Batches are left-padded; position ids are derived from the attention mask, so a result does not depend on
which other examples share the batch (tested batched == one by one).

Modules: ``batch`` (Batch, encode, position classes), ``sites`` (Site, Captured, the site lookup), ``edits``
(Ablate, AddVector, Patch, Trace), ``methods`` (the registry and the built-in methods), ``reference``
(Reference), ``bound`` (an edit bound to a run), ``hooks`` (install, intervene), ``capture`` (reads), ``runs``
(next_token_logits, patch, CleanRun / clean_run / run_from / edit_residual).
"""

from __future__ import annotations

from . import methods
from .batch import (
    CLASS_ANSWER,
    CLASS_BODY,
    CLASS_FIRST,
    N_CLASSES,
    POSITION_ALIASES,
    POSITION_CLASSES,
    Batch,
    Positions,
    encode,
)
from .bound import Bound
from .capture import capture
from .edits import Ablate, AddVector, Edit, Patch, Trace
from .errors import InterventionError
from .hooks import install, intervene
from .methods import METHODS, Method, get_method, register_method, unregister_method
from .reference import Reference
from .runs import (
    CleanRun,
    clean_run,
    edit_residual,
    kl,
    logits_from_hidden,
    next_token_logits,
    patch,
    run_from,
)
from .sites import COMPONENTS, MODULE_NAMES, Captured, Site

__all__ = [
    "CLASS_ANSWER", "CLASS_BODY", "CLASS_FIRST", "COMPONENTS", "METHODS", "MODULE_NAMES", "N_CLASSES",
    "POSITION_ALIASES", "POSITION_CLASSES", "Ablate", "AddVector", "Batch", "Bound", "Captured", "CleanRun", "Edit",
    "InterventionError", "Method", "Patch", "Positions", "Reference", "Site", "Trace", "capture", "clean_run",
    "edit_residual", "encode", "get_method", "install", "intervene", "kl", "logits_from_hidden", "methods",
    "next_token_logits", "patch", "register_method", "run_from", "unregister_method",
]
