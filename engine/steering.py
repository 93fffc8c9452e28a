"""Steering: difference-of-means directions added to the residual stream, and what they do.

Two protocols (``/work/shared/seed-protocols.md``):

* **rigorous** (:func:`diff_of_means`, :func:`prepare`, :func:`steer`, :func:`sweep`, :func:`random_control`,
  :func:`transfer`): a direction per layer is the difference of the mean residual stream *after* layer ``l``
  at the answer position (the last prompt token) between two contrast sets of the suite (one family vs the
  rest, or clean vs corrupted prompts). It is added with a **signed** scale ``s`` to the residual after layer
  ``l`` at every real prompt token (``positions=None``; positions are configurable). Scale units:

  - ``"relative"`` (default): the added vector is ``s * r_l * unit(direction)``, where ``r_l`` is the mean
    L2 norm of the residual after layer ``l`` at the answer position over the contrast examples; ``s = 1``
    adds a vector as long as a typical residual there.
  - ``"absolute"``: the added vector is ``s * unit(direction)`` (norm ``|s|``, the seed's convention).

  Effects are measured at the answer position against the unsteered run of the same model and batch:
  ``KL(unsteered || steered)`` (nats, fp32) and the change of ``log P(target set)``, where the target set is
  a per-example set of token ids (the example's own answer token, or the answer tokens of a family).
  Negative scales suppress.

* **seed** (:func:`seed_protocol_steer`, :func:`seed_reference_steer`): the seed's method, faithfully,
  including its flaws: the direction is the mean of the prompt's own residual (layer output) over its tokens,
  normalised to norm ``|s|`` (the sign of ``s`` is dropped), added at all positions, one prompt per forward,
  KL at the last position computed with an fp16 softmax and taken as ``abs``. The seed's 0.021 denominator
  came from another procedure (fp32, a difference-of-means vector from 5 pairs, added at the last position
  only, a late layer): :func:`seed_reference_steer`.

Hooks are the engine's (``engine.interventions.AddVector`` inside ``intervene``/``run_from``); this module
never installs one itself, so a failed forward cannot leave a vector attached to the model.
"""

from __future__ import annotations

import gc
import math
import resource
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from engine import interventions as iv

SCALE_UNITS = ("relative", "absolute")
POOLINGS = ("answer", "mean")
DEFAULT_SCALES = (-1.0, -0.5, 0.5, 1.0)


class SteeringError(ValueError):
    """A steering measurement is misconfigured (bad layer, unit, empty contrast set, ...)."""


# --------------------------------------------------------------------------------------------- contrasts


@dataclass(frozen=True)
class Contrast:
    """Two example sets whose mean residuals differ by the direction: ``positive - negative``."""

    name: str
    positive: tuple
    negative: tuple

    def __post_init__(self):
        if not self.positive or not self.negative:
            raise SteeringError(f"contrast {self.name!r}: both sets need examples "
                                f"(positive {len(self.positive)}, negative {len(self.negative)})")


def family_contrast(examples: Sequence, family: str) -> Contrast:
    """``family`` vs every other family in ``examples``."""
    pos = tuple(ex for ex in examples if ex.family == family)
    neg = tuple(ex for ex in examples if ex.family != family)
    if not pos:
        raise SteeringError(f"family_contrast: no examples of family {family!r} "
                            f"(families present: {sorted({ex.family for ex in examples})})")
    return Contrast(f"{family}-vs-rest", pos, neg)


def clean_corrupt_contrast(examples: Sequence) -> Contrast:
    """Clean prompts vs their corrupted twins (examples without a ``corrupt`` prompt are skipped)."""
    from dataclasses import replace

    pairs = [ex for ex in examples if getattr(ex, "corrupt", None)]
    if not pairs:
        raise SteeringError("clean_corrupt_contrast: no example has a 'corrupt' prompt")
    corrupt = tuple(replace(ex, id=f"{ex.id}/corrupt", prompt=ex.corrupt,
                            target=ex.corrupt_target or ex.target) for ex in pairs)
    return Contrast("clean-vs-corrupt", tuple(pairs), corrupt)


# --------------------------------------------------------------------------------------------- residuals


@torch.no_grad()
def pooled_residuals(lm, examples: Sequence, layers: Sequence[int] | None = None, pooling: str = "answer",
                     chunk_size: int = 16, template: str = "auto") -> Tensor:
    """The residual stream after each of ``layers`` pooled per example: [n, len(layers), d] (fp32, CPU).

    ``pooling="answer"``: the answer position (last prompt token); ``"mean"``: the mean over the prompt's
    real tokens. Layer ``l`` means the output of decoder layer ``l`` (``CleanRun.resid[l + 1]``).
    """
    if pooling not in POOLINGS:
        raise SteeringError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    layers = list(range(lm.n_layers)) if layers is None else [_check_layer(lm, l) for l in layers]
    batch = iv.encode(lm, list(examples), template=template)
    out = []
    for chunk in batch.chunks(chunk_size):
        run = iv.clean_run(lm, chunk)
        rows = torch.arange(len(chunk))
        per_layer = []
        for l in layers:
            h = run.resid[l + 1].float()
            if pooling == "answer":
                per_layer.append(h[rows, chunk.answer_pos.to(h.device)].cpu())
            else:
                mask = chunk.attention_mask.to(h.device).float()[..., None]
                per_layer.append(((h * mask).sum(1) / mask.sum(1)).cpu())
        out.append(torch.stack(per_layer, 1))
        del run
    return torch.cat(out)


@dataclass
class Directions:
    """Difference-of-means directions, one per layer, with the residual norms that give them a unit.

    ``vectors[i]`` is ``mean(positive) - mean(negative)`` of the residual after ``layers[i]`` at ``pooling``;
    ``resid_norm[i]`` the mean L2 norm of that residual over both sets (the unit of ``"relative"`` scales).
    """

    contrast: str
    layers: list[int]
    vectors: Tensor  # [len(layers), d]
    resid_norm: Tensor  # [len(layers)]
    pooling: str
    n_positive: int
    n_negative: int
    model: str = ""

    def index(self, layer: int) -> int:
        try:
            return self.layers.index(layer)
        except ValueError:
            raise SteeringError(f"no direction for layer {layer} (directions cover {self.layers})") from None

    def unit(self, layer: int) -> Tensor:
        v = self.vectors[self.index(layer)]
        norm = float(v.norm())
        if not math.isfinite(norm) or norm == 0.0:
            raise SteeringError(f"direction {self.contrast!r} at layer {layer} has norm {norm}: the contrast sets "
                                "have identical mean residuals there")
        return v / norm

    def vector(self, layer: int, scale: float, units: str = "relative") -> Tensor:
        """The vector actually added at ``layer`` for signed ``scale`` in ``units`` (see the module doc)."""
        return added_vector(self.unit(layer), scale, units, float(self.resid_norm[self.index(layer)]))

    def cosine(self, other: "Directions", layer: int, other_layer: int | None = None) -> float:
        a, b = self.unit(layer), other.unit(layer if other_layer is None else other_layer)
        if a.shape != b.shape:
            raise SteeringError(f"cosine: widths differ ({a.shape[0]} vs {b.shape[0]})")
        return float(a @ b)


def added_vector(unit: Tensor, scale: float, units: str, resid_norm: float) -> Tensor:
    """``scale * unit`` (absolute) or ``scale * resid_norm * unit`` (relative)."""
    if units not in SCALE_UNITS:
        raise SteeringError(f"units must be one of {SCALE_UNITS}, got {units!r}")
    return unit * (scale * (resid_norm if units == "relative" else 1.0))


def diff_of_means(lm, contrast: Contrast, layers: Sequence[int] | None = None, pooling: str = "answer",
                  template: str = "auto") -> Directions:
    """Difference-of-means directions of ``contrast`` at every layer of ``lm`` (or ``layers``)."""
    layers = list(range(lm.n_layers)) if layers is None else list(layers)
    pos = pooled_residuals(lm, contrast.positive, layers, pooling, template=template)
    neg = pooled_residuals(lm, contrast.negative, layers, pooling, template=template)
    vectors = pos.double().mean(0) - neg.double().mean(0)
    norms = torch.cat([pos, neg]).norm(dim=-1).double().mean(0)
    return Directions(contrast.name, layers, vectors.float(), norms.float(), pooling,
                      len(contrast.positive), len(contrast.negative), model=getattr(lm, "key", ""))


def residual_norms(lm, examples: Sequence, layers: Sequence[int] | None = None, pooling: str = "answer") -> Tensor:
    """Mean L2 norm of the residual after each layer at ``pooling`` over ``examples``: [len(layers)]."""
    return pooled_residuals(lm, examples, layers, pooling).norm(dim=-1).mean(0)


def _check_layer(lm, layer: int) -> int:
    if not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) < lm.n_layers:
        raise SteeringError(f"layer {layer!r} is out of range for {getattr(lm, 'key', 'the model')} "
                            f"({lm.n_layers} layers: 0..{lm.n_layers - 1})")
    return int(layer)


# --------------------------------------------------------------------------------------------- targets


def target_token_ids(lm, examples: Sequence, template: str = "auto") -> list[int]:
    """First answer token of each example (as ``engine.interventions.encode`` defines it)."""
    ids = iv.encode(lm, list(examples), template=template).target_ids.tolist()
    if any(i < 0 for i in ids):
        raise SteeringError("target_token_ids: some examples have no target")
    return ids


def family_target_set(lm, contrast: Contrast, template: str = "auto") -> list[int]:
    """The answer tokens typical of the contrast's positive set: its examples' first answer tokens that
    are not also a first answer token of the negative set (so a shared token like " the" is not counted)."""
    pos = set(target_token_ids(lm, contrast.positive, template))
    neg = set(target_token_ids(lm, contrast.negative, template))
    distinct = sorted(pos - neg)
    if not distinct:
        raise SteeringError(f"contrast {contrast.name!r}: every answer token of the positive set also answers "
                            "the negative set; no distinctive target set")
    return distinct


def _target_matrix(target_ids: Sequence[Sequence[int]] | Sequence[int] | Tensor, n: int) -> Tensor:
    """[n, k] long matrix of target ids (padded with -1) from one set for all rows or one set per row."""
    if isinstance(target_ids, Tensor):
        t = target_ids.long()
        return t[:, None] if t.ndim == 1 else t
    rows = list(target_ids)
    if rows and all(isinstance(x, (int, np.integer)) for x in rows):
        rows = [rows] * n
    if len(rows) != n:
        raise SteeringError(f"targets: got {len(rows)} target sets for {n} examples")
    k = max(len(r) for r in rows)
    if k == 0:
        raise SteeringError("targets: empty target set")
    out = torch.full((n, k), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
    return out


def set_logprob(logits: Tensor, targets: Tensor) -> Tensor:
    """log P(any token of the row's target set) per row ([n, V] logits, [n, k] ids padded with -1)."""
    lp = torch.log_softmax(logits.float(), -1)
    gathered = lp.gather(-1, targets.clamp(min=0).to(lp.device))
    gathered = torch.where(targets.to(lp.device) >= 0, gathered, torch.full_like(gathered, -math.inf))
    return torch.logsumexp(gathered, -1)


# --------------------------------------------------------------------------------------------- rigorous steering


@dataclass
class Prepared:
    """An evaluation batch with its clean run (for restarting at any layer) and target sets."""

    lm: object
    batch: iv.Batch
    run: iv.CleanRun
    targets: Tensor  # [n, k]
    clean_logits: Tensor  # [n, V] fp32 at the answer positions
    clean_set_logprob: Tensor  # [n]
    positions: iv.Positions = None

    def __len__(self) -> int:
        return len(self.batch)


@torch.no_grad()
def prepare(lm, examples: Sequence, targets=None, *, positions: iv.Positions = None,
            template: str = "auto") -> Prepared:
    """Encode ``examples`` and run them once unsteered.

    ``targets``: None (each example's own answer token), one list of ids for every example (e.g.
    :func:`family_target_set`), or one list per example. ``positions``: where vectors are added (None = every
    real prompt token; see ``engine.interventions``).
    """
    batch = iv.encode(lm, list(examples), template=template)
    if targets is None:
        if (batch.target_ids < 0).any():
            raise SteeringError("prepare: some examples have no target; pass targets=")
        targets = batch.target_ids
    matrix = _target_matrix(targets, len(batch))
    run = iv.clean_run(lm, batch)
    return Prepared(lm, batch, run, matrix, run.logits, set_logprob(run.logits, matrix), positions)


@dataclass
class SteerResult:
    """One steering condition on a prepared batch: per-example KL and target-set log-prob change."""

    layer: int | str  # a layer index or "all"
    scale: float
    units: str
    vector_norm: float  # L2 norm of the added vector (the largest one for "all")
    kl: Tensor  # [n] KL(unsteered || steered), nats
    dlogp: Tensor  # [n] change of log P(target set)
    dprob: Tensor  # [n] change of P(target set)

    @property
    def mean_kl(self) -> float:
        return float(self.kl.mean())

    @property
    def effect(self) -> float:
        """Mean change of log P(target set): positive = the steering promoted the targets."""
        return float(self.dlogp.mean())


@torch.no_grad()
def steer(prepared: Prepared, vectors: Tensor | dict[int, Tensor], layer: int | str) -> SteerResult:
    """Add ``vectors`` (already scaled) to the residual after ``layer`` (or after every layer for ``"all"``,
    with ``vectors`` a dict layer -> vector) and measure the effect against the unsteered run."""
    lm, run = prepared.lm, prepared.run
    if layer == "all":
        if not isinstance(vectors, dict):
            raise SteeringError("steer(layer='all') needs a dict layer -> vector")
        edits = [iv.AddVector(_check_layer(lm, l), v, 1.0, positions=prepared.positions) for l, v in sorted(vectors.items())]
        start = min(e.layer for e in edits)
        norm = max(float(v.norm()) for v in vectors.values())
    else:
        if isinstance(vectors, dict):
            raise SteeringError("steer(layer=int) needs one vector")
        start = _check_layer(lm, layer)
        edits = [iv.AddVector(start, vectors, 1.0, positions=prepared.positions)]
        norm = float(vectors.norm())
    logits = iv.run_from(lm, run, start, run.resid[start], *edits)
    lp = set_logprob(logits, prepared.targets)
    return SteerResult(layer, float("nan"), "", norm, iv.kl(prepared.clean_logits, logits).cpu(),
                       (lp - prepared.clean_set_logprob).cpu(), (lp.exp() - prepared.clean_set_logprob.exp()).cpu())


def steer_direction(prepared: Prepared, directions: Directions, layer: int | str, scale: float,
                    units: str = "relative") -> SteerResult:
    """:func:`steer` with the direction of ``directions`` at ``layer`` (or at every layer for ``"all"``)."""
    if layer == "all":
        vecs = {l: directions.vector(l, scale, units) for l in directions.layers}
        result = steer(prepared, vecs, "all")
    else:
        result = steer(prepared, directions.vector(layer, scale, units), layer)
    result.scale, result.units = float(scale), units
    return result


@dataclass
class Sweep:
    """Layers x scales grid of steering effects (means over the prepared batch)."""

    model: str
    contrast: str
    layers: list[int]
    scales: list[float]
    units: str
    effect: np.ndarray  # [L, S] mean change of log P(target set)
    kl: np.ndarray  # [L, S] mean KL(unsteered || steered)
    per_example: dict[tuple[int, float], np.ndarray] = field(default_factory=dict)  # dlogp per example
    seconds: float = 0.0

    def best(self, sign: int = 1) -> tuple[int, float, float]:
        """(layer, scale, effect) of the largest ``sign * effect`` among scales of that sign."""
        cols = [j for j, s in enumerate(self.scales) if s * sign > 0]
        if not cols:
            raise SteeringError(f"sweep has no scale of sign {sign:+d} (scales {self.scales})")
        sub = sign * self.effect[:, cols]
        i, j = np.unravel_index(int(np.nanargmax(sub)), sub.shape)
        return self.layers[i], self.scales[cols[j]], float(self.effect[i, cols[j]])

    def layer_effects(self, scale: float) -> np.ndarray:
        return self.effect[:, self.scales.index(scale)]

    def to_dict(self) -> dict:
        return {"model": self.model, "contrast": self.contrast, "layers": self.layers, "scales": self.scales,
                "units": self.units, "effect": self.effect.round(5).tolist(), "kl": self.kl.round(5).tolist(),
                "seconds": round(self.seconds, 2)}

    @classmethod
    def from_dict(cls, data: dict) -> "Sweep":
        return cls(data["model"], data["contrast"], list(data["layers"]), [float(x) for x in data["scales"]],
                   data["units"], np.asarray(data["effect"], dtype=float), np.asarray(data["kl"], dtype=float),
                   seconds=data.get("seconds", 0.0))

    def heatmap(self, path: str | Path, metric: str = "effect") -> Path:
        """Write a layers x scales heatmap of ``metric`` ("effect" or "kl") as PNG (matplotlib Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        data = {"effect": self.effect, "kl": self.kl}.get(metric)
        if data is None:
            raise SteeringError(f"heatmap metric must be 'effect' or 'kl', got {metric!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(self.scales), 1.5 + 0.22 * len(self.layers)))
        if metric == "effect":
            lim = float(np.nanmax(np.abs(data))) or 1.0
            im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        else:
            im = ax.imshow(data, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(self.scales)), [f"{s:g}" for s in self.scales])
        ax.set_yticks(range(len(self.layers)), [str(l) for l in self.layers])
        ax.set_xlabel(f"scale s ({self.units})")
        ax.set_ylabel("layer")
        label = "Δ log P(target set)" if metric == "effect" else "KL(unsteered || steered), nats"
        fig.colorbar(im, ax=ax, label=label)
        ax.set_title(f"{self.model}: {self.contrast}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def sweep(prepared: Prepared, directions: Directions, layers: Sequence[int] | None = None,
          scales: Sequence[float] = DEFAULT_SCALES, units: str = "relative", progress: bool = True) -> Sweep:
    """Steering effect at every (layer, scale); a rich progress bar while it runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    layers = list(directions.layers) if layers is None else list(layers)
    scales = [float(s) for s in scales]
    effect = np.zeros((len(layers), len(scales)))
    kl_grid = np.zeros_like(effect)
    per_example = {}
    start = time.perf_counter()
    columns = (TextColumn("steering sweep {task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(f"{directions.model} {directions.contrast}", total=len(layers) * len(scales))
        for i, layer in enumerate(layers):
            for j, s in enumerate(scales):
                r = steer_direction(prepared, directions, layer, s, units)
                effect[i, j], kl_grid[i, j] = r.effect, r.mean_kl
                per_example[(layer, s)] = r.dlogp.numpy()
                bar.advance(task)
    return Sweep(directions.model, directions.contrast, layers, scales, units, effect, kl_grid, per_example,
                 time.perf_counter() - start)


# --------------------------------------------------------------------------------------------- random control


def random_directions(d: int, n: int, norm: float = 1.0, seed: int = 0) -> Tensor:
    """``n`` random directions in R^d (isotropic Gaussian), each rescaled to exactly ``norm``: [n, d] fp32."""
    if n < 1 or d < 1:
        raise SteeringError(f"random_directions: need n >= 1 and d >= 1, got n={n}, d={d}")
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return (z / z.norm(dim=-1, keepdim=True) * float(norm)).float()


@dataclass
class RandomControl:
    """A direction's effect vs the effects of ``n`` random vectors of the same norm at the same layer/scale."""

    layer: int
    scale: float
    units: str
    vector_norm: float
    direction_effect: float
    random_effects: np.ndarray
    percentile: float
    seed: int

    @property
    def threshold(self) -> float:
        return float(np.percentile(self.random_effects, self.percentile))

    @property
    def beats(self) -> bool:
        return self.direction_effect > self.threshold

    @property
    def rank(self) -> float:
        """Fraction of random vectors whose effect is below the direction's."""
        return float((self.random_effects < self.direction_effect).mean())

    def to_dict(self) -> dict:
        return {"layer": self.layer, "scale": self.scale, "units": self.units, "vector_norm": self.vector_norm,
                "direction_effect": self.direction_effect, "random_p": self.percentile,
                "random_threshold": self.threshold, "random_mean": float(self.random_effects.mean()),
                "random_max": float(self.random_effects.max()), "n_random": len(self.random_effects),
                "rank": self.rank, "beats": self.beats}


def random_control(prepared: Prepared, directions: Directions, layer: int, scale: float, units: str = "relative",
                   n_random: int = 32, percentile: float = 95.0, seed: int = 0) -> RandomControl:
    """Steer with the direction and with ``n_random`` random vectors of equal norm (same layer, scale, batch)."""
    vec = directions.vector(layer, scale, units)
    norm = float(vec.norm())
    own = steer(prepared, vec, layer).effect
    rand = random_directions(vec.shape[0], n_random, norm, seed)
    effects = np.array([steer(prepared, r, layer).effect for r in rand])
    return RandomControl(layer, float(scale), units, norm, own, effects, float(percentile), seed)


# --------------------------------------------------------------------------------------------- transfer


@dataclass
class LinearMap:
    """``y ≈ (x - x_mean) @ weight + y_mean``, fitted by least squares (``torch.linalg.lstsq``)."""

    weight: Tensor  # [d_x, d_y]
    x_mean: Tensor
    y_mean: Tensor
    r2: float  # on the fitted pairs
    n_pairs: int

    def __call__(self, x: Tensor) -> Tensor:
        return (x.double() - self.x_mean) @ self.weight + self.y_mean

    def map_direction(self, v: Tensor) -> Tensor:
        """A direction (a difference of activations) maps through the linear part only."""
        return (v.double() @ self.weight).float()

    def r2_on(self, x: Tensor, y: Tensor) -> float:
        return _r2(self(x), y.double())


def _r2(pred: Tensor, y: Tensor) -> float:
    resid = ((y - pred) ** 2).sum()
    total = ((y - y.mean(0)) ** 2).sum()
    return float(1.0 - resid / total) if total > 0 else float("nan")


def fit_linear_map(x: Tensor, y: Tensor, center: bool = True) -> LinearMap:
    """Least-squares map from paired activations ``x`` [n, d_x] to ``y`` [n, d_y] (fp64).

    With fewer pairs than ``d_x`` the system is underdetermined and ``gelsd`` returns the minimum-norm
    solution (on CPU; CUDA's only driver needs ``n >= d_x``, so the fit runs on CPU).
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise SteeringError(f"fit_linear_map: need x [n, d_x] and y [n, d_y] with the same n, "
                            f"got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] < 2:
        raise SteeringError("fit_linear_map: need at least 2 pairs")
    x64, y64 = x.detach().double().cpu(), y.detach().double().cpu()
    xm = x64.mean(0) if center else torch.zeros(x64.shape[1], dtype=torch.float64)
    ym = y64.mean(0) if center else torch.zeros(y64.shape[1], dtype=torch.float64)
    weight = torch.linalg.lstsq(x64 - xm, y64 - ym, driver="gelsd").solution
    fitted = LinearMap(weight, xm, ym, 0.0, int(x.shape[0]))
    fitted.r2 = fitted.r2_on(x64, y64)
    return fitted


def _rss_peak_reset() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _rss_mb(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class MemoryReport:
    """Memory while two models are used one after the other."""

    peak_rss_mb: float  # peak resident set during the transfer (VmHWM after a reset, else ru_maxrss)
    start_rss_mb: float
    peak_is_reset: bool  # False: the peak is the process lifetime maximum (ru_maxrss)
    source_bytes: int
    target_bytes: int
    source_released: bool  # the source model was garbage-collected before the target was loaded
    cuda_peak_bytes: int | None = None

    def to_dict(self) -> dict:
        return {"peak_rss_mb": round(self.peak_rss_mb, 1), "start_rss_mb": round(self.start_rss_mb, 1),
                "peak_rss_delta_mb": round(self.peak_rss_mb - self.start_rss_mb, 1),
                "peak_is_reset": self.peak_is_reset, "source_mb": round(self.source_bytes / 2**20, 1),
                "target_mb": round(self.target_bytes / 2**20, 1),
                "both_models_mb": round((self.source_bytes + self.target_bytes) / 2**20, 1),
                "source_released": self.source_released,
                "cuda_peak_mb": None if self.cuda_peak_bytes is None else round(self.cuda_peak_bytes / 2**20, 1)}


@dataclass
class TransferResult:
    """A steering direction mapped from a source to a target model and applied there."""

    source: str
    target: str
    contrast: str
    source_layer: int
    target_layer: int
    pooling: str
    n_pairs: int
    fit_r2: float
    heldout_r2: float
    cosine_to_native: float  # mapped vs the target's own difference-of-means direction
    scale: float
    units: str
    mapped: SteerResult
    native: SteerResult
    random: RandomControl
    memory: MemoryReport
    width_source: int
    width_target: int
    method: str  # "identity" (same width) or "lstsq"
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "contrast": self.contrast,
                "source_layer": self.source_layer, "target_layer": self.target_layer, "pooling": self.pooling,
                "method": self.method, "n_pairs": self.n_pairs, "fit_r2": round(self.fit_r2, 4),
                "heldout_r2": round(self.heldout_r2, 4), "cosine_to_native": round(self.cosine_to_native, 4),
                "scale": self.scale, "units": self.units, "mapped_effect": self.mapped.effect,
                "mapped_kl": self.mapped.mean_kl, "native_effect": self.native.effect,
                "random_threshold": self.random.threshold, "mapped_beats_random": self.random.beats,
                "width_source": self.width_source, "width_target": self.width_target,
                "seconds": round(self.seconds, 1), **self.memory.to_dict()}


def relative_layer(layer: int, n_source: int, n_target: int) -> int:
    """The target layer at the same relative depth as ``layer`` of an ``n_source``-layer model."""
    if n_source <= 1:
        return 0
    return int(round(layer / (n_source - 1) * (n_target - 1)))


def transfer(source: str, target: str, *, fit_examples: Sequence, pairing_examples: Sequence,
             eval_examples: Sequence, contrast_fn: Callable[[Sequence], Contrast], source_layer: int,
             target_layer: int | None = None, scale: float = 1.0, units: str = "relative",
             pooling: str = "answer", n_random: int = 32, seed: int = 0,
             loader: Callable[[str], object] | None = None, heldout_fraction: float = 0.2,
             template: str = "auto") -> TransferResult:
    """Map a steering direction from ``source`` to ``target`` and measure it in the target.

    1. Load the source; compute its difference-of-means direction (``contrast_fn(fit_examples)``) at
       ``source_layer`` and its pooled residuals on ``pairing_examples``; free it (checked: the model object
       must be garbage-collected before the target is loaded, so two models never share memory).
    2. Load the target; pooled residuals at ``target_layer`` (default: the same relative depth) on the same
       prompts (each rendered with its own tokenizer: pairs are per prompt, not per token).
    3. Same width: the direction is used as it is. Different widths: a least-squares map fitted on the pairs
       (``heldout_fraction`` of them held out to report R^2) maps the direction.
    4. In the target: the mapped direction's effect on ``eval_examples`` (targets: the family answer tokens
       of the contrast), the target's own direction for comparison, and random vectors of the same norm.
    The pairing prompts must not overlap the contrast or eval prompts (else the map can memorise them).
    """
    from engine import models

    load = loader or (lambda key: models.load(key))
    started = time.perf_counter()
    overlap = {ex.id for ex in pairing_examples} & ({ex.id for ex in eval_examples} | {ex.id for ex in fit_examples})
    if overlap:
        raise SteeringError(f"transfer: pairing prompts overlap the contrast/eval prompts ({sorted(overlap)[:5]} ...)")
    reset = _rss_peak_reset()
    start_rss = _rss_mb("VmRSS") or 0.0
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    src = load(source)
    _check_layer(src, source_layer)
    contrast = contrast_fn(fit_examples)
    src_dir = diff_of_means(src, contrast, [source_layer], pooling="answer", template=template)
    src_unit = src_dir.unit(source_layer)
    x = pooled_residuals(src, pairing_examples, [source_layer], pooling, template=template)[:, 0]
    src_bytes, src_layers, src_width = _footprint(src), src.n_layers, src.d_model
    alive = weakref.ref(src.model)
    models.free(src)
    del src
    gc.collect()
    released = alive() is None
    if not released:
        raise SteeringError(f"transfer: the source model {source!r} is still referenced after free(); refusing to "
                            "load a second model next to it")

    tgt = load(target)
    t_layer = relative_layer(source_layer, src_layers, tgt.n_layers) if target_layer is None else target_layer
    _check_layer(tgt, t_layer)
    y = pooled_residuals(tgt, pairing_examples, [t_layer], pooling, template=template)[:, 0]
    if src_width == tgt.d_model:
        method, fit_r2, held_r2 = "identity", float("nan"), float("nan")
        mapped_unit = src_unit.clone()
    else:
        method = "lstsq"
        n = x.shape[0]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        n_held = max(1, int(round(heldout_fraction * n))) if heldout_fraction > 0 else 0
        held, fit_idx = perm[:n_held], perm[n_held:]
        held_map = fit_linear_map(x[fit_idx], y[fit_idx])
        held_r2 = held_map.r2_on(x[held], y[held]) if n_held else float("nan")
        full = fit_linear_map(x, y)  # the map actually used: all pairs
        fit_r2 = full.r2
        mapped = full.map_direction(src_unit)
        mapped_unit = mapped / mapped.norm()
    native = diff_of_means(tgt, contrast, [t_layer], pooling="answer", template=template)
    cosine = float(mapped_unit @ native.unit(t_layer))
    targets = family_target_set(tgt, contrast, template)
    prepared = prepare(tgt, eval_examples, targets, template=template)
    norm = float(native.resid_norm[0])
    vec = added_vector(mapped_unit, scale, units, norm)
    mapped_result = steer(prepared, vec, t_layer)
    mapped_result.scale, mapped_result.units = float(scale), units
    native_result = steer_direction(prepared, native, t_layer, scale, units)
    rand = random_directions(vec.shape[0], n_random, float(vec.norm()), seed)
    rand_effects = np.array([steer(prepared, r, t_layer).effect for r in rand])
    control = RandomControl(t_layer, float(scale), units, float(vec.norm()), mapped_result.effect, rand_effects,
                            95.0, seed)
    memory = MemoryReport(
        peak_rss_mb=(_rss_mb("VmHWM") if reset else None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        start_rss_mb=start_rss, peak_is_reset=reset, source_bytes=src_bytes, target_bytes=_footprint(tgt),
        source_released=released, cuda_peak_bytes=torch.cuda.max_memory_allocated() if cuda else None)
    result = TransferResult(source, target, contrast.name, source_layer, t_layer, pooling, int(x.shape[0]), fit_r2,
                            held_r2, cosine, float(scale), units, mapped_result, native_result, control, memory,
                            src_width, tgt.d_model, method, time.perf_counter() - started)
    models.free(tgt)
    return result


def _footprint(lm) -> int:
    model = lm.model
    getter = getattr(model, "get_memory_footprint", None)
    if callable(getter):
        return int(getter())
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


# --------------------------------------------------------------------------------------------- seed protocol


def _seed_kl(clean_logits: Tensor, steered_logits: Tensor) -> Tensor:
    """The seed's KL: fp16 softmax of the last-position logits, KL(clean || steered), then abs()."""
    p_log = torch.log_softmax(clean_logits.half(), -1)
    q_log = torch.log_softmax(steered_logits.half(), -1)
    kl = torch.nn.functional.kl_div(q_log, p_log, reduction="none", log_target=True).sum(-1)
    return kl.abs().float()


@dataclass
class SeedSteerResult:
    """Per-prompt abs(KL) of the seed's steering procedure."""

    layer: int
    scale: float  # as given; the procedure uses only |scale|
    kls: list[float]
    ids: list[str]
    protocol: str = "seed"

    @property
    def mean_kl(self) -> float:
        return float(np.mean(self.kls))


@torch.no_grad()
def seed_protocol_steer(lm, examples: Sequence, layer: int, scale: float, template: str = "auto") -> SeedSteerResult:
    """The seed's steering measurement, faithfully (see the module doc): one prompt per forward; direction =
    mean over the prompt's tokens of the output of ``layer``, rescaled to norm ``|scale|`` (sign dropped),
    added at all positions of that layer's output; abs(KL) at the last position with an fp16 softmax.

    Unlike the seed, an exception in one prompt propagates (the seed swallowed them silently).
    """
    _check_layer(lm, layer)
    kls, ids = [], []
    for ex in examples:
        batch = iv.encode(lm, [ex], template=template)
        run = iv.clean_run(lm, batch)
        vec = _seed_vector(run, layer, scale)  # the seed normalised to |s|: the sign is lost here
        steered = iv.run_from(lm, run, layer, run.resid[layer], iv.AddVector(layer, vec, 1.0, positions=None))
        kls.append(float(_seed_kl(run.logits, steered)[0]))
        ids.append(getattr(ex, "id", str(ex)))
    return SeedSteerResult(layer, float(scale), kls, ids)


def _seed_vector(run: iv.CleanRun, layer: int, scale: float) -> Tensor:
    """The seed's vector: the mean over the prompt's tokens of layer ``layer``'s output, norm ``|scale|``."""
    direction = run.resid[layer + 1][0].float().mean(0)
    return direction / direction.norm() * abs(scale)


@torch.no_grad()
def seed_protocol_sweep(lm, examples: Sequence, layers: Sequence[int], scale: float,
                        template: str = "auto") -> dict[int, list[float]]:
    """:func:`seed_protocol_steer` at every layer of ``layers`` (one clean forward per prompt, reused):
    layer -> per-prompt abs(KL)."""
    layers = [_check_layer(lm, l) for l in layers]
    out: dict[int, list[float]] = {l: [] for l in layers}
    for ex in examples:
        run = iv.clean_run(lm, iv.encode(lm, [ex], template=template))
        for layer in layers:
            vec = _seed_vector(run, layer, scale)
            steered = iv.run_from(lm, run, layer, run.resid[layer], iv.AddVector(layer, vec, 1.0, positions=None))
            out[layer].append(float(_seed_kl(run.logits, steered)[0]))
    return out


@torch.no_grad()
def seed_random_control(lm, examples: Sequence, layer: int, scale: float, n_random: int = 32, seed: int = 0,
                        template: str = "auto") -> tuple[list[float], np.ndarray]:
    """Block C4 as the seed would have run it: its own vector (the prompt's mean activation, norm ``|s|``) vs
    ``n_random`` random vectors of the same norm, same layer, all positions, the seed's abs(KL) (fp16 softmax).
    Returns (per-prompt KL of the seed's vector, [n_random] mean KL of each random vector)."""
    _check_layer(lm, layer)
    rand = random_directions(lm.d_model, n_random, abs(scale), seed)
    own, rand_kl = [], np.zeros((n_random, len(examples)))
    for i, ex in enumerate(examples):
        run = iv.clean_run(lm, iv.encode(lm, [ex], template=template))
        steered = iv.run_from(lm, run, layer, run.resid[layer],
                              iv.AddVector(layer, _seed_vector(run, layer, scale), 1.0, positions=None))
        own.append(float(_seed_kl(run.logits, steered)[0]))
        for j, r in enumerate(rand):
            steered = iv.run_from(lm, run, layer, run.resid[layer], iv.AddVector(layer, r, 1.0, positions=None))
            rand_kl[j, i] = float(_seed_kl(run.logits, steered)[0])
    return own, rand_kl.mean(1)


@torch.no_grad()
def seed_reference_steer(lm, contrast: Contrast, eval_examples: Sequence, layer: int, scale: float,
                         n_pairs: int = 5, template: str = "auto") -> SeedSteerResult:
    """The procedure behind the seed's 0.021 denominator: a difference-of-means vector from ``n_pairs``
    positive/negative examples at ``layer`` (last position), rescaled to norm ``|scale|`` with the sign of
    ``scale``, added at the last position only; KL (fp32) at the last position, one prompt per forward."""
    _check_layer(lm, layer)
    small = Contrast(contrast.name, contrast.positive[:n_pairs], contrast.negative[:n_pairs])
    direction = diff_of_means(lm, small, [layer], pooling="answer", template=template).unit(layer)
    vec = direction * scale
    kls, ids = [], []
    for ex in eval_examples:
        batch = iv.encode(lm, [ex], template=template)
        run = iv.clean_run(lm, batch)
        steered = iv.run_from(lm, run, layer, run.resid[layer], iv.AddVector(layer, vec, 1.0, positions="answer"))
        kls.append(float(iv.kl(run.logits, steered)[0]))
        ids.append(getattr(ex, "id", str(ex)))
    return SeedSteerResult(layer, float(scale), kls, ids, protocol="seed-reference")


# --------------------------------------------------------------------------------------------- statistics


def bootstrap_ci(values: Iterable[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise SteeringError("bootstrap_ci: no values")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(1)
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------- claim studies


@dataclass(frozen=True)
class SteerSizes:
    """Sample sizes and settings of the steering claims on one tier (stated in every record's notes).

    The contrast is ``family`` vs every other family (answer position, raw prompts); its direction is
    evaluated on prompts of the *other* families (its target set is the family's distinctive first answer
    tokens, e.g. " Unknown"): ``n_select`` prompts choose the best (layer, scale) of the sweep, ``n_test``
    held-out prompts measure it (STEER-ALL gap, STEER-RANDOM control, STEER-TRANSFER effect).
    """

    family: str = "uncertainty_expression"
    n_positive: int = 6
    per_negative_family: int = 1
    n_select: int = 4
    n_test: int = 6
    scales: tuple[float, ...] = (-1.0, 0.5, 1.0)
    units: str = "relative"
    n_random: int = 32
    percentile: float = 95.0
    n_seed_prompts: int = 3
    n_seed_random: int = 16
    seed_scale: float = -4.0
    n_pairs: int = 36
    template: str = "none"
    seed: int = 0

    def describe(self) -> str:
        return (f"contrast {self.family}-vs-rest ({self.n_positive} vs {self.per_negative_family}/other family), "
                f"select {self.n_select} + test {self.n_test} prompts of other families, scales {list(self.scales)} "
                f"({self.units}), {self.n_random} random vectors (seed {self.seed}), seed protocol on "
                f"{self.n_seed_prompts} prompts at s={self.seed_scale} with {self.n_seed_random} random vectors, "
                f"{self.n_pairs} pairing prompts, template {self.template!r}")


SIZES: dict[str, SteerSizes] = {
    # 2 shared cores, <= 10 min for steer + quant on both embedded models (measured; see the claim module)
    "cpu": SteerSizes(),
    "gpu": SteerSizes(n_positive=24, per_negative_family=4, n_select=24, n_test=48,
                      scales=(-8.0, -4.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 4.0, 8.0), n_random=200,
                      n_seed_prompts=15, n_seed_random=64, n_pairs=400),
}


def sizes_for(tier: str) -> SteerSizes:
    return SIZES["gpu" if tier == "gpu" else "cpu"]


@dataclass
class SteerData:
    contrast: Contrast
    select: list
    test: list
    pairing: list

    @property
    def seed_prompts(self) -> list:
        return self.test


def steer_data(sizes: SteerSizes, suite: str = "synthetic") -> SteerData:
    """Disjoint prompt sets of the suite's short split for the steering claims (deterministic in ``sizes.seed``)."""
    from engine import tasks

    others = [f for f in tasks.FAMILIES if f != sizes.family]
    pos = tasks.sample([sizes.family], per_family=sizes.n_positive, seed=sizes.seed, suite=suite, split="short")
    neg = tasks.sample(others, per_family=sizes.per_negative_family, seed=sizes.seed, suite=suite, split="short")
    used = {ex.id for ex in pos + neg}
    per = -(-(sizes.n_select + sizes.n_test) // len(others)) + 1
    pool = tasks.sample(others, per_family=per, seed=sizes.seed + 1000, suite=suite, split="short")
    by_family = [[ex for ex in pool if ex.family == f and ex.id not in used] for f in others]
    round_robin = [fam[i] for i in range(per) for fam in by_family if i < len(fam)]
    select = round_robin[:sizes.n_select]
    test = round_robin[sizes.n_select:sizes.n_select + sizes.n_test]
    if len(test) < sizes.n_test:
        raise SteeringError(f"steer_data: only {len(test)} test prompts available, asked for {sizes.n_test}")
    used |= {ex.id for ex in select + test}
    per_pair = -(-sizes.n_pairs // len(tasks.FAMILIES)) + 1
    pairing = [ex for ex in tasks.sample(per_family=per_pair, seed=sizes.seed + 2000, suite=suite, split="short")
               if ex.id not in used][:sizes.n_pairs]
    return SteerData(Contrast(f"{sizes.family}-vs-rest", tuple(pos), tuple(neg)), select, test, pairing)


def hub_guess_layer(n_layers: int, seed_layer: int = 2, seed_n_layers: int = 24) -> int:
    """The phase-1 "hub-only" guess: the seed steered only at its hub L2 of Qwen2.5-0.5B (24 layers); on another
    model the guess is the layer at the same relative depth."""
    return relative_layer(seed_layer, seed_n_layers, n_layers)


def steer_study(lm, sizes: SteerSizes, guess_layer: int | None = None, heatmap_dir: str | Path | None = None,
                progress: bool = True) -> dict:
    """Everything STEER-ALL and STEER-RANDOM need on one model, under both protocols, as a JSON-able dict.

    rigorous: difference-of-means directions at every layer; a layers x scales sweep on the select prompts (target
    set = the family's distinctive answer tokens); the best positive (layer, scale) measured on held-out test
    prompts against the hub-only guess layer (paired bootstrap CI of the per-prompt gap) and against
    ``n_random`` random vectors of equal norm at the same layer and scale.
    seed: the seed's procedure (prompt's own mean activation, norm |s|, sign dropped, all positions, abs KL in fp16)
    at every layer; its vector vs random vectors of norm |s| at the hub-guess layer.
    """
    started = time.perf_counter()
    data = steer_data(sizes)
    guess = hub_guess_layer(lm.n_layers) if guess_layer is None else _check_layer(lm, guess_layer)
    tpl = sizes.template
    directions = diff_of_means(lm, data.contrast, template=tpl)
    targets = family_target_set(lm, data.contrast, tpl)
    select = prepare(lm, data.select, targets, template=tpl)
    grid = sweep(select, directions, scales=sizes.scales, units=sizes.units, progress=progress)
    best_layer, best_scale, best_select_effect = grid.best(+1)
    test = prepare(lm, data.test, targets, template=tpl)
    best = steer_direction(test, directions, best_layer, best_scale, sizes.units)
    at_guess = steer_direction(test, directions, guess, best_scale, sizes.units)
    gap = (best.dlogp - at_guess.dlogp).numpy()
    all_layers = steer_direction(test, directions, "all", best_scale / lm.n_layers, sizes.units)
    control = random_control(test, directions, best_layer, best_scale, sizes.units, sizes.n_random,
                             sizes.percentile, sizes.seed)
    rigorous_s = time.perf_counter() - started

    seed_started = time.perf_counter()
    seed_prompts = data.test[:sizes.n_seed_prompts]
    seed_sweep = seed_protocol_sweep(lm, seed_prompts, list(range(lm.n_layers)), sizes.seed_scale, tpl)
    seed_kl = np.array([np.mean(seed_sweep[l]) for l in range(lm.n_layers)])
    own, rand = seed_random_control(lm, seed_prompts, guess, sizes.seed_scale, sizes.n_seed_random, sizes.seed, tpl)
    seed_s = time.perf_counter() - seed_started

    heatmaps = {}
    if heatmap_dir is not None:
        stem = Path(heatmap_dir) / f"steer-{lm.key}"
        heatmaps = {m: str(grid.heatmap(f"{stem}-{m}.png", m)) for m in ("effect", "kl")}
    target_tokens = [lm.tokenizer.decode([t]) for t in targets]
    return {
        "model": lm.key, "n_layers": lm.n_layers, "sizes": sizes.describe(), "contrast": data.contrast.name,
        "targets": target_tokens, "hub_guess_layer": guess,
        "rigorous": {
            "sweep": grid.to_dict(), "best_layer": best_layer, "best_scale": best_scale,
            "best_select_effect": best_select_effect, "best_test_effect": best.effect,
            "guess_test_effect": at_guess.effect, "gap": float(gap.mean()), "gap_ci": list(bootstrap_ci(gap)),
            "best_test_kl": best.mean_kl, "vector_norm": best.vector_norm,
            "resid_norm": float(directions.resid_norm[directions.index(best_layer)]),
            "all_layers_scale": best_scale / lm.n_layers, "all_layers_effect": all_layers.effect,
            "all_layers_kl": all_layers.mean_kl, "random": control.to_dict(),
            "random_effects": control.random_effects.round(6).tolist(),
            "direction_ci": list(bootstrap_ci(best.dlogp.numpy())), "seconds": round(rigorous_s, 1),
        },
        "seed": {
            "scale": sizes.seed_scale, "kl_by_layer": seed_kl.round(6).tolist(),
            "best_layer": int(np.argmax(seed_kl)), "guess_kl": float(seed_kl[guess]),
            "best_kl": float(seed_kl.max()), "own_kl": float(np.mean(own)), "random_kl": rand.round(6).tolist(),
            "random_threshold": float(np.percentile(rand, sizes.percentile)),
            "beats": bool(np.mean(own) > np.percentile(rand, sizes.percentile)), "seconds": round(seed_s, 1),
        },
        "heatmaps": heatmaps,
        "seconds": round(time.perf_counter() - started, 1),
    }


def transfer_study(source: str, target: str, sizes: SteerSizes, source_layer: int, scale: float,
                   loader: Callable[[str], object] | None = None) -> dict:
    """STEER-TRANSFER: :func:`transfer` with the steering claims' prompt sets, as a JSON-able dict."""
    data = steer_data(sizes)
    family = sizes.family
    result = transfer(source, target, fit_examples=list(data.contrast.positive + data.contrast.negative),
                      pairing_examples=data.pairing, eval_examples=data.test,
                      contrast_fn=lambda exs: family_contrast(exs, family), source_layer=source_layer,
                      scale=scale, units=sizes.units, n_random=sizes.n_random, seed=sizes.seed, loader=loader,
                      template=sizes.template)
    out = result.to_dict()
    out["mapped_ci"] = list(bootstrap_ci(result.mapped.dlogp.numpy()))
    out["native_ci"] = list(bootstrap_ci(result.native.dlogp.numpy()))
    out["random_effects"] = result.random.random_effects.round(6).tolist()
    out["sizes"] = sizes.describe()
    return out


__all__ = [
    "SCALE_UNITS", "Contrast", "family_contrast", "clean_corrupt_contrast", "pooled_residuals", "Directions",
    "added_vector", "diff_of_means", "residual_norms", "target_token_ids", "family_target_set", "set_logprob",
    "Prepared", "prepare", "SteerResult", "steer", "steer_direction", "Sweep", "sweep", "random_directions",
    "RandomControl", "random_control", "LinearMap", "fit_linear_map", "MemoryReport", "TransferResult",
    "relative_layer", "transfer", "SeedSteerResult", "seed_protocol_steer", "seed_protocol_sweep",
    "seed_random_control", "seed_reference_steer",
    "bootstrap_ci", "SteeringError", "SteerSizes", "SIZES", "sizes_for", "SteerData", "steer_data",
    "hub_guess_layer", "steer_study", "transfer_study",
]
