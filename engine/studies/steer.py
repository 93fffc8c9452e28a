"""The steer block's claim studies: sizes per tier, the sample, the STEER-ALL/STEER-RANDOM study and the STEER-TRANSFER
study, and the claims' procedures (:func:`steer_all`, :func:`steer_random`, :func:`steer_transfer`), each returning
``(seed, rigorous)`` findings (:mod:`engine.studies.findings`).

Sizes per tier: ``[plans.default.<tier>.steer]`` in ``engine/data/plans.toml`` (:func:`sizes_for`; :data:`SIZES` holds
the default plan). The studies are cached by content (``engine.cache``): STEER-ALL and STEER-RANDOM share one study
per model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from engine import cache, plans, quant
from engine.steering import (
    Contrast,
    SteeringError,
    Sweep,
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
from engine.studies.findings import Finding, r4


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
    name: str = plans.DEFAULT_PLAN  # the plan these sizes come from (engine/data/plans.toml; set by the loader)

    def describe(self) -> str:
        return (f"contrast {self.family}-vs-rest ({self.n_positive} vs {self.per_negative_family}/other family), "
                f"select {self.n_select} + test {self.n_test} prompts of other families, scales {list(self.scales)} "
                f"({self.units}), {self.n_random} random vectors (seed {self.seed}), seed protocol on "
                f"{self.n_seed_prompts} prompts at s={self.seed_scale} with {self.n_seed_random} random vectors, "
                f"{self.n_pairs} pairing prompts, template {self.template!r}")


def sizes_for(tier: str, params: Mapping[str, Any] | None = None) -> SteerSizes:
    """The tier's sizes (any tier but ``gpu`` reads the cpu plan) from ``engine/data/plans.toml``, with a claim's
    ``[claim.params]`` size overrides (:func:`engine.plans.override`)."""
    return plans.load("steer", SteerSizes, "gpu" if tier == "gpu" else "cpu", params)


SIZES: dict[str, SteerSizes] = {tier: sizes_for(tier) for tier in plans.TIERS}  # the default plan


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


# --------------------------------------------------------------------------------------------- claim procedures
#
# ``load_model(key) -> LoadedModel``: the claims' session loader. ``sizes``: ``sizes_for(claim.tier, claim.params)``;
# ``params``: the claim's ``[claim.params]`` (rule thresholds). Each returns (seed, rigorous) findings.


def hub_guess(tier: str, seed_figures: Mapping[str, Any]) -> int | None:
    """The hub-only guess layer a claim states: the seed's ``hub_guess_layer`` for this model on the gpu tier; on
    the cpu tier None (the layer at the seed's hub depth, :func:`hub_guess_layer`)."""
    return seed_figures.get("hub_guess_layer") if tier == "gpu" else None


def cached_steer_study(load_model: Callable[[str], Any], key: str, sizes: SteerSizes,
                       guess: int | None = None) -> dict:
    """The cached STEER-ALL / STEER-RANDOM study of ``key`` (:func:`steer_study`; the model is loaded only when
    the study is not cached)."""
    parts = {"kind": "steer-study", "model": key, "weights": quant.weights_fingerprint(key),
             "sizes": plans.values(sizes), "guess": guess}
    return cache.cached(parts, lambda: steer_study(load_model(key), sizes, guess_layer=guess))


def steer_all_findings(study: dict, sizes: SteerSizes, heatmap_dir: str | Path,
                       key: str | None = None) -> tuple[Finding, Finding]:
    """STEER-ALL from a study: the sweep is complete at every layer (rigorous: revised when the best layer is not
    separated from the hub-only guess; seed: revised when its largest KL is at the guess itself). Writes the
    sweep's heatmaps to ``heatmap_dir`` (named after ``key``, default the study's model)."""
    n_layers, guess = study["n_layers"], study["hub_guess_layer"]
    rig, seed = study["rigorous"], study["seed"]
    model = study["model"] if key is None else key
    sweep_ = Sweep.from_dict(rig["sweep"])
    heatmaps = [str(sweep_.heatmap(Path(heatmap_dir) / f"steer-{model}-{m}.png", m)) for m in ("effect", "kl")]
    complete = sweep_.layers == list(range(n_layers)) and bool(np.isfinite(sweep_.effect).all())
    same = rig["best_layer"] == guess or rig["gap_ci"][0] <= 0
    rigorous = Finding(
        "rigorous",
        figures={"best_layer": rig["best_layer"], "best_scale": rig["best_scale"], "hub_guess_layer": guess,
                 "best_depth": r4(rig["best_layer"] / (n_layers - 1)), "best_effect": r4(rig["best_test_effect"]),
                 "guess_effect": r4(rig["guess_test_effect"]), "gap": r4(rig["gap"]),
                 "effect_by_layer": [r4(x) for x in sweep_.layer_effects(rig["best_scale"])],
                 "all_layers_effect": r4(rig["all_layers_effect"]), "layers_swept": len(sweep_.layers),
                 "targets": study["targets"]},
        holds=complete, ci={"gap": rig["gap_ci"]}, seeds=[sizes.seed],
        revised=complete and same,
        reason=(f"the best steering layer (L{rig['best_layer']}) is not separated from the hub-only guess "
                f"L{guess} on held-out prompts (gap CI {rig['gap_ci'][0]:.3g}..{rig['gap_ci'][1]:.3g}); the full "
                "sweep is shown" if same else ""),
        notes=[f"{study['sizes']}; best (layer, scale) chosen on the select prompts, gap = Δlog P(targets) at "
               f"the best layer minus at the guess layer on the test prompts; heatmaps: {', '.join(heatmaps)}"],
    )
    seed_complete = len(seed["kl_by_layer"]) == n_layers and bool(np.isfinite(seed["kl_by_layer"]).all())
    seed_same = seed["best_layer"] == guess
    seed_finding = Finding(
        "seed",
        figures={"best_layer": seed["best_layer"], "hub_guess_layer": guess, "best_kl": r4(seed["best_kl"]),
                 "guess_kl": r4(seed["guess_kl"]), "kl_by_layer": [r4(x) for x in seed["kl_by_layer"]]},
        holds=seed_complete, revised=seed_complete and seed_same,
        reason=f"the seed procedure's largest KL is at the hub-guess layer L{guess} itself" if seed_same else "",
        notes=[f"seed procedure (own mean activation, norm |s|={abs(seed['scale'])}, sign dropped, all positions, "
               "abs KL fp16) at every layer; 'best' = largest KL, which is not a target effect"],
    )
    return seed_finding, rigorous


def steer_all(load_model: Callable[[str], Any], key: str, sizes: SteerSizes, *, guess: int | None = None,
              heatmap_dir: str | Path) -> tuple[Finding, Finding]:
    """STEER-ALL: sweep every layer and compare the best layer with the hub-only guess."""
    return steer_all_findings(cached_steer_study(load_model, key, sizes, guess), sizes, heatmap_dir, key)


def steer_random_findings(study: dict, sizes: SteerSizes, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """STEER-RANDOM from a study: the direction's effect exceeds the ``params["random_percentile"]`` (default 95)
    percentile of random vectors of equal norm (seed: its vector's KL vs random vectors' KL)."""
    p = float(params.get("random_percentile", 95))
    rig, seed = study["rigorous"], study["seed"]
    rand = np.asarray(rig["random_effects"])
    threshold = float(np.percentile(rand, p))
    effect = rig["best_test_effect"]
    rigorous = Finding(
        "rigorous",
        figures={"direction_effect": r4(effect), f"random_p{p:g}": r4(threshold), "random_mean": r4(rand.mean()),
                 "random_max": r4(rand.max()), "rank": r4(float((rand < effect).mean())), "n_random": len(rand),
                 "layer": rig["best_layer"], "scale": rig["best_scale"], "vector_norm": r4(rig["vector_norm"]),
                 "vector_to_resid": r4(rig["vector_norm"] / rig["resid_norm"]), "targets": study["targets"]},
        holds=bool(effect > threshold), ci={"direction_effect": rig["direction_ci"]}, seeds=[sizes.seed],
        notes=[f"{study['sizes']}; effect = mean Δlog P(target tokens) on held-out prompts of other families; "
               "layer and scale chosen on separate select prompts"],
    )
    srand = np.asarray(seed["random_kl"])
    sthreshold = float(np.percentile(srand, p))
    seed_finding = Finding(
        "seed",
        figures={"own_vector_kl": r4(seed["own_kl"]), f"random_p{p:g}_kl": r4(sthreshold),
                 "random_mean_kl": r4(srand.mean()), "n_random": len(srand), "layer": study["hub_guess_layer"],
                 "norm": abs(seed["scale"])},
        holds=bool(seed["own_kl"] > sthreshold), seeds=[sizes.seed],
        notes=["the seed never ran C4; this is its steering procedure (the prompt's own mean activation, norm |s|) "
               "against random vectors of norm |s| at its hub layer, metric abs KL (its only metric)"],
    )
    return seed_finding, rigorous


def steer_random(load_model: Callable[[str], Any], key: str, sizes: SteerSizes, params: Mapping[str, Any], *,
                 guess: int | None = None) -> tuple[Finding, Finding]:
    """STEER-RANDOM (block C4): the difference-of-means direction beats random vectors of equal norm."""
    return steer_random_findings(cached_steer_study(load_model, key, sizes, guess), sizes, params)


def steer_transfer_findings(t: dict, sizes: SteerSizes) -> tuple[Finding, Finding]:
    """STEER-TRANSFER from a transfer study: the mapped direction's effect CI is above 0 and the source model was
    released before the target was loaded. The seed never ran block G1: its protocol is untested."""
    positive = t["mapped_ci"][0] > 0
    memory_ok = bool(t["source_released"])
    rigorous = Finding(
        "rigorous",
        figures={"mapped_effect": r4(t["mapped_effect"]), "native_effect": r4(t["native_effect"]),
                 "random_p95": r4(t["random_threshold"]), "mapped_beats_random": t["mapped_beats_random"],
                 "cosine_to_native": r4(t["cosine_to_native"]), "method": t["method"], "fit_r2": r4(t["fit_r2"]),
                 "heldout_r2": r4(t["heldout_r2"]), "n_pairs": t["n_pairs"], "source_layer": t["source_layer"],
                 "target_layer": t["target_layer"], "widths": [t["width_source"], t["width_target"]],
                 "peak_rss_mb": t["peak_rss_mb"], "peak_rss_delta_mb": t["peak_rss_delta_mb"],
                 "source_mb": t["source_mb"], "target_mb": t["target_mb"], "both_models_mb": t["both_models_mb"],
                 "source_released_before_target_load": memory_ok, "peak_is_reset": t["peak_is_reset"]},
        holds=positive and memory_ok, ci={"mapped_effect": t["mapped_ci"], "native_effect": t["native_ci"]},
        seeds=[sizes.seed],
        notes=[f"{t['sizes']}; direction = the source's best layer/scale from its STEER-ALL sweep, mapped to the "
               "same relative depth; effect = Δlog P(the family's answer tokens) on held-out prompts of other "
               "families; the source model is freed (checked by weak reference) before the target is loaded; "
               "peak RSS is the process's (other models of the session included), the delta is over the transfer"],
    )
    seed = Finding.not_run("seed", "the seed never ran block G1 (its two-model load ran out of memory), so there "
                                   "is no seed procedure to reproduce")
    return seed, rigorous


def steer_transfer(load_model: Callable[[str], Any], source: str, target: str, sizes: SteerSizes, *,
                   guess: int | None = None) -> tuple[Finding, Finding]:
    """STEER-TRANSFER (block G1): the source's best direction (its cached STEER-ALL study), mapped into the target
    (least squares on paired activations when the widths differ), still steers there; one model in memory at a
    time."""
    src = cached_steer_study(load_model, source, sizes, guess)["rigorous"]
    parts = {"kind": "steer-transfer", "source": source, "target": target, "sizes": plans.values(sizes),
             "weights": [quant.weights_fingerprint(source), quant.weights_fingerprint(target)],
             "layer": src["best_layer"], "scale": src["best_scale"]}
    t = cache.cached(parts, lambda: transfer_study(source, target, sizes, src["best_layer"], src["best_scale"]))
    return steer_transfer_findings(t, sizes)
