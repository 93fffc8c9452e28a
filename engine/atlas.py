"""The causal atlas: the effect of ablating each layer (or head / module) on the next-token distribution.

``atlas(lm, examples, method="zero", component="layer")`` ablates one layer at a time and measures
KL(clean || ablated) of the next-token distribution (nats) at the answer position (or averaged over all
real positions, ``measure="all"``), per example. Results keep every example's effect so that:

* family effects (mean over the family's examples) and the mean over families are reported;
* the hub (argmax layer of the mean over families) comes with the runner-up and a stratified bootstrap CI
  of the gap between them: when the CI includes 0 the atlas says "no hub" (``hub=None, tie=True``), never
  argmax's first index (the seed's "hub at L0" in bias-free models was exactly such a tie);
* per-family hubs get the same treatment;
* the ``information_erasing`` guard flags ablations after which two unrelated prompts give nearly the same
  output distribution (zeroing the residual stream does that): such an ablation measures "destroy
  everything", not the layer.

Speed: the sweep runs the clean model once per batch, keeping the residual entering every layer and the
exact layer call arguments (masks, rotary embeddings), then for each ablated layer runs only the layers
after it (``layer``/``resid``: the ablated residual is computed from the cached input and output of the
layer, which is not re-run) and applies the final norm and LM head only at measured positions.
``fast=False`` runs the plain loop (one full hooked forward per layer) and is what the fast path is tested
against. Examples are batched by token length (less padding); position ids follow the attention mask, so an
example's effects do not depend on the batch it shares.

Options: everything besides the model and the examples that the numbers depend on is one frozen
``AtlasOptions`` (method, component, positions, measure, template, seed, layers, heads, modules, batch_size,
fast, n_resamples). ``atlas``, ``compute_cell``, ``merge_cells``, ``cache_key`` and ``Job`` take it, or its
fields as keyword arguments; the cache key is a function of (model identity, suite hash, options).

Splitting: a sweep is a list of ``Cell`` (example rows x layers, ``plan_cells``); ``compute_cell`` computes
one in any process, ``merge_cells`` assembles the ``Atlas`` (checking every (example, layer) is covered once).
A ``Job`` is one atlas as plain data (model key or path, dtype / quant, examples, options, cells): the one
format the executors run (``engine.executors``, ``atlas(..., executor=obj)``), with one run function
(``run_cell``, which loads the model once per process through ``engine.models.shared``) and one merge
(``merge_job``).

API::

    atlas(lm, examples, options=None, *, reference, cache, progress, executor, **option_fields) -> Atlas
    replicate(lm, seeds, sampler=None, **atlas_kwargs) -> Replication;  prompt_overlap(samples) -> float
    plan_cells(examples, layers, *, by_family, layer_chunk, max_rows) -> list[Cell]
    compute_cell(lm, examples, cell, options=None, *, reference, progress, **option_fields) -> CellResult
    merge_cells(model_or_meta, examples, results, options=None, *, units, seconds, **option_fields) -> Atlas
    cache_key(lm, examples, options=None, *, reference, **option_fields) -> dict
    Job.plan(model, examples, options=None, *, dtype, quant, n_layers, by_family, layer_chunk, max_rows) -> Job
    run_cell(job, index, cache, max_models) -> dict;  merge_job(job, outputs, *, seconds) -> Atlas
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from engine import ENGINE_VERSION, metrics, stats
from engine.cache import cached, suite_hash
from engine.interventions import (
    MODULE_NAMES,
    Ablate,
    Batch,
    InterventionError,
    Reference,
    clean_run,
    edit_residual,
    encode,
    get_method,
    next_token_logits,
    run_from,
)
from engine.provenance import model_identity

ERASE_RATIO = 0.01  # ablated outputs of unrelated prompts are "nearly equal" below 1% of their clean divergence
LAYER_COMPONENTS = ("layer", "resid", "attn", "mlp")
UNIT_COMPONENTS = ("head", "module")


class AtlasError(ValueError):
    """An atlas was requested with inconsistent arguments."""


@dataclass
class Atlas:
    """One atlas: per-example effects and everything derived from them (see module docstring).

    ``per_example`` is [n_examples, n_layers] (or [n_examples, n_layers, n_units] for ``head`` / ``module``).
    ``argmax_layer`` is what a bare argmax returns (the seed protocol's hub), reported even over a tie;
    ``hub`` is set only when the gap to the runner-up has a bootstrap CI above 0.
    """

    model: str
    fingerprint: str
    arch: str
    n_layers: int
    method: str
    component: str
    positions: str
    measure: str
    template: str
    seed: int
    example_ids: list[str]
    example_families: list[str]
    per_example: np.ndarray
    units: list[str] | None = None
    layers: list[int] | None = None  # the layer axis (default: every layer)
    erase_ratio: list[float] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    seconds: float = 0.0
    suite_hash: str = ""
    fast: bool = True
    engine_version: str = ENGINE_VERSION
    n_resamples: int = stats.DEFAULT_RESAMPLES
    logit_effect: np.ndarray | None = None  # like per_example: drop of the answer token's centred logit
    correct: list[bool] | None = None  # per example: the clean model's top-1 at the answer is the target's token
    # derived (filled by __post_init__)
    families: list[str] = field(default_factory=list)
    effects: dict[str, np.ndarray] = field(default_factory=dict)
    mean_effect: np.ndarray | None = None
    argmax_layer: int = 0
    argmax_unit: str | None = None
    runner_up: int = 0
    runner_up_unit: str | None = None
    gap: stats.Interval | None = None
    tie: bool = True
    hub: int | None = None
    hub_unit: str | None = None
    family_argmax: dict[str, int] = field(default_factory=dict)
    family_hubs: dict[str, int | None] = field(default_factory=dict)
    family_gaps: dict[str, stats.Interval] = field(default_factory=dict)
    erasing_layers: list[int] = field(default_factory=list)
    information_erasing: bool = False

    def __post_init__(self):
        self.per_example = np.asarray(self.per_example, dtype=float)
        n = self.per_example.shape[0]
        if self.logit_effect is not None:
            self.logit_effect = np.asarray(self.logit_effect, dtype=float)
            if self.logit_effect.shape != self.per_example.shape or self.correct is None or len(self.correct) != n:
                raise AtlasError(f"logit_effect {self.logit_effect.shape} / correct do not match per_example "
                                 f"{self.per_example.shape}")
        if self.layers is None:
            self.layers = list(range(self.n_layers))
        if self.per_example.shape[1] != len(self.layers):
            raise AtlasError(f"per_example has {self.per_example.shape[1]} layers, the layer axis {len(self.layers)}")
        groups = self.example_families
        self.families = list(stats.group_indices(groups))
        self.effects = stats.family_means(self.per_example, groups)
        self.mean_effect = stats.mean_over_families(self.per_example, groups)
        n_units = 1 if self.units is None else len(self.units)
        flat = self.per_example.reshape(n, -1)
        a, b = stats.top_two(self.mean_effect.reshape(-1))
        self.argmax_layer, self.runner_up = self.layers[a // n_units], self.layers[b // n_units]
        if self.units is not None:
            self.argmax_unit, self.runner_up_unit = self.units[a % n_units], self.units[b % n_units]
        self.gap = _gap(flat, groups, a, b, self.seed, self.n_resamples)
        self.tie = not self.gap.low > 0.0
        self.hub = None if self.tie else self.argmax_layer
        self.hub_unit = None if self.tie else self.argmax_unit
        for fam, idx in stats.group_indices(groups).items():
            fa, fb = stats.top_two(flat[idx].mean(0))
            self.family_argmax[fam] = self.layers[fa // n_units]
            interval = _gap(flat[idx], [fam] * len(idx), fa, fb, self.seed, self.n_resamples)
            self.family_gaps[fam] = interval
            self.family_hubs[fam] = self.layers[fa // n_units] if interval.low > 0.0 else None
        self.erasing_layers = [self.layers[i] for i, r in enumerate(self.erase_ratio)
                               if np.isfinite(r) and r < ERASE_RATIO]
        self.information_erasing = bool(self.erasing_layers)

    # ----- views

    @property
    def n_examples(self) -> int:
        return int(self.per_example.shape[0])

    @property
    def hub_depth(self) -> float | None:
        """hub / (n_layers - 1), or None when there is no hub."""
        return None if self.hub is None else _depth(self.hub, self.n_layers)

    @property
    def argmax_depth(self) -> float:
        return _depth(self.argmax_layer, self.n_layers)

    @property
    def n_layers_swept(self) -> int:
        return len(self.layers)

    @property
    def layer_effect(self) -> np.ndarray:
        """[n_layers] mean over families (for unit atlases: the largest unit effect per layer)."""
        m = np.asarray(self.mean_effect)
        return m if m.ndim == 1 else m.max(-1)

    def to_json(self) -> dict:
        """Everything needed to rebuild the atlas (``from_json``) and to read it as a result file."""
        return {
            "kind": "atlas", "engine_version": self.engine_version,
            "model": self.model, "fingerprint": self.fingerprint, "arch": self.arch, "n_layers": self.n_layers,
            "method": self.method, "component": self.component, "positions": self.positions,
            "measure": self.measure, "metric": "kl_clean_vs_ablated_nats", "template": self.template,
            "seed": self.seed, "suite_hash": self.suite_hash, "fast": self.fast, "units": self.units,
            "layers": self.layers,
            "n_examples": self.n_examples, "families": self.families, "seconds": self.seconds,
            "effects": {f: _tolist(v) for f, v in self.effects.items()},
            "mean_effect": _tolist(self.mean_effect),
            "hub": self.hub, "hub_unit": self.hub_unit, "hub_depth": self.hub_depth, "tie": self.tie,
            "argmax_layer": self.argmax_layer, "argmax_unit": self.argmax_unit, "argmax_depth": self.argmax_depth,
            "runner_up": self.runner_up, "runner_up_unit": self.runner_up_unit, "gap": self.gap.to_json(),
            "family_hubs": self.family_hubs, "family_argmax": self.family_argmax,
            "family_gaps": {f: g.to_json() for f, g in self.family_gaps.items()},
            "information_erasing": self.information_erasing, "erasing_layers": self.erasing_layers,
            "erase_ratio": [None if not np.isfinite(r) else float(r) for r in self.erase_ratio],
            "unchanged": self.unchanged, "n_resamples": self.n_resamples,
            "example_ids": self.example_ids, "example_families": self.example_families,
            "per_example": _tolist(self.per_example),
            "logit_metric": "centred_answer_logit_drop",
            "logit_effect": None if self.logit_effect is None else _tolist(self.logit_effect),
            "correct": self.correct,
        }

    @classmethod
    def from_json(cls, data: dict) -> Atlas:
        if data.get("kind") != "atlas":
            raise AtlasError("not an atlas JSON object (field 'kind' != 'atlas')")
        keys = ("model", "fingerprint", "arch", "n_layers", "method", "component", "positions", "measure",
                "template", "seed", "example_ids", "example_families", "per_example", "units", "layers", "unchanged",
                "seconds", "suite_hash", "fast", "engine_version", "n_resamples")
        missing = [k for k in keys if k not in data]
        if missing:
            raise AtlasError(f"atlas JSON is missing fields {missing}")
        kwargs = {k: data[k] for k in keys}
        kwargs["erase_ratio"] = [float("nan") if r is None else r for r in data.get("erase_ratio", [])]
        kwargs["logit_effect"], kwargs["correct"] = data.get("logit_effect"), data.get("correct")
        return cls(**kwargs)

    def summary(self) -> str:
        head = (f"{self.model} {self.component}/{self.method} ({self.n_examples} examples, "
                f"{len(self.families)} families): ")
        if self.hub is None:
            text = (f"no hub (argmax L{self.argmax_layer} vs L{self.runner_up}: gap {self.gap.estimate:.4g}, "
                    f"CI [{self.gap.low:.4g}, {self.gap.high:.4g}] includes 0)")
        else:
            text = (f"hub L{self.hub} (depth {self.hub_depth:.2f}), runner-up L{self.runner_up}, gap "
                    f"{self.gap.estimate:.4g} CI [{self.gap.low:.4g}, {self.gap.high:.4g}]")
        if self.information_erasing:
            text += f"; information-erasing at {len(self.erasing_layers)}/{len(self.layers)} layers"
        return head + text


def _depth(layer: int, n_layers: int) -> float:
    return layer / (n_layers - 1) if n_layers > 1 else 0.0


def _tolist(x):
    return np.asarray(x, dtype=float).tolist()


def _gap(values: np.ndarray, groups: list[str], a: int, b: int, seed: int, n_resamples: int) -> stats.Interval:
    """The paired difference effect[a] - effect[b] with its CI (:func:`engine.decisions.interval`: stratified t, or
    sign flips with one example in some family); (-inf, inf) where no CI can be formed. A figure for the CLI and
    plots: the claims decide with :func:`engine.decisions.argmax` (this gap keeps the argmax chosen on the same
    data)."""
    from engine import decisions

    diffs = values[:, a] - values[:, b] if values.shape[1] > 1 else values[:, a]
    iv = decisions.interval(diffs, groups, n_resamples=n_resamples, seed=seed)
    if iv.low is None:
        return stats.Interval(iv.estimate, float("-inf"), float("inf"))
    return stats.Interval(iv.estimate, float(iv.low), float(iv.high))


# --------------------------------------------------------------------------------------------- options


def _freeze(value):
    """Lists (nested) as tuples, so options are hashable; strings and numbers unchanged."""
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def _thaw(value):
    """Tuples (nested) as lists: the JSON form."""
    return [_thaw(v) for v in value] if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class AtlasOptions:
    """Everything, besides the model and the examples, that an atlas's numbers depend on.

    ``atlas``, ``compute_cell``, ``merge_cells``, ``cache_key`` and ``Job`` all take one of these (or its fields
    as keyword arguments: ``AtlasOptions.of``). Every field can change the result, so the cache key holds all
    of them: ``batch_size`` decides which prompts share a batch (padding and matmul shapes: float32 rounding;
    and the information-erasing guard pairs prompts within a batch), ``fast`` agrees with the plain loop to
    ~1e-6, not bit for bit, and ``n_resamples`` sets the bootstrap CIs. ``layers`` None means every layer
    (``resolved`` makes it explicit); ``heads`` / ``modules`` None mean every head / module.
    """

    method: str = "zero"
    component: str = "layer"
    positions: Any = "all"  # a position class, or token indices (lists are stored as tuples)
    measure: str = "answer"
    template: str = "auto"
    seed: int = 0
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    modules: tuple[str, ...] | None = None
    batch_size: int = 32
    fast: bool = True
    n_resamples: int = stats.DEFAULT_RESAMPLES

    #: the fields a cell's numbers depend on (``layers`` come from the cell, ``n_resamples`` only enters the merge)
    CELL_FIELDS: ClassVar[tuple[str, ...]] = ("method", "component", "positions", "measure", "template", "seed",
                                              "batch_size", "fast", "heads", "modules")

    def __post_init__(self):
        if self.component not in LAYER_COMPONENTS + UNIT_COMPONENTS:
            raise AtlasError(f"unknown component {self.component!r}; choose from {LAYER_COMPONENTS + UNIT_COMPONENTS}")
        if self.measure not in ("answer", "all"):
            raise AtlasError(f"measure must be 'answer' or 'all', got {self.measure!r}")
        for name in ("positions", "layers", "heads", "modules"):
            object.__setattr__(self, name, _freeze(getattr(self, name)))

    @classmethod
    def of(cls, options: AtlasOptions | None = None, **fields) -> AtlasOptions:
        """``options`` (default: the defaults) with ``fields`` replaced: ``AtlasOptions.of(method="mean")``."""
        base = cls() if options is None else options
        return replace(base, **fields) if fields else base

    def resolved(self, n_layers: int) -> AtlasOptions:
        """These options with the layer axis explicit (``layers=None``: all ``n_layers``), checked against it."""
        layers = tuple(range(n_layers)) if self.layers is None else self.layers
        if len(layers) < 1 or any(not 0 <= l < n_layers for l in layers):
            raise AtlasError(f"layers must lie in 0..{n_layers - 1}, got {list(layers)}")
        return replace(self, layers=layers)

    def to_json(self, fields: Sequence[str] | None = None) -> dict:
        """The options as plain JSON (tuples as lists); ``fields`` selects some (default all)."""
        names = [f.name for f in dataclasses.fields(self)] if fields is None else list(fields)
        return {name: _thaw(getattr(self, name)) for name in names}

    @classmethod
    def from_json(cls, data: dict) -> AtlasOptions:
        return cls(**data)


def sweep_units(lm, options: AtlasOptions) -> tuple[list, list[str] | None]:
    """The units swept per layer (head indices / module names; ``[None]`` for layer components) and their labels."""
    if options.component == "head":
        chosen = list(range(lm.adapter.n_heads(lm.model))) if options.heads is None else list(options.heads)
        return chosen, [f"h{h}" for h in chosen]
    if options.component == "module":
        chosen = list(MODULE_NAMES) if options.modules is None else list(options.modules)
        return chosen, list(chosen)
    return [None], None


# --------------------------------------------------------------------------------------------- computing


def concat(parts: Sequence[Atlas]) -> Atlas:
    """One atlas of the examples of ``parts`` (the same model, options and layer axis), in order: per-example
    rows are stacked and everything derived is recomputed. The erasure guard's ratio per layer is the largest of
    the parts' (a layer counts as erasing only where every part shows it); unchanged counts and seconds add up."""
    first = parts[0]
    same = ("model", "fingerprint", "arch", "n_layers", "method", "component", "positions", "measure", "template",
            "seed", "units", "layers", "n_resamples")
    for other in parts[1:]:
        moved = [k for k in same if getattr(other, k) != getattr(first, k)]
        if moved:
            raise AtlasError(f"concat: the parts differ in {moved}")
    data = first.to_json()
    data["example_ids"] = [ex for a in parts for ex in a.example_ids]
    data["example_families"] = [f for a in parts for f in a.example_families]
    data["per_example"] = np.concatenate([a.per_example for a in parts]).tolist()
    with_logits = all(a.logit_effect is not None for a in parts)
    data["logit_effect"] = np.concatenate([a.logit_effect for a in parts]).tolist() if with_logits else None
    data["correct"] = [c for a in parts for c in a.correct] if with_logits else None
    ratios = [a.erase_ratio for a in parts if a.erase_ratio]
    data["erase_ratio"] = [None if not np.isfinite(r) else float(r) for r in np.max(ratios, axis=0)] if ratios \
        and len({len(r) for r in ratios}) == 1 else []
    data["unchanged"] = [int(sum(u)) for u in zip(*(a.unchanged for a in parts))] if all(
        a.unchanged for a in parts) else first.unchanged
    data["seconds"] = float(sum(a.seconds for a in parts))
    data["suite_hash"] = hashlib.sha256("+".join(a.suite_hash for a in parts).encode()).hexdigest()
    return Atlas.from_json(data)


def _edit(options: AtlasOptions, layer: int, unit) -> Ablate:
    component = options.component
    return Ablate(component, layer, options.method, positions=None if options.positions == "all" else options.positions,
                  seed=options.seed, head=unit if component == "head" else None,
                  module=unit if component == "module" else None)


def erase_pairs(batch: Batch) -> list[tuple[int, int]]:
    """Pairs of unrelated prompts in a batch: different family where possible (the first such partner, stepping
    from half the batch away), else the last other prompt of different text in that order; a prompt without one
    (a batch of one, or of one text) gets no pair."""
    m = len(batch)
    first = max(1, m // 2)
    pairs = []
    for k in range(m):
        others = [j for j in ((k + step) % m for step in range(first, first + m))
                  if j != k and batch.texts[j] != batch.texts[k]]
        if others:
            pairs.append((k, next((j for j in others if batch.families[j] != batch.families[k]), others[-1])))
    return pairs


# ----- cells: the unit of work of a sweep (a subset of the examples x a range of layers)


@dataclass(frozen=True)
class Cell:
    """One piece of a sweep: examples ``rows`` (indices into the sweep's example list) x ``layers``.

    Cells are independent: any executor (in-process, a Ray worker, another machine) computes them with
    ``compute_cell`` / ``run_cell`` and ``merge_cells`` / ``merge_job`` assemble the atlas. Per-example effects
    do not depend on how the layers were split; only the information-erasing guard's prompt pairs are drawn
    within a cell's batches.
    """

    rows: tuple[int, ...]
    layers: tuple[int, ...]
    label: str = ""

    def to_json(self) -> dict:
        return {"rows": list(self.rows), "layers": list(self.layers), "label": self.label}

    @classmethod
    def from_json(cls, data: dict) -> Cell:
        return cls(tuple(int(r) for r in data["rows"]), tuple(int(l) for l in data["layers"]), data.get("label", ""))


@dataclass
class CellResult:
    """Effects of one cell: ``per_example`` [len(rows), len(layers), n_units] (KL, nats) plus the guard's sums."""

    rows: list[int]
    layers: list[int]
    per_example: np.ndarray
    js_clean: float  # summed JS divergence of the clean outputs of the cell's prompt pairs
    js_ablated: np.ndarray  # [len(layers), n_units] the same for the ablated outputs
    unchanged: list[int]  # per layer: batches where the ablation left the residual unchanged
    seconds: float = 0.0
    logit_effect: np.ndarray | None = None  # like per_example: the centred answer logit's drop (metrics.logit_drop)
    correct: list[bool] | None = None  # per row: the clean top-1 at the answer position is the target's first token

    def to_json(self) -> dict:
        return {"rows": list(self.rows), "layers": list(self.layers), "per_example": _tolist(self.per_example),
                "js_clean": float(self.js_clean), "js_ablated": _tolist(self.js_ablated),
                "unchanged": list(self.unchanged), "seconds": float(self.seconds),
                "logit_effect": None if self.logit_effect is None else _tolist(self.logit_effect),
                "correct": None if self.correct is None else [bool(c) for c in self.correct]}

    @classmethod
    def from_json(cls, data: dict) -> CellResult:
        return cls(rows=list(data["rows"]), layers=list(data["layers"]),
                   per_example=np.asarray(data["per_example"], dtype=float), js_clean=float(data["js_clean"]),
                   js_ablated=np.asarray(data["js_ablated"], dtype=float), unchanged=list(data["unchanged"]),
                   seconds=float(data.get("seconds", 0.0)),
                   logit_effect=None if data.get("logit_effect") is None else np.asarray(data["logit_effect"], float),
                   correct=data.get("correct"))


def plan_cells(examples: Sequence, layers: Sequence[int], *, by_family: bool = False,
               layer_chunk: int | None = None, max_rows: int | None = None) -> list[Cell]:
    """Split a sweep into cells: examples grouped by family (``by_family``) or all together, at most
    ``max_rows`` examples per cell, and layers in consecutive ranges of ``layer_chunk`` (None: all layers).

    Splitting by layer range loses a little of the fast path's work sharing (each cell runs its own clean
    forward); splitting by examples loses none."""
    if layer_chunk is not None and layer_chunk < 1:
        raise AtlasError(f"layers per cell must be >= 1, got {layer_chunk}")
    layers = list(layers)
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        key = (getattr(ex, "family", "") or "prompts") if by_family else "all"
        groups.setdefault(key, []).append(i)
    step = max(1, layer_chunk or len(layers))
    cells = []
    for label, rows in groups.items():
        size = max(1, max_rows or len(rows))
        for lo in range(0, len(rows), size):
            for llo in range(0, len(layers), step):
                chunk = tuple(layers[llo:llo + step])
                cells.append(Cell(tuple(rows[lo:lo + size]), chunk, f"{label}[{lo}:{lo + size}]L{chunk[0]}-{chunk[-1]}"))
    return cells


def cell_steps(cell: Cell, batch_size: int) -> int:
    """Progress steps of a cell: one per (batch, layer)."""
    return -(-len(cell.rows) // max(1, batch_size)) * len(cell.layers)


def _reference_for(lm, examples, reference, options: AtlasOptions, unit_ids, layers) -> Reference | None:
    kind = get_method(options.method).reference  # what the registered method needs prepared: means / activations
    if kind is None:
        return None
    ref_batch = encode(lm, examples if reference is None else reference, template=options.template)
    ref = Reference(ref_batch, shift=max(1, len(ref_batch) // 2), chunk_size=options.batch_size)
    sites = [_edit(options, l, u).site for l in layers for u in unit_ids]
    ref.prepare_kind(lm, sites, kind)
    return ref


@torch.no_grad()
def compute_cell(lm, examples: Sequence, cell: Cell, options: AtlasOptions | None = None, *, reference=None,
                 progress: Callable[[int], None] | None = None, **fields) -> CellResult:
    """Effects of ablating each of ``cell.layers`` (x head / module) on the examples ``cell.rows``.

    ``options`` (or its fields as keywords; ``layers`` and ``n_resamples`` play no part here). ``examples`` is
    the *whole* sweep's list (rows index into it; noise seeds and resample donors follow the example's index in
    it, so a cell gives the numbers the whole sweep gives). Examples are batched by token length (less padding).
    ``fast`` restarts each ablation from the cached clean residual and takes logits only at measured positions;
    ``fast=False`` is the plain loop: one full hooked forward per layer. ``progress(k)`` is called with the
    number of (batch, layer) steps done since the last call.
    """
    start_time = time.perf_counter()
    options = AtlasOptions.of(options, **fields)
    component, measure, batch_size, fast = options.component, options.measure, options.batch_size, options.fast
    layer_list = list(cell.layers)
    unit_ids, _labels = sweep_units(lm, options)
    ref = _reference_for(lm, examples, reference, options, unit_ids, layer_list)
    rows = list(cell.rows)
    batch = encode(lm, [examples[r] for r in rows], template=options.template)
    batch = replace(batch, index=torch.tensor(rows, dtype=torch.long))
    lengths = batch.attention_mask.sum(1).cpu()
    order = sorted(range(len(rows)), key=lambda i: (int(lengths[i]), i))  # length buckets: less padding
    n, L, U = len(rows), len(layer_list), len(unit_ids)
    per_example = np.zeros((n, L, U))
    logit_effect = np.zeros((n, L, U))  # the logit-linear figure beside KL (metrics.logit_drop at the answer)
    correct = np.zeros(n, dtype=bool)  # the clean top-1 at the answer is the target's first token
    js_clean, js_abl = 0.0, np.zeros((L, U))
    unchanged = np.zeros(L, dtype=int)
    for lo in range(0, n, max(1, batch_size)):
        picked = order[lo:lo + batch_size]
        chunk = batch.select(picked)
        pairs = erase_pairs(chunk)
        run = clean_run(lm, chunk, positions=measure) if fast else None
        clean = run.logits if fast else next_token_logits(lm, chunk, positions=measure)
        clean_answer = _answer_logits(chunk, clean, measure)
        read = metrics.answer_ids(clean_answer, chunk.target_ids)
        correct[picked] = (clean_answer.argmax(-1).cpu() == chunk.target_ids.cpu()).numpy()
        if pairs:
            js_clean += float(pair_js(_answer_logits(chunk, clean, measure), pairs).sum())
        for li, layer in enumerate(layer_list):
            for ui, unit in enumerate(unit_ids):
                edit = _edit(options, layer, unit)
                if not fast:
                    edited = next_token_logits(lm, chunk, edit, positions=measure, reference=ref)
                elif component in ("layer", "resid"):
                    hidden, trace = edit_residual(lm, run, edit, reference=ref)
                    unchanged[li] += int(not trace.changed[0])
                    edited = run_from(lm, run, layer + 1, hidden)
                else:
                    edited = run.rerun(edit, reference=ref)
                if measure == "answer":
                    effect = metrics.kl(clean, edited)
                else:
                    effect = metrics.kl_over_positions(clean, edited, chunk.real_mask())
                per_example[picked, li, ui] = effect.double().cpu().numpy()
                logit_effect[picked, li, ui] = metrics.logit_drop(
                    clean_answer, _answer_logits(chunk, edited, measure), read).double().cpu().numpy()
                if pairs:
                    js_abl[li, ui] += float(pair_js(_answer_logits(chunk, edited, measure), pairs).sum())
            if progress is not None:
                progress(1)
    if not np.isfinite(per_example).all():
        raise InterventionError("atlas: non-finite effects (NaN/inf logits); check the model's dtype")
    return CellResult(rows=rows, layers=layer_list, per_example=per_example, js_clean=js_clean, js_ablated=js_abl,
                      unchanged=unchanged.tolist(), seconds=time.perf_counter() - start_time,
                      logit_effect=logit_effect, correct=correct.tolist())


def model_meta(lm) -> dict:
    """What an atlas records about its model (merge_cells takes this or the loaded model)."""
    return {"model": lm.key, "fingerprint": lm.fingerprint, "arch": lm.arch, "n_layers": lm.n_layers}


def merge_cells(model, examples: Sequence, results: Sequence[CellResult | dict], options: AtlasOptions | None = None,
                *, units: list[str] | None = None, seconds: float | None = None, **fields) -> Atlas:
    """Assemble an ``Atlas`` from cell results that together cover every (example, layer) exactly once.

    ``model`` is a loaded model or ``model_meta(lm)``; ``options`` (or its fields as keywords) those of the
    cells, whose ``layers`` is the atlas's layer axis (None: the cells' layers, sorted); ``units`` the head /
    module labels (None for layer components); ``seconds`` the sweep's wall time (default: the sum of the
    cells' compute times)."""
    options = AtlasOptions.of(options, **fields)
    meta = model if isinstance(model, dict) else model_meta(model)
    results = [r if isinstance(r, CellResult) else CellResult.from_json(r) for r in results]
    layer_list = sorted({l for r in results for l in r.layers}) if options.layers is None else list(options.layers)
    col = {l: i for i, l in enumerate(layer_list)}
    n, L = len(examples), len(layer_list)
    U = results[0].per_example.shape[-1] if results else 1
    per_example = np.full((n, L, U), np.nan)
    with_logits = all(r.logit_effect is not None and r.correct is not None for r in results)
    logit_effect = np.full((n, L, U), np.nan)
    correct: list[bool | None] = [None] * n
    covered = np.zeros((n, L), dtype=int)
    js_clean, js_abl = np.zeros(L), np.zeros((L, U))
    unchanged = np.zeros(L, dtype=int)
    for r in results:
        cols = [col[l] for l in r.layers]
        per_example[np.ix_(r.rows, cols)] = r.per_example
        if with_logits:
            logit_effect[np.ix_(r.rows, cols)] = r.logit_effect
            for row, ok in zip(r.rows, r.correct):
                correct[row] = bool(ok)
        covered[np.ix_(r.rows, cols)] += 1
        js_clean[cols] += r.js_clean
        js_abl[cols] += r.js_ablated
        unchanged[cols] += np.asarray(r.unchanged, dtype=int)
    if (covered != 1).any():
        bad = np.argwhere(covered != 1)[:5].tolist()
        raise AtlasError(f"merge_cells: the cells do not cover every (example, layer) exactly once, e.g. {bad}")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(js_clean > 0, js_abl.min(-1) / np.where(js_clean > 0, js_clean, 1.0), np.nan)
    ids = [getattr(ex, "id", None) or f"prompt{i}" for i, ex in enumerate(examples)]
    fams = [getattr(ex, "family", "") or "prompts" for ex in examples]
    values = per_example[:, :, 0] if units is None else per_example
    logits = (logit_effect[:, :, 0] if units is None else logit_effect) if with_logits else None
    total = float(sum(r.seconds for r in results)) if seconds is None else float(seconds)
    return Atlas(
        model=meta["model"], fingerprint=meta["fingerprint"], arch=meta["arch"], n_layers=meta["n_layers"],
        layers=layer_list, method=options.method, component=options.component, positions=_thaw(options.positions),
        measure=options.measure, template=options.template, seed=options.seed, example_ids=ids,
        example_families=fams, per_example=values, units=units, erase_ratio=[float(x) for x in ratio],
        unchanged=unchanged.tolist(), seconds=total, suite_hash=suite_hash(examples), fast=options.fast,
        n_resamples=options.n_resamples, logit_effect=logits, correct=correct if with_logits else None,
    )


def cache_key(lm, examples: Sequence, options: AtlasOptions | None = None, *, reference=None, **fields) -> dict:
    """The content-addressed cache key of an atlas (``engine.cache`` adds the engine version): a function of
    the model's identity (``model_identity``), the suite sample's hash, the options (layer axis explicit) and
    the hash of a custom reference sample."""
    options = AtlasOptions.of(options, **fields).resolved(lm.n_layers)
    return {"kind": "atlas", **model_identity(lm), "suite": suite_hash(examples), "n_examples": len(examples),
            **options.to_json(),
            "reference": None if reference is None else suite_hash(reference)}


# ----- jobs: one atlas as plain data, for executors in this or other processes / machines


@dataclass(frozen=True)
class Job:
    """One atlas to compute: what to load (``model``, a registry key or a local directory, in ``dtype`` /
    ``quant``; ``fingerprint``: the weights the workers must find, None = whatever they load), the whole sample
    (``examples``), the options (layer axis explicit) and the cells it is cut into.

    ``run_cell(job, i)`` computes cell ``i`` in any process that can load the model; ``merge_job(job, outputs)``
    assembles the cells' outputs. The local and the Ray executor (``engine.executors``) both run jobs, so they
    compute the same cells and give the same bits. ``to_json`` / ``from_json``: the job as plain data.
    """

    model: str
    examples: tuple
    options: AtlasOptions
    cells: tuple[Cell, ...]
    dtype: str = "fp32"
    quant: str | None = None
    fingerprint: str | None = None
    label: str = ""

    @classmethod
    def plan(cls, model: str, examples: Sequence, options: AtlasOptions | None = None, *, dtype="fp32",
             quant: str | None = None, fingerprint: str | None = None, n_layers: int | None = None,
             label: str = "", by_family: bool = False, layer_chunk: int | None = None, max_rows: int | None = None,
             **fields) -> Job:
        """A job whose cells follow ``plan_cells(by_family, layer_chunk, max_rows)``. ``n_layers`` defaults to
        ``engine.models.metadata(model)`` (the registry, or the directory's config.json: no weights loaded)."""
        from engine import models

        if len(examples) < 1:
            raise AtlasError("atlas: no examples")
        n_layers = models.metadata(model)["n_layers"] if n_layers is None else n_layers
        options = AtlasOptions.of(options, **fields).resolved(n_layers)
        cells = plan_cells(examples, options.layers, by_family=by_family, layer_chunk=layer_chunk, max_rows=max_rows)
        return cls(model=model, examples=tuple(examples), options=options, cells=tuple(cells),
                   dtype=models.dtype_info(dtype).name, quant=quant, fingerprint=fingerprint, label=label or model)

    def cell_label(self, index: int) -> str:
        return f"{self.label}/{self.cells[index].label}"

    def describe(self) -> dict:
        """The job without its examples and cells (the atlas keeps the examples' ids and the suite hash)."""
        return {"model": self.model, "label": self.label, "dtype": self.dtype, "quant": self.quant,
                "fingerprint": self.fingerprint, **self.options.to_json(), "n_examples": len(self.examples),
                "n_cells": len(self.cells)}

    def to_json(self) -> dict:
        return {"model": self.model, "dtype": self.dtype, "quant": self.quant, "fingerprint": self.fingerprint,
                "label": self.label,
                "examples": [ex if isinstance(ex, str) else ex.to_dict() for ex in self.examples],
                "options": self.options.to_json(), "cells": [c.to_json() for c in self.cells]}

    @classmethod
    def from_json(cls, data: dict) -> Job:
        from engine import tasks

        return cls(model=data["model"], dtype=data["dtype"], quant=data["quant"], fingerprint=data["fingerprint"],
                   label=data["label"],
                   examples=tuple(ex if isinstance(ex, str) else tasks.Example(**ex) for ex in data["examples"]),
                   options=AtlasOptions.from_json(data["options"]),
                   cells=tuple(Cell.from_json(c) for c in data["cells"]))


def cell_key(lm, job: Job, cell: Cell) -> dict:
    """The cache key of one cell's result (``run_cell(..., cache=True)``)."""
    return {"kind": "atlas_cell", **model_identity(lm), "suite": suite_hash(job.examples),
            "options": job.options.to_json(AtlasOptions.CELL_FIELDS), "rows": list(cell.rows),
            "layers": list(cell.layers)}


def run_cell(job: Job, index: int, cache: bool = False, max_models: int | None = 1) -> dict:
    """Compute cell ``index`` of ``job`` in this process: ``{"meta", "units", "result"}`` (plain data).

    The model comes from this process's model cache (``engine.models.shared``, at most ``max_models`` kept), so a
    worker loads it once. ``meta`` / ``units`` are what ``merge_job`` needs from the model (a driver never loads
    it). ``cache=True`` stores / reads the cell's result in the content-addressed cache of this machine."""
    from engine import models

    lm = models.shared(job.model, dtype=job.dtype, quant=job.quant, max_models=max_models)
    if job.fingerprint is not None and lm.fingerprint != job.fingerprint:
        raise AtlasError(f"{job.label}: {job.model!r} loads here as weights {lm.fingerprint}, the job is for "
                         f"{job.fingerprint} (a model an executor runs must load by key or path)")
    cell = job.cells[index]

    def compute() -> dict:
        return compute_cell(lm, list(job.examples), cell, job.options).to_json()

    if cache:
        result = cached(cell_key(lm, job, cell), compute)
    else:
        result = compute()
    return {"meta": model_meta(lm), "units": sweep_units(lm, job.options)[1], "result": result}


def merge_job(job: Job, outputs: Sequence[dict], *, seconds: float | None = None) -> Atlas:
    """The atlas of ``job`` from its cells' ``run_cell`` outputs (``merge_cells`` checks they tile it exactly
    once); ``seconds`` defaults to the sum of the cells' compute times."""
    if not outputs:
        raise AtlasError(f"{job.label}: no cell outputs to merge")
    meta, units = outputs[0]["meta"], outputs[0]["units"]
    if any(o["meta"] != meta for o in outputs):
        raise AtlasError(f"{job.label}: cells were computed on different weights: "
                         f"{sorted({o['meta']['fingerprint'] for o in outputs})}")
    return merge_cells(meta, list(job.examples), [o["result"] for o in outputs], job.options, units=units,
                       seconds=seconds)


# ----- the atlas


def atlas(lm, examples: Sequence, options: AtlasOptions | None = None, *, reference=None, cache: bool = False,
          progress: Callable[[int, int], None] | None = None, executor=None, **fields) -> Atlas:
    """Ablate each layer (x head / module) of ``lm`` on ``examples`` and measure KL(clean || ablated).

    ``options`` (an ``AtlasOptions``) or its fields as keywords (``method``, ``component``, ``positions``,
    ``measure``, ``template``, ``seed``, ``layers``, ``heads``, ``modules``, ``batch_size``, ``fast``,
    ``n_resamples``): keywords override ``options``. ``positions``: where the ablation applies ("all" real
    tokens, or a class: answer, last3, first, bos, body). ``measure``: KL at the answer position ("answer") or
    averaged over all real positions ("all"). ``reference``: examples whose per-class means (``mean``) or
    activations (``resample``: example ``g`` takes reference example ``g + n/2``, so usually another family)
    are used; default: ``examples``. ``layers`` restricts the sweep (default all). ``cache=True`` reads/writes
    the on-disk result cache. ``progress(done, total)`` is called after each (batch, layer) step (in this
    process only). ``executor``: None (in this process) or an executor of ``engine.executors`` (``plan``: the
    ``plan_cells`` arguments; ``run(jobs) -> outputs``), whose workers load the model by key or path and must
    find the same weights (``Job.fingerprint``, checked).
    """
    options = AtlasOptions.of(options, **fields)
    if len(examples) < 1:
        raise AtlasError("atlas: no examples")
    options = options.resolved(lm.n_layers)
    if cache:
        remote = None
        if executor is None:  # a claims run on Ray: a miss is computed there (engine.executors.remote)
            from engine import executors

            remote = executors.remote(sweep_json, lm, list(examples), options,
                                      None if reference is None else list(reference), label=f"atlas {lm.key}")
        data = cached(cache_key(lm, examples, options, reference=reference),
                      lambda: _sweep(lm, examples, options, reference, progress, executor).to_json(), remote=remote)
        return Atlas.from_json(data)
    return _sweep(lm, examples, options, reference, progress, executor)


def sweep_json(lm, examples: Sequence, options: AtlasOptions, reference=None) -> dict:
    """The cached payload of ``atlas(lm, examples, options, reference=reference, cache=True)``, computed in this
    process: what a measurement executor's worker runs on a cache miss."""
    return _sweep(lm, examples, options, reference, None, None).to_json()


def _sweep(lm, examples: Sequence, options: AtlasOptions, reference, progress, executor) -> Atlas:
    start = time.perf_counter()
    if executor is not None:
        from engine import models

        if reference is not None:
            raise AtlasError("atlas: a custom reference sample is not supported with an executor")
        job = Job.plan(lm.spec.path or lm.key, examples, options, dtype=models.dtype_info(lm.dtype).name,
                       quant=lm.quant, fingerprint=lm.fingerprint, n_layers=lm.n_layers, **executor.plan)
        [outputs] = executor.run([job])
        return merge_job(job, outputs, seconds=time.perf_counter() - start)
    [cell] = plan_cells(examples, options.layers)
    total, done = cell_steps(cell, options.batch_size), 0

    def advance(k: int) -> None:
        nonlocal done
        done += k
        if progress is not None:
            progress(done, total)
    result = compute_cell(lm, examples, cell, options, reference=reference, progress=advance)
    return merge_cells(lm, examples, [result], options, units=sweep_units(lm, options)[1],
                       seconds=time.perf_counter() - start)


def _answer_logits(batch: Batch, logits: torch.Tensor, measure: str) -> torch.Tensor:
    if measure == "answer":
        return logits
    rows = torch.arange(len(batch), device=logits.device)
    return logits[rows, batch.answer_pos.to(logits.device)]


def pair_js(logits: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    a = torch.tensor([p[0] for p in pairs], device=logits.device)
    b = torch.tensor([p[1] for p in pairs], device=logits.device)
    return metrics.js(logits[a], logits[b])


# --------------------------------------------------------------------------------------------- replication


def prompt_overlap(samples: Sequence[Sequence[Any]]) -> float:
    """Mean Jaccard overlap of the example-id sets of every pair of samples (1.0: the samples are identical,
    i.e. seeds did not resample; 1.0 as well for fewer than two samples, and for two empty ones).

    A sample is a list of examples (their ``id``) or of example ids / prompt strings."""
    sets = [{getattr(ex, "id", ex) for ex in s} for s in samples]
    pairs = [(i, j) for i in range(len(sets)) for j in range(i + 1, len(sets))]
    if not pairs:
        return 1.0
    return float(np.mean([len(sets[i] & sets[j]) / len(sets[i] | sets[j]) if sets[i] | sets[j] else 1.0
                          for i, j in pairs]))


@dataclass
class Replication:
    """Atlases of one model under several seeds, each seed drawing its own sample of the suite."""

    seeds: list[int]
    atlases: list[Atlas]

    @property
    def hubs(self) -> list[int | None]:
        return [a.hub for a in self.atlases]

    @property
    def argmax_layers(self) -> list[int]:
        return [a.argmax_layer for a in self.atlases]

    @property
    def hub_std(self) -> float | None:
        """Std of the hub layer over seeds (None when some seed has no hub)."""
        hubs = self.hubs
        return None if any(h is None for h in hubs) else float(np.std(hubs))

    @property
    def argmax_std(self) -> float:
        return float(np.std(self.argmax_layers))

    @property
    def stable(self) -> bool:
        """Every seed found a hub, and the same one."""
        hubs = self.hubs
        return all(h is not None for h in hubs) and len(set(hubs)) == 1

    @property
    def prompt_overlap(self) -> float:
        """``prompt_overlap`` of the seeds' example ids (1.0: seeds did not resample)."""
        return prompt_overlap([a.example_ids for a in self.atlases])

    def to_json(self) -> dict:
        return {"kind": "replication", "seeds": self.seeds, "hubs": self.hubs, "argmax_layers": self.argmax_layers,
                "hub_std": self.hub_std, "argmax_std": self.argmax_std, "stable": self.stable,
                "prompt_overlap": self.prompt_overlap, "atlases": [a.to_json() for a in self.atlases]}


def replicate(lm, seeds: Sequence[int], sampler: Callable[..., Sequence] | None = None, **atlas_kwargs) -> Replication:
    """One atlas per seed; ``sampler(seed=s)`` draws that seed's examples (default ``engine.tasks.sample``
    with 4 per family), so seeds change the data, not only the random state."""
    if sampler is None:
        from engine import tasks

        def sampler(seed):
            return tasks.sample(per_family=4, seed=seed)
    atlases = [atlas(lm, sampler(seed=s), seed=s, **atlas_kwargs) for s in seeds]
    return Replication(list(seeds), atlases)
