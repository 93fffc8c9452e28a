"""Cross-model transfer of a steering direction: a least-squares map between residual spaces, one model in memory at a time."""

from __future__ import annotations

import gc
import resource
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from engine import memory as probes
from engine.steering.directions import (
    Contrast,
    SteeringError,
    added_vector,
    check_layer,
    diff_of_means,
    pooled_residuals,
)
from engine.steering.rigorous import (
    RandomControl,
    SteerResult,
    prepare,
    random_directions,
    steer,
    steer_direction,
)
from engine.steering.targets import family_target_set


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
       of the contrast), the target's own direction for comparison, and mapped random controls (random source
       directions through the same map) of the same norm.
    The pairing prompts must not overlap the contrast or eval prompts (else the map can memorise them).
    """
    from engine import models

    load = loader or (lambda key: models.load(key))
    started = time.perf_counter()
    overlap = {ex.id for ex in pairing_examples} & ({ex.id for ex in eval_examples} | {ex.id for ex in fit_examples})
    if overlap:
        raise SteeringError(f"transfer: pairing prompts overlap the contrast/eval prompts ({sorted(overlap)[:5]} ...)")
    reset = probes.rss_peak_reset()
    start_rss = probes.rss_mb("VmRSS") or 0.0
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    src = load(source)
    check_layer(src, source_layer)
    contrast = contrast_fn(fit_examples)
    src_dir = diff_of_means(src, contrast, [source_layer], pooling="answer", template=template)
    src_unit = src_dir.unit(source_layer)
    x = pooled_residuals(src, pairing_examples, [source_layer], pooling, template=template)[:, 0]
    src_bytes, src_layers, src_width = probes.footprint_bytes(src), src.n_layers, src.d_model
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
    check_layer(tgt, t_layer)
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
    # mapped random controls: random unit directions of the *source* space through the same map (identity or
    # least squares), rescaled to the mapped direction's norm, so the control shares the map's distortions
    rand_src = random_directions(src_width, n_random, 1.0, seed)
    if method == "lstsq":
        rand_src = full.map_direction(rand_src)
    rand = rand_src / rand_src.norm(dim=-1, keepdim=True) * float(vec.norm())
    rand_effects = np.array([steer(prepared, r, t_layer).effect for r in rand])
    control = RandomControl(t_layer, float(scale), units, float(vec.norm()), mapped_result.effect, rand_effects,
                            95.0, seed)
    memory = MemoryReport(
        peak_rss_mb=(probes.rss_mb("VmHWM") if reset else None) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        start_rss_mb=start_rss, peak_is_reset=reset, source_bytes=src_bytes, target_bytes=probes.footprint_bytes(tgt),
        source_released=released, cuda_peak_bytes=torch.cuda.max_memory_allocated() if cuda else None)
    result = TransferResult(source, target, contrast.name, source_layer, t_layer, pooling, int(x.shape[0]), fit_r2,
                            held_r2, cosine, float(scale), units, mapped_result, native_result, control, memory,
                            src_width, tgt.d_model, method, time.perf_counter() - started)
    models.free(tgt)
    return result
