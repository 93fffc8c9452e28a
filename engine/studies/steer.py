"""The steer block's claim studies: sizes per tier, the sample, the STEER-ALL/STEER-RANDOM study and the STEER-TRANSFER study."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from engine.steering import (
    Contrast,
    SteeringError,
    check_layer,
    diff_of_means,
    family_contrast,
    family_target_set,
    prepare,
    random_control,
    relative_layer,
    seed_protocol_sweep,
    seed_random_control,
    steer_direction,
    sweep,
    transfer,
)


def bootstrap_ci(values: Iterable[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise SteeringError("bootstrap_ci: no values")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(1)
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


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
    guess = hub_guess_layer(lm.n_layers) if guess_layer is None else check_layer(lm, guess_layer)
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
