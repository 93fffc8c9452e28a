"""Interventions on a loaded decoder-only model: ablate, add a vector, patch activations.

An intervention is a small dataclass that reads like the experiment::

    batch = encode(lm, examples)
    clean = next_token_logits(lm, batch)
    ablated = next_token_logits(lm, batch, Ablate("layer", 3))          # layer 3's contribution removed
    effect = kl(clean, ablated)                                          # KL(clean || ablated), nats

    with intervene(lm, AddVector(5, direction, scale=4.0), batch=batch) as trace:
        lm.model.generate(...)

Components (``Ablate.component``), resolved through the model's ``ArchAdapter`` (no attribute names here):

* ``layer``  - the decoder layer's contribution to the residual stream: ``output := input`` for ``zero``
  (``output - input`` is the value that ``mean``/``resample``/``noise`` replace; for Gemma3's sandwich norms
  this is still the whole layer's contribution).
* ``resid``  - the residual stream after layer ``l`` (the layer's output); zeroing it is the seed's "layer
  ablation" (see ``/work/shared/seed-protocols.md``).
* ``attn`` / ``mlp`` - the attention / MLP block's output (before Gemma3's post-norms).
* ``head``   - one attention head: its slice of the ``o_proj`` input.
* ``module`` - one projection's output: ``q, k, v, o, gate, up, down``.

Methods: ``zero``; ``mean`` (the mean of the same site over a reference sample, per position class: first
token / prompt body / answer position); ``resample`` (the activation of another example at the aligned
position: a cyclic shift of the batch, or a reference batch); ``noise`` (Gaussian noise with the activation's
own standard deviation *replaces* the activation, so it erases like the other methods).

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
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence, Union

import torch
from torch import Tensor, nn

COMPONENTS = ("layer", "resid", "attn", "mlp", "head", "module")
METHODS = ("zero", "mean", "resample", "noise")
POSITION_CLASSES = ("bos", "first", "body", "answer", "last3", "prompt", "last", "all")
# Aliases accepted by ``Batch.position_mask``: the names for the seed's classes.
POSITION_ALIASES = {"prompt": "body", "last": "answer", "all": None}
MODULE_NAMES = ("q", "k", "v", "o", "gate", "up", "down")
# Position classes used by mean / resample: the first token (BOS or attention sink), the body, the answer.
CLASS_FIRST, CLASS_BODY, CLASS_ANSWER = 0, 1, 2
N_CLASSES = 3

Positions = Union[None, str, Sequence[int], Sequence[Sequence[int]]]


class InterventionError(RuntimeError):
    """An intervention could not be applied, did not fire, or was specified inconsistently."""


# --------------------------------------------------------------------------------------------- batch


@dataclass
class Batch:
    """A left-padded batch of rendered prompts.

    ``answer_pos``, ``start`` and ``bos_pos`` are in padded coordinates (``bos_pos`` is -1 where the tokenizer
    adds no BOS). ``index`` is each example's index in the list given to ``encode`` (kept by ``select``) and
    seeds per-example randomness, so noise and resample donors do not depend on batch composition.
    ``target_ids`` is the first token of each example's target (-1 for plain strings).
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    answer_pos: Tensor
    start: Tensor
    bos_pos: Tensor
    index: Tensor
    target_ids: Tensor
    families: list[str]
    ids: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def has_bos(self) -> bool:
        return bool((self.bos_pos >= 0).all())

    def model_inputs(self) -> dict[str, Tensor]:
        """Keyword arguments for the HF model forward (no KV cache: every forward is a fresh prompt)."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "position_ids": self.position_ids, "use_cache": False}

    def select(self, rows: Sequence[int] | Tensor, trim: bool = True) -> "Batch":
        """A sub-batch (same example indices); ``trim`` drops columns that are padding in every kept row."""
        rows_t = torch.as_tensor(list(rows) if not isinstance(rows, Tensor) else rows, dtype=torch.long)
        cut = int(self.start[rows_t].min()) if trim and len(rows_t) else 0
        pick = rows_t.tolist()
        return Batch(
            input_ids=self.input_ids[rows_t, cut:], attention_mask=self.attention_mask[rows_t, cut:],
            position_ids=self.position_ids[rows_t, cut:], answer_pos=self.answer_pos[rows_t] - cut,
            start=self.start[rows_t] - cut, bos_pos=torch.where(self.bos_pos[rows_t] >= 0, self.bos_pos[rows_t] - cut, -1),
            index=self.index[rows_t], target_ids=self.target_ids[rows_t],
            families=[self.families[i] for i in pick], ids=[self.ids[i] for i in pick],
            texts=[self.texts[i] for i in pick],
        )

    def chunks(self, size: int) -> Iterator["Batch"]:
        """Consecutive sub-batches of at most ``size`` examples, each trimmed of all-padding columns."""
        for lo in range(0, len(self), size):
            yield self.select(range(lo, min(lo + size, len(self))))

    def to(self, device: torch.device | str) -> "Batch":
        return replace(self, input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
                       position_ids=self.position_ids.to(device))

    # ----- position classes (all [n, T] on the batch's CPU tensors, moved to the activation's device later)

    def real_mask(self) -> Tensor:
        return self.attention_mask.bool().cpu()

    def class_ids(self) -> Tensor:
        """[n, T] long: CLASS_FIRST / CLASS_BODY / CLASS_ANSWER for real tokens, -1 for padding."""
        n, T = self.input_ids.shape
        cols = torch.arange(T).expand(n, T)
        ids = torch.full((n, T), CLASS_BODY, dtype=torch.long)
        ids[cols == self.start[:, None]] = CLASS_FIRST
        ids[cols == self.answer_pos[:, None]] = CLASS_ANSWER
        ids[~self.real_mask()] = -1
        return ids

    def position_mask(self, positions: Positions) -> Tensor:
        """[n, T] bool mask of the token positions an edit applies to (never padding)."""
        n, T = self.input_ids.shape
        cols = torch.arange(T).expand(n, T)
        real = self.real_mask()
        if isinstance(positions, str) and positions in POSITION_ALIASES:
            positions = POSITION_ALIASES[positions]
        if positions is None:
            return real
        if isinstance(positions, str):
            if positions == "bos":
                if not self.has_bos:
                    raise InterventionError(
                        "positions='bos': this tokenizer adds no BOS token to (some of) these prompts; use "
                        "positions='first' for the first prompt token (what the seed called 'bos')")
                return cols == self.bos_pos[:, None]
            if positions == "first":
                return cols == self.start[:, None]
            if positions == "answer":
                return cols == self.answer_pos[:, None]
            if positions == "last3":
                lo = torch.maximum(self.answer_pos - 2, self.start)
                return (cols >= lo[:, None]) & (cols <= self.answer_pos[:, None])
            if positions == "body":
                return (cols > self.start[:, None]) & (cols < self.answer_pos[:, None])
            raise InterventionError(f"unknown position class {positions!r}; choose from {POSITION_CLASSES}, "
                                    "None (all) or a list of token indices")
        per_example = list(positions)
        if per_example and all(isinstance(p, int) for p in per_example):
            per_example = [per_example] * n
        if len(per_example) != n:
            raise InterventionError(f"positions: got {len(per_example)} position lists for a batch of {n} examples")
        mask = torch.zeros(n, T, dtype=torch.bool)
        for i, plist in enumerate(per_example):
            length = T - int(self.start[i])
            for p in plist:
                q = int(p) + length if int(p) < 0 else int(p)
                if not 0 <= q < length:
                    raise InterventionError(f"positions: index {p} is outside example {self.ids[i]!r} "
                                            f"({length} tokens)")
                mask[i, int(self.start[i]) + q] = True
        return mask & real


def _target_first_id(tokenizer, example, rendered) -> int:
    """First token id of the example's target as it continues the rendered prompt (engine.tasks' rule)."""
    from engine import tasks

    rule = getattr(tasks, "target_first_token_id", None)
    if rule is None:  # older tasks module: tokenise prompt + target together and take the first new token
        from engine.tasks.render import target_first_token_id as rule
    return int(rule(tokenizer, example, rendered))


def encode(lm, examples: Sequence, template: str = "auto") -> Batch:
    """Render and left-pad prompts into a ``Batch``.

    ``examples`` are ``engine.tasks.Example`` objects (rendered with ``engine.tasks.render``, which gives the
    answer position and BOS position; the target's first token becomes ``target_ids``) or plain strings
    (tokenised with the tokenizer's special tokens; answer position = last token).
    """
    if len(examples) == 0:
        raise InterventionError("encode: no examples")
    tokenizer = lm.tokenizer
    rows: list[tuple[list[int], int, int, int, str, str, str]] = []  # ids, answer, bos, target, family, id, text
    bos_id = getattr(tokenizer, "bos_token_id", None)
    for i, ex in enumerate(examples):
        if isinstance(ex, str):
            ids = list(tokenizer(ex)["input_ids"])
            bos = 0 if (bos_id is not None and ids and ids[0] == bos_id) else -1
            rows.append((ids, len(ids) - 1, bos, -1, "", f"prompt{i}", ex))
        else:
            from engine import tasks

            rendered = tasks.render(tokenizer, ex, template)
            ids = list(rendered.input_ids)
            target = _target_first_id(tokenizer, ex, rendered) if (getattr(ex, "target", None) or "").strip() else -1
            bos = -1 if rendered.bos_pos is None else int(rendered.bos_pos)
            rows.append((ids, int(rendered.answer_pos), bos, target, ex.family, ex.id, rendered.text))
        if not rows[-1][0]:
            raise InterventionError(f"encode: example {i} renders to no tokens")
    T = max(len(r[0]) for r in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    n = len(rows)
    input_ids = torch.full((n, T), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((n, T), dtype=torch.long)
    start = torch.empty(n, dtype=torch.long)
    for i, (ids, *_rest) in enumerate(rows):
        off = T - len(ids)
        input_ids[i, off:] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, off:] = 1
        start[i] = off
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    answer = torch.tensor([r[1] for r in rows], dtype=torch.long) + start
    bos = torch.tensor([r[2] for r in rows], dtype=torch.long)
    bos = torch.where(bos >= 0, bos + start, -1)
    batch = Batch(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, answer_pos=answer,
        start=start, bos_pos=bos, index=torch.arange(n), target_ids=torch.tensor([r[3] for r in rows]),
        families=[r[4] for r in rows], ids=[r[5] for r in rows], texts=[r[6] for r in rows],
    )
    return batch.to(lm.device)


# --------------------------------------------------------------------------------------------- edits


@dataclass(frozen=True)
class Ablate:
    """Remove a component's activation at layer ``layer`` (``component``/``method`` as in the module doc).

    ``head`` is required for ``component="head"``, ``module`` (q, k, v, o, gate, up, down) for ``"module"``.
    ``seed`` seeds ``noise`` (per example, from the example's index) and nothing else.
    """

    component: str
    layer: int
    method: str = "zero"
    positions: Positions = None
    head: int | None = None
    module: str | None = None
    seed: int = 0

    def __post_init__(self):
        if self.component not in COMPONENTS:
            raise InterventionError(f"Ablate: unknown component {self.component!r}; choose from {COMPONENTS}")
        if self.method not in METHODS:
            raise InterventionError(f"Ablate: unknown method {self.method!r}; choose from {METHODS}")
        if self.component == "head" and self.head is None:
            raise InterventionError("Ablate(component='head') needs head=<index>")
        if self.component == "module" and self.module not in MODULE_NAMES:
            raise InterventionError(f"Ablate(component='module') needs module= one of {MODULE_NAMES}")
        object.__setattr__(self, "positions", _freeze(self.positions))  # hashable; "all" -> None

    @property
    def site(self) -> "Site":
        return Site(self.component, self.layer, self.head, self.module if self.component == "module" else None)


@dataclass(frozen=True, eq=False)
class AddVector:
    """Steering: the residual stream after layer ``layer`` += ``scale * vector`` (at ``positions``)."""

    layer: int
    vector: Tensor
    scale: float = 1.0
    positions: Positions = None

    def __post_init__(self):
        if self.vector.ndim != 1:
            raise InterventionError(f"AddVector: vector must be 1-D [d_model], got shape {tuple(self.vector.shape)}")
        object.__setattr__(self, "positions", _freeze(self.positions))

    @property
    def site(self) -> "Site":
        return Site("resid", self.layer)


@dataclass(frozen=True, eq=False)
class Patch:
    """Replace a site's activation by ``source`` values (captured from another run, maybe another model).

    Example ``i`` of the receiving batch gets source example ``i``; positions are aligned by class (first
    token, answer) and by distance from the answer position (body), so prompts of different lengths patch
    sensibly.
    """

    component: str
    layer: int
    source: "Captured"
    positions: Positions = None
    head: int | None = None
    module: str | None = None

    def __post_init__(self):
        if self.component not in COMPONENTS:
            raise InterventionError(f"Patch: unknown component {self.component!r}; choose from {COMPONENTS}")
        object.__setattr__(self, "positions", _freeze(self.positions))

    @property
    def site(self) -> "Site":
        return Site(self.component, self.layer, self.head, self.module if self.component == "module" else None)


Edit = Union[Ablate, AddVector, Patch]


def _freeze(positions):
    """Positions in canonical, hashable form: ``"all"`` becomes None, lists become tuples."""
    if positions is None or (isinstance(positions, str) and positions == "all"):
        return None
    if not isinstance(positions, (list, tuple)):
        return positions
    return tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in positions)


@dataclass(frozen=True)
class Site:
    """Where an activation lives: a component at a layer (with head / module where relevant)."""

    component: str
    layer: int
    head: int | None = None
    module: str | None = None

    def label(self) -> str:
        extra = f".h{self.head}" if self.head is not None else (f".{self.module}" if self.module else "")
        return f"L{self.layer}.{self.component}{extra}"


@dataclass
class Captured:
    """Activations of one site over a batch: ``values`` [n, T, d] with the batch they came from."""

    site: Site
    values: Tensor
    batch: Batch


# --------------------------------------------------------------------------------------------- trace


@dataclass
class Trace:
    """What the installed edits did: per edit, whether it fired, how often, and whether it changed anything."""

    edits: tuple
    fired: list[bool] = field(default_factory=list)
    changed: list[bool] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)

    def __post_init__(self):
        k = len(self.edits)
        self.fired, self.changed, self.calls = [False] * k, [False] * k, [0] * k

    def record(self, index: int, changed: bool) -> None:
        self.fired[index] = True
        self.calls[index] += 1
        self.changed[index] = self.changed[index] or changed

    def check(self, require_change: bool = False) -> None:
        """Raise ``InterventionError`` if an edit never fired (or, with ``require_change``, changed nothing)."""
        for i, edit in enumerate(self.edits):
            if not self.fired[i]:
                raise InterventionError(f"intervention {_describe(edit)} never fired: its hook was not reached "
                                        "(wrong layer/module, or no forward pass ran inside intervene)")
            if require_change and not self.changed[i]:
                raise InterventionError(f"intervention {_describe(edit)} fired but left the activations unchanged")


def _describe(edit) -> str:
    if isinstance(edit, AddVector):
        return f"AddVector(layer={edit.layer}, scale={edit.scale}, positions={edit.positions!r})"
    return repr(edit) if not isinstance(edit, Patch) else f"Patch({edit.site.label()}, positions={edit.positions!r})"


# --------------------------------------------------------------------------------------------- reference


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

    def means(self, lm, site: Site) -> Tensor:
        """[3, d] mean activation of ``site`` per position class (first, body, answer)."""
        if (lm.fingerprint, site) not in self._means:
            self.prepare(lm, [site], means=True)
        return self._means[(lm.fingerprint, site)]

    def activations(self, lm, site: Site) -> Captured:
        if (lm.fingerprint, site) not in self._acts:
            self.prepare(lm, [site], means=False, acts=True)
        return Captured(site, self._acts[(lm.fingerprint, site)], self.batch)


def _aligned_gather(receiver: Batch, donor: Batch, donor_values: Tensor, donor_rows: Tensor) -> Tensor:
    """Donor activations laid out on the receiver's positions: [n, T_recv, d].

    Receiver row i takes donor row ``donor_rows[i]``; the first token maps to the donor's first token, the
    answer to the donor's answer, and a body token at distance k before the answer to the donor's body token
    at the same distance (clamped to the donor's body).
    """
    n, T = receiver.input_ids.shape
    cols = torch.arange(T).expand(n, T)
    cls = receiver.class_ids()
    d_start = donor.start[donor_rows]
    d_answer = donor.answer_pos[donor_rows]
    dist = receiver.answer_pos[:, None] - cols
    body_lo = torch.minimum(d_start + 1, d_answer)
    body = (d_answer[:, None] - dist).clamp(min=0)
    body = torch.maximum(torch.minimum(body, (d_answer - 1).clamp(min=0)[:, None]), body_lo[:, None])
    src = torch.where(cls == CLASS_FIRST, d_start[:, None], body)
    src = torch.where(cls == CLASS_ANSWER, d_answer[:, None], src)
    src = torch.where(cls < 0, d_answer[:, None], src)  # padding: any valid index (never written)
    vals = donor_values.to("cpu") if donor_values.device.type != "cpu" else donor_values
    return vals[donor_rows[:, None], src]


# --------------------------------------------------------------------------------------------- applying edits


class _Bound:
    """One edit bound to a model, a batch and a trace slot: computes the replacement activation."""

    def __init__(self, lm, edit: Edit, slot: int, trace: Trace, batch: Batch | None, reference: Reference | None):
        self.lm, self.edit, self.slot, self.trace, self.batch, self.reference = lm, edit, slot, trace, batch, reference
        self.site = edit.site
        self._mask_cache: dict[tuple, Tensor] = {}
        if isinstance(edit, Ablate) and edit.method in ("mean",) and reference is None:
            raise InterventionError(f"{_describe(edit)}: method 'mean' needs reference= (a Reference or a Batch)")
        if isinstance(edit, Ablate) and edit.method in ("mean", "resample", "noise") and batch is None:
            raise InterventionError(f"{_describe(edit)}: method {edit.method!r} needs the batch (pass batch= to "
                                    "intervene, or use next_token_logits)")
        if edit.positions is not None and batch is None:
            raise InterventionError(f"{_describe(edit)}: positions={edit.positions!r} need the batch (pass batch= "
                                    "to intervene, or use next_token_logits)")

    def _mask(self, x: Tensor) -> Tensor | None:
        """[n, T, 1] bool mask of positions to edit, or None for 'everything'."""
        if self.batch is None:
            return None
        n, T = x.shape[0], x.shape[1]
        if (n, T) != tuple(self.batch.input_ids.shape):
            if self.edit.positions is None and not (isinstance(self.edit, Ablate) and self.edit.method != "zero"):
                return None  # e.g. generation steps with a KV cache: apply everywhere
            raise InterventionError(f"{_describe(self.edit)}: activation shape {tuple(x.shape[:2])} does not match the "
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

    def _replacement(self, x: Tensor, mask: Tensor | None) -> Tensor:
        edit = self.edit
        if isinstance(edit, AddVector):
            vec = edit.vector.to(device=x.device, dtype=x.dtype)
            if vec.shape[0] != x.shape[-1]:
                raise InterventionError(f"{_describe(edit)}: vector has {vec.shape[0]} dims, the residual {x.shape[-1]}")
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
            return _aligned_gather(self.batch, src.batch, src.values, rows).to(device=x.device, dtype=x.dtype)
        method = edit.method
        if method == "zero":
            return torch.zeros_like(x)
        if method == "mean":
            means = self.reference.means(self.lm, self.site).to(device=x.device, dtype=x.dtype)
            cls = self.batch.class_ids().clamp(min=0).to(x.device)
            return means[cls]
        if method == "resample":
            if self.reference is None:  # cyclic shift within the batch
                n = x.shape[0]
                rows = (torch.arange(n) + 1) % n
                donor = Captured(self.site, x.detach(), self.batch)
            else:
                donor = self.reference.activations(self.lm, self.site)
                rows = (self.batch.index + self.reference.shift) % len(donor.batch)
            return _aligned_gather(self.batch, donor.batch, donor.values, rows).to(device=x.device, dtype=x.dtype)
        if method == "noise":
            return _matched_noise(x, mask, self.batch, edit.seed, self.site)
        raise InterventionError(f"unknown method {method!r}")


def _matched_noise(x: Tensor, mask: Tensor | None, batch: Batch, seed: int, site: Site) -> Tensor:
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


def _hidden_in(args, kwargs) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _split_output(output):
    """(tensor, rebuild) for a module output that is a tensor or a tuple whose first item is the tensor."""
    if isinstance(output, Tensor):
        return output, lambda t: t
    if isinstance(output, tuple):
        return output[0], lambda t: (t, *output[1:])
    if hasattr(output, "__getitem__"):  # ModelOutput-like
        first = output[0]

        def rebuild(t):
            output[0] = t
            return output
        return first, rebuild
    raise InterventionError(f"unexpected module output type {type(output).__name__}")


def _install(lm, bound: _Bound) -> list:
    """Register the hook(s) that apply one bound edit; returns the handles."""
    site = bound.site
    layers = lm.adapter.layers(lm.model)
    if not 0 <= site.layer < len(layers):
        raise InterventionError(f"{_describe(bound.edit)}: layer {site.layer} out of range (model has {len(layers)})")
    layer = layers[site.layer]
    comp = site.component
    if comp in ("layer", "resid"):
        def hook(module, args, kwargs, output):
            out, rebuild = _split_output(output)
            if comp == "resid":
                return rebuild(bound.apply(out))
            return rebuild(bound.apply_contribution(_hidden_in(args, kwargs), out))
        return [layer.register_forward_hook(hook, with_kwargs=True)]
    if comp == "head":
        proj = lm.adapter.attn_out_proj(layer)
        n_heads, hd = lm.adapter.n_heads(lm.model), lm.adapter.head_dim(lm.model)
        if not 0 <= site.head < n_heads:
            raise InterventionError(f"{_describe(bound.edit)}: head {site.head} out of range ({n_heads} heads)")
        lo, hi = site.head * hd, (site.head + 1) * hd

        def pre_hook(module, args):
            x = args[0]
            new = x.clone()
            new[..., lo:hi] = bound.apply(x[..., lo:hi])
            return (new, *args[1:])
        return [proj.register_forward_pre_hook(pre_hook)]
    target: nn.Module
    if comp == "attn":
        target = lm.adapter.attn(layer)
    elif comp == "mlp":
        target = lm.adapter.mlp(layer)
    else:
        target = lm.adapter.module(layer, site.module)

    def out_hook(module, args, output):
        out, rebuild = _split_output(output)
        return rebuild(bound.apply(out))
    return [target.register_forward_hook(out_hook)]


def _prepare_reference(lm, edits, ref: Reference | None) -> None:
    if ref is None:
        return
    mean_sites = [e.site for e in edits if isinstance(e, Ablate) and e.method == "mean"]
    act_sites = [e.site for e in edits if isinstance(e, Ablate) and e.method == "resample"]
    if mean_sites:
        ref.prepare(lm, mean_sites, means=True)
    if act_sites:
        ref.prepare(lm, act_sites, means=False, acts=True)


def _as_reference(reference) -> Reference | None:
    if reference is None or isinstance(reference, Reference):
        return reference
    if isinstance(reference, Batch):
        return Reference(reference)
    raise InterventionError(f"reference must be a Reference or a Batch, got {type(reference).__name__}")


@contextmanager
def intervene(lm, *edits: Edit, batch: Batch | None = None, reference=None, strict: bool = True) -> Iterator[Trace]:
    """Install ``edits`` on ``lm`` for the duration of the block; yields a ``Trace``.

    ``batch`` is the batch the block will run (needed for positions, mean/resample/noise); ``reference`` a
    ``Reference`` (or a ``Batch``, wrapped) for ``mean`` and reference ``resample``. Hooks are removed on
    every exit; with ``strict`` (default) leaving the block normally with an edit that never fired raises
    ``InterventionError``.
    """
    ref = _as_reference(reference)
    trace = Trace(tuple(edits))
    handles: list = []
    _prepare_reference(lm, edits, ref)  # before any hook exists: the reference runs the clean model
    try:
        for slot, edit in enumerate(edits):
            if not isinstance(edit, (Ablate, AddVector, Patch)):
                raise InterventionError(f"intervene: {edit!r} is not an edit (Ablate, AddVector, Patch)")
            handles += _install(lm, _Bound(lm, edit, slot, trace, batch, ref))
        yield trace
    finally:
        for handle in handles:
            handle.remove()
    if strict:
        trace.check()


# --------------------------------------------------------------------------------------------- running


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
    cap = getattr(getattr(lm.adapter._base(lm.model), "config", None), "final_logit_softcapping", None)
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
def capture(lm, batch: Batch, sites: Sequence[Site]) -> dict[Site, Captured]:
    """Activations of ``sites`` on a clean forward of ``batch`` (values detached, on the model's device)."""
    store: dict[Site, Tensor] = {}
    handles = []
    layers = lm.adapter.layers(lm.model)
    try:
        for site in sites:
            layer = layers[site.layer]
            if site.component in ("layer", "resid"):
                def hook(module, args, kwargs, output, site=site):
                    out, _ = _split_output(output)
                    store[site] = (out - _hidden_in(args, kwargs)) if site.component == "layer" else out
                handles.append(layer.register_forward_hook(hook, with_kwargs=True))
            elif site.component == "head":
                hd = lm.adapter.head_dim(lm.model)
                lo, hi = site.head * hd, (site.head + 1) * hd

                def pre(module, args, site=site, lo=lo, hi=hi):
                    store[site] = args[0][..., lo:hi]
                handles.append(lm.adapter.attn_out_proj(layer).register_forward_pre_hook(pre))
            else:
                target = (lm.adapter.attn(layer) if site.component == "attn" else lm.adapter.mlp(layer)
                          if site.component == "mlp" else lm.adapter.module(layer, site.module))

                def out_hook(module, args, output, site=site):
                    store[site] = _split_output(output)[0]
                handles.append(target.register_forward_hook(out_hook))
        lm.model(**batch.model_inputs())
    finally:
        for handle in handles:
            handle.remove()
    missing = [s.label() for s in sites if s not in store]
    if missing:
        raise InterventionError(f"capture: sites never reached: {missing}")
    return {s: Captured(s, store[s].detach(), batch) for s in sites}


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
    with its own ``create_causal_mask`` / ``create_sliding_window_causal_mask`` / ``rotary_emb``.
    """

    batch: Batch
    resid: list[Tensor]
    layer_kwargs: list[dict]
    logits: Tensor  # clean logits at the measured positions (fp32)
    positions: str


@torch.no_grad()
def clean_run(lm, batch: Batch, positions="answer") -> CleanRun:
    """Run the clean model once, keeping every layer's input residual and call arguments."""
    layers = lm.adapter.layers(lm.model)
    resid: list[Tensor | None] = [None] * (len(layers) + 1)
    kwargs_list: list[dict | None] = [None] * len(layers)
    handles = []

    def make_pre(idx):
        def pre(module, args, kwargs):
            resid[idx] = _hidden_in(args, kwargs).detach()
            kwargs_list[idx] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        return pre

    def last_hook(module, args, output):
        resid[len(layers)] = _split_output(output)[0].detach()

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
    return CleanRun(batch, resid, kwargs_list, logits, positions)


def _decoder(lm) -> nn.Module:
    """The decoder stack (embeddings, layers, final norm) without the LM head."""
    base = lm.adapter._base(lm.model)
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
    ``start_layer``; an edit earlier than that would never fire and raises).
    """
    layers = lm.adapter.layers(lm.model)
    with intervene(lm, *edits, batch=run.batch, reference=reference):
        h = hidden
        for idx in range(start_layer, len(layers)):
            out = layers[idx](h, **run.layer_kwargs[idx])
            h = _split_output(out)[0]
    return _measure_logits(lm, run.batch, h, run.positions)


def edit_residual(lm, run: CleanRun, edit: Ablate, reference=None) -> tuple[Tensor, Trace]:
    """The residual after layer ``edit.layer`` under a ``layer``/``resid`` ablation, computed from the clean run
    without re-running the layer (its clean input and output are both cached). Returns (residual, trace)."""
    if not isinstance(edit, Ablate) or edit.component not in ("layer", "resid"):
        raise InterventionError("edit_residual handles Ablate('layer'|'resid', ...) only")
    trace = Trace((edit,))
    ref = _as_reference(reference)
    _prepare_reference(lm, [edit], ref)
    bound = _Bound(lm, edit, 0, trace, run.batch, ref)
    inp, out = run.resid[edit.layer], run.resid[edit.layer + 1]
    new = bound.apply(out) if edit.component == "resid" else bound.apply_contribution(inp, out)
    trace.check()
    return new, trace
