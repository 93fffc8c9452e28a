"""The rigorous steering procedure: prepare a sample once, steer at a layer, sweep layers x signed scales, random equal-norm controls."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from engine import interventions as iv
from engine.steering.directions import (
    DEFAULT_SCALES,
    Directions,
    SteeringError,
    check_layer,
)
from engine.steering.targets import set_logprob, target_matrix


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
    matrix = target_matrix(targets, len(batch))
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
        edits = [iv.AddVector(check_layer(lm, l), v, 1.0, positions=prepared.positions) for l, v in sorted(vectors.items())]
        norm = max(float(v.norm()) for v in vectors.values())
    else:
        if isinstance(vectors, dict):
            raise SteeringError("steer(layer=int) needs one vector")
        start = check_layer(lm, layer)
        edits = [iv.AddVector(start, vectors, 1.0, positions=prepared.positions)]
        norm = float(vectors.norm())
    logits = run.rerun(*edits)  # restarts at the earliest steered layer
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

    def best_scale_at(self, layer: int, sign: int = 1) -> tuple[float, float]:
        """(scale, effect) of the largest ``sign * effect`` at ``layer`` among scales of that sign: a layer scored at
        its own best scale (chosen on the same select prompts as the sweep's pick)."""
        if layer not in self.layers:
            raise SteeringError(f"sweep has no layer {layer} (layers {self.layers[0]}..{self.layers[-1]})")
        cols = [j for j, s in enumerate(self.scales) if s * sign > 0]
        if not cols:
            raise SteeringError(f"sweep has no scale of sign {sign:+d} (scales {self.scales})")
        row = sign * self.effect[self.layers.index(layer), cols]
        j = int(np.nanargmax(row))
        return self.scales[cols[j]], float(self.effect[self.layers.index(layer), cols[j]])

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
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

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


@torch.no_grad()
def off_target_effects(prepared: Prepared, examples: Sequence, family: str, layer: int, norm: float,
                       template: str = "auto") -> dict[str, float]:
    """The off-target control of a ``family`` direction: every other family's difference-of-means direction at
    ``layer`` (that family's mean answer residual minus the mean of the remaining families, the target family's
    prompts left out), rescaled to ``norm`` (the direction's own norm) and steered on ``prepared`` (the same
    prompts and target set): ``{family: mean change of log P(target set)}``."""
    from engine.steering.directions import pooled_residuals

    lm = prepared.lm
    check_layer(lm, layer)
    res = pooled_residuals(lm, list(examples), [layer], "answer", template=template)[:, 0].double()
    fams = np.asarray([ex.family for ex in examples])
    others = [f for f in dict.fromkeys(fams.tolist()) if f != family]
    out = {}
    for f in others:
        own, rest = fams == f, (fams != f) & (fams != family)
        if not rest.any():
            raise SteeringError(f"off_target_effects: no prompts besides {f!r} and {family!r}")
        v = res[torch.as_tensor(own)].mean(0) - res[torch.as_tensor(rest)].mean(0)
        size = float(v.norm())
        if not size > 0:
            raise SteeringError(f"off_target_effects: the {f!r} direction at layer {layer} has norm {size}")
        out[f] = steer(prepared, (v / size * float(norm)).float(), layer).effect
    return out
