"""Steering directions: contrast sets, pooled residuals, difference-of-means directions per layer, scaled vectors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from engine import interventions as iv

SCALE_UNITS = ("relative", "absolute")


POOLINGS = ("answer", "mean")


DEFAULT_SCALES = (-1.0, -0.5, 0.5, 1.0)


class SteeringError(ValueError):
    """A steering measurement is misconfigured (bad layer, unit, empty contrast set, ...)."""


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


@torch.no_grad()
def pooled_residuals(lm, examples: Sequence, layers: Sequence[int] | None = None, pooling: str = "answer",
                     chunk_size: int = 16, template: str = "auto") -> Tensor:
    """The residual stream after each of ``layers`` pooled per example: [n, len(layers), d] (fp32, CPU).

    ``pooling="answer"``: the answer position (last prompt token); ``"mean"``: the mean over the prompt's
    real tokens. Layer ``l`` means the output of decoder layer ``l`` (``CleanRun.resid[l + 1]``).
    """
    if pooling not in POOLINGS:
        raise SteeringError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    layers = list(range(lm.n_layers)) if layers is None else [check_layer(lm, l) for l in layers]
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


def check_layer(lm, layer: int) -> int:
    if not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) < lm.n_layers:
        raise SteeringError(f"layer {layer!r} is out of range for {getattr(lm, 'key', 'the model')} "
                            f"({lm.n_layers} layers: 0..{lm.n_layers - 1})")
    return int(layer)
