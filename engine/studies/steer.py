"""The steer block's claim studies: sizes per tier, the sample, the STEER-ALL/STEER-RANDOM study and the STEER-TRANSFER
study, and the claims' procedures (:func:`steer_all`, :func:`steer_random`, :func:`steer_transfer`), each returning
``(seed, rigorous)`` findings (:mod:`engine.studies.findings`).

Sizes per tier: ``[plans.default.<tier>.steer]`` in ``engine/data/plans.toml`` (:func:`sizes_for`; :data:`SIZES` holds
the default plan). The studies are cached by content (``engine.cache``): STEER-ALL and STEER-RANDOM share one study
per model.

Catalogue v2: every rule is decided by :mod:`engine.decisions` on per-prompt values stratified by family (the block
has no bootstrap of its own): :func:`gap_rule` (STEER-ALL, "best > guess" with an equivalence margin) and
:func:`control_rule` (STEER-RANDOM, STEER-TRANSFER: the direction against its controls' 95th percentile). A
finding's ``holds`` is the rule's :class:`~engine.decisions.Evidence`. The seed never ran C4 or G1: their seed
protocol is UNTESTED ("the seed never ran this").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine import cache, plans, quant
from engine import decisions as D
from engine.planner import Need
from engine.steering import (
    Contrast,
    SteeringError,
    Sweep,
    check_layer,
    diff_of_means,
    family_contrast,
    family_target_set,
    off_target_effects,
    prepare,
    random_control,
    relative_layer,
    seed_protocol_sweep,
    steer_direction,
    sweep,
    transfer,
)
from engine.studies.findings import Finding, StudyError, r4, require


@plans.sizes_of("steer")
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
    seed_scale: float = -4.0
    n_pairs: int = 36
    template: str = "none"
    seed: int = 0
    name: str = plans.DEFAULT_PLAN  # the plan these sizes come from (engine/data/plans.toml; set by the loader)

    def describe(self) -> str:
        return (f"contrast {self.family}-vs-rest ({self.n_positive} vs {self.per_negative_family}/other family), "
                f"select {self.n_select} + test {self.n_test} prompts of other families, scales {list(self.scales)} "
                f"({self.units}), {self.n_random} random vectors (seed {self.seed}), seed protocol on "
                f"{self.n_seed_prompts} prompts at s={self.seed_scale}, "
                f"{self.n_pairs} pairing prompts, template {self.template!r}")


def sizes_for(tier: str, params: Mapping[str, Any] | None = None, plan: str | None = None) -> SteerSizes:
    """The tier's sizes (any tier but ``gpu`` reads the cpu plan) from ``engine/data/plans.toml``, with a claim's
    ``[claim.params]`` size overrides (:func:`engine.plans.override`)."""
    return plans.load("steer", SteerSizes, "gpu" if tier == "gpu" else "cpu", params, plan=plan)


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
                progress: bool = True, data: SteerData | None = None) -> dict:
    """Everything STEER-ALL and STEER-RANDOM need on one model, under both protocols, as a JSON-able dict with the
    per-prompt values every decision uses (and the prompts' families, the strata of the bootstrap).

    rigorous: difference-of-means directions at every layer; a layers x scales sweep on the *select* prompts
    (target set = the family's distinctive answer tokens); the best positive (layer, scale) of the sweep, then, on
    the disjoint held-out *test* prompts: its per-prompt effect, the hub-only guess layer's at the guess layer's own
    best scale (also chosen on the select prompts: scoring it at the sweep winner's scale would favour the sweep),
    ``n_random`` random vectors of equal norm and the other families' difference-of-means directions (off-target,
    equal norm) at the same layer and scale.
    seed: the seed's procedure (prompt's own mean activation, norm |s|, sign dropped, all positions, abs KL in
    fp16) at every layer on the first ``n_seed_prompts`` test prompts (per prompt). The seed never ran C4, so no
    seed random control is measured. ``data``: the prompt sets (default :func:`steer_data` of ``sizes``).
    """
    started = time.perf_counter()
    data = steer_data(sizes) if data is None else data
    guess = hub_guess_layer(lm.n_layers) if guess_layer is None else check_layer(lm, guess_layer)
    tpl = sizes.template
    directions = diff_of_means(lm, data.contrast, template=tpl)
    targets = family_target_set(lm, data.contrast, tpl)
    select = prepare(lm, data.select, targets, template=tpl)
    grid = sweep(select, directions, scales=sizes.scales, units=sizes.units, progress=progress)
    best_layer, best_scale, best_select_effect = grid.best(+1)
    test = prepare(lm, data.test, targets, template=tpl)
    best = steer_direction(test, directions, best_layer, best_scale, sizes.units)
    guess_scale, _ = grid.best_scale_at(guess, +1)  # the guess layer at its own best scale (select prompts)
    at_guess = steer_direction(test, directions, guess, guess_scale, sizes.units)
    all_layers = steer_direction(test, directions, "all", best_scale / lm.n_layers, sizes.units)
    control = random_control(test, directions, best_layer, best_scale, sizes.units, sizes.n_random,
                             sizes.percentile, sizes.seed)
    off_target = off_target_effects(test, data.contrast.positive + data.contrast.negative, sizes.family, best_layer,
                                    best.vector_norm, tpl)
    rigorous_s = time.perf_counter() - started

    seed_started = time.perf_counter()
    seed_prompts = data.test[:sizes.n_seed_prompts]
    seed_sweep = seed_protocol_sweep(lm, seed_prompts, list(range(lm.n_layers)), sizes.seed_scale, tpl)
    seed_kl = np.array([np.mean(seed_sweep[l]) for l in range(lm.n_layers)])
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
            "guess_test_effect": at_guess.effect, "guess_scale": guess_scale, "best_test_kl": best.mean_kl,
            "vector_norm": best.vector_norm,
            "resid_norm": float(directions.resid_norm[directions.index(best_layer)]),
            "all_layers_scale": best_scale / lm.n_layers, "all_layers_effect": all_layers.effect,
            "all_layers_kl": all_layers.mean_kl, "random": control.to_dict(),
            "random_effects": control.random_effects.round(6).tolist(), "off_target_effects": off_target,
            "test_groups": [ex.family for ex in data.test], "best_dlogp": best.dlogp.numpy().round(6).tolist(),
            "guess_dlogp": at_guess.dlogp.numpy().round(6).tolist(), "seconds": round(rigorous_s, 1),
        },
        "seed": {
            "scale": sizes.seed_scale, "kl_by_layer": seed_kl.round(6).tolist(),
            "kl_per_prompt": [[round(float(x), 8) for x in seed_sweep[l]] for l in range(lm.n_layers)],
            "groups": [ex.family for ex in seed_prompts],
            "best_layer": int(np.argmax(seed_kl)), "guess_kl": float(seed_kl[guess]),
            "best_kl": float(seed_kl.max()), "seconds": round(seed_s, 1),
        },
        "heatmaps": heatmaps,
        "seconds": round(time.perf_counter() - started, 1),
    }


def transfer_study(source: str, target: str, sizes: SteerSizes, source_layer: int, scale: float,
                   loader: Callable[[str], object] | None = None) -> dict:
    """STEER-TRANSFER: :func:`transfer` with the steering claims' prompt sets, as a JSON-able dict (with the
    mapped and native directions' per-prompt effects and the test prompts' families)."""
    data = steer_data(sizes)
    family = sizes.family
    result = transfer(source, target, fit_examples=list(data.contrast.positive + data.contrast.negative),
                      pairing_examples=data.pairing, eval_examples=data.test,
                      contrast_fn=lambda exs: family_contrast(exs, family), source_layer=source_layer,
                      scale=scale, units=sizes.units, n_random=sizes.n_random, seed=sizes.seed, loader=loader,
                      template=sizes.template)
    out = result.to_dict()
    out["mapped_dlogp"] = result.mapped.dlogp.numpy().round(6).tolist()
    out["native_dlogp"] = result.native.dlogp.numpy().round(6).tolist()
    out["test_groups"] = [ex.family for ex in data.test]
    out["random_effects"] = result.random.random_effects.round(6).tolist()
    out["sizes"] = sizes.describe()
    return out


# --------------------------------------------------------------------------------------------- the v2 rules
#
# Each rule is one function of per-prompt measurements (what the studies store) and the claim's [claim.params]
# (engine/data/claims.toml): the claim procedures below and the unit tests call the same functions.

SEED_NEVER_RAN = "the seed never ran this"


def undecided(evidence: D.Evidence, why: str, n_to_decide: int | None = None) -> D.Evidence:
    """``evidence`` with its outcome replaced by undecided for ``why`` (a precondition or control of the rule that
    did not hold, e.g. too few controls): the figures and data stay, the verdict is INCONCLUSIVE."""
    return replace(evidence, outcome=D.Outcome.UNDECIDED, undecided=why, statement=f"{evidence.statement}; {why}",
                   n_to_decide=n_to_decide if n_to_decide is not None else evidence.n_to_decide,
                   params={**evidence.params, "precondition": why})  # recompute() decides it the same way


def rule_params(params: Mapping[str, Any], key: str = "delta") -> tuple[float, str]:
    """(delta, its rationale) of a rule from its [claim.params] (catalogue v3: no minimum-n gate; each rule's
    smallest n comes from its calibration)."""
    return _delta(params, key)


def _delta(params: Mapping[str, Any], key: str = "delta") -> tuple[float, str]:
    if key not in params or f"{key}_rationale" not in params:
        raise StudyError(f"[claim.params] needs {key} and {key}_rationale (v2: every delta has its reason)")
    return float(params[key]), str(params[key + "_rationale"])


def gap_rule(a: Sequence[float], b: Sequence[float], groups: Sequence[str], params: Mapping[str, Any], *,
             key: str = "delta", label: str = "best - guess") -> D.Evidence:
    """STEER-ALL's rule on paired per-prompt values: "A > B" (:func:`engine.decisions.greater` on A - B) with the
    equivalence margin ``params[key]``: for when the CI of the gap is above 0 (CONFIRMED); against when its upper
    bound is below delta (FAILED: the margin's side the claim needs is excluded; a gap CI within [-delta, delta]
    is the case the catalogue names, and a CI below -delta, the guess beating the sweep's pick on held-out
    prompts, is against the claim as well); else undecided."""
    delta, why = rule_params(params, key)
    return D.greater(D.paired(a, b), groups, delta=delta, label=label, rationale=why)


SAMPLED_CONTROLS = ("random",)  # control sets drawn from a distribution (their percentile is an estimate)


def control_rule(effects: Sequence[float], groups: Sequence[str], controls: Mapping[str, Sequence[float]],
                 params: Mapping[str, Any], *, label: str = "direction - controls' p95") -> D.Evidence:
    """STEER-RANDOM's (and STEER-TRANSFER's) rule: the direction's per-prompt target effect against the
    ``params["random_percentile"]`` (95) percentile of each control set's effects (random equal-norm vectors,
    off-target directions, ...). For a sampled set (random vectors) the percentile is an estimate from m controls:
    its distribution-free 95% CI from order statistics (binomial) enters the decision; the off-target directions are
    every other family's, the whole population, so their percentile is known. for: the direction's CI lower bound is above the *upper* bound
    of the highest control percentile (CONFIRMED); against: the direction's CI upper bound is below the *lower*
    bound of that percentile + delta (FAILED); else undecided. :func:`engine.decisions.greater` on the effect minus
    the percentile's upper bound, with delta reduced by the percentile's CI width. A control set below its minimum
    count (``params["min_<name>"]``), or too small to bound its percentile from above, leaves the rule undecided."""
    delta, why = rule_params(params)
    p = float(params.get("random_percentile", 95))
    if not controls:
        raise StudyError(f"{label}: no control set")
    # a sampled control set (random vectors) estimates its distribution's percentile: its order-statistic CI; an
    # exhaustive one (the off-target directions of every other family) is the whole population: its percentile is
    # known, not estimated
    bounds = {name: percentile_ci(v, p) if name in SAMPLED_CONTROLS else (float(np.percentile(v, p)),) * 3
              for name, v in controls.items()}
    known = {name: b for name, b in bounds.items() if np.isfinite(b[1]) and np.isfinite(b[2])}
    thresholds = {name: b[1] for name, b in bounds.items()}  # the point estimate
    worst = max(known, key=lambda n: known[n][2]) if known else None  # the highest upper bound decides
    low, point, high = known[worst] if worst else (0.0, 0.0, 0.0)
    ev = D.greater(np.asarray(effects, dtype=np.float64) - high, groups, delta=delta - (high - low), label=label,
                   rationale=why)
    counts = {name: len(v) for name, v in controls.items()}
    minimum = {name: int(params.get(f"min_{name}", 1)) for name in controls}
    details = {"percentile": p, "thresholds": thresholds, "threshold": max(thresholds.values()),
               "threshold_ci": [low, high], "deciding_control": worst,
               "percentile_cis": {k: [x if np.isfinite(x) else None for x in v] for k, v in bounds.items()},
               "control_counts": counts,
               "control_minimum": minimum, "controls": {k: [float(x) for x in v] for k, v in controls.items()},
               "direction_ci": None if ev.ci is None else [ev.ci[0] + high, ev.ci[1] + high]}
    ev = replace(ev, details={**ev.details, **details}, params={**ev.params, "percentile": p, "min_controls": minimum})
    short = [f"{name}: {counts[name]} < {minimum[name]}" for name in controls if counts[name] < minimum[name]]
    unbounded = [name for name, b in bounds.items() if len(controls[name]) and not np.isfinite(b[2])]
    if short:
        return undecided(ev, f"below the rule's minimum number of controls ({', '.join(short)})")
    if unbounded:
        return undecided(ev, f"too few controls to bound their {p:g}th percentile from above ({', '.join(unbounded)})")
    return ev


def percentile_ci(values: Sequence[float], p: float, level: float = 0.95) -> tuple[float, float, float]:
    """(lower, estimate, upper) of the ``p``-th percentile of ``values``: the distribution-free CI from order
    statistics (the number of values below the true percentile is Binomial(m, p/100)); an end the sample cannot
    reach is -inf / +inf."""
    from scipy import stats as sps

    x = np.sort(np.asarray(values, dtype=np.float64))
    m = len(x)
    if m == 0:
        return float("-inf"), float("nan"), float("inf")
    q = p / 100.0
    alpha = (1 - level) / 2
    lo_k = int(sps.binom.ppf(alpha, m, q))  # order statistic x_(lo_k) (1-based) lies below the percentile
    hi_k = int(sps.binom.ppf(1 - alpha, m, q)) + 1
    low = float(x[lo_k - 1]) if lo_k >= 1 else float("-inf")
    high = float(x[hi_k - 1]) if hi_k <= m else float("inf")
    return low, float(np.percentile(x, p)), high


def hub_guess(tier: str, seed_figures: Mapping[str, Any]) -> int | None:
    """The hub-only guess layer a claim states: the seed's ``hub_guess_layer`` for this model on the gpu tier; on
    the cpu tier None (the layer at the seed's hub depth, :func:`hub_guess_layer`)."""
    return seed_figures.get("hub_guess_layer") if tier == "gpu" else None


def cached_steer_study(load_model: Callable[[str], Any], key: str, sizes: SteerSizes,
                       guess: int | None = None) -> dict:
    """The cached STEER-ALL / STEER-RANDOM study of ``key`` (:func:`steer_study`; the model is loaded only when
    the study is not cached)."""
    parts = {"kind": "steer-study-v2", "model": key, "weights": quant.weights_fingerprint(key),
             "sizes": plans.values(sizes), "guess": guess}
    from engine import executors, models

    remote = executors.remote(steer_json, key, str(models.default_device()), parts["weights"], sizes, guess,
                              label=f"steer-study {key}")
    return cache.cached(parts, lambda: steer_study(load_model(key), sizes, guess_layer=guess), remote=remote)


def steer_json(key: str, device: str, weights: str, sizes: SteerSizes, guess: int | None) -> dict:
    """The cached payload of :func:`cached_steer_study` computed in this process (a measurement executor's worker:
    the model loaded on the driver's device, its weights checked to be the driver's)."""
    from engine import models

    if quant.weights_fingerprint(key) != weights:
        raise StudyError(f"{key}: this worker's weights are {quant.weights_fingerprint(key)}, the driver's {weights}")
    return steer_study(models.shared(key, device=device, max_models=1), sizes, guess_layer=guess)


@dataclass(frozen=True)
class SteerStudySpec:
    """The STEER-ALL / STEER-RANDOM study of one model (:func:`cached_steer_study`: one per model, plan and guess
    layer, shared by both claims and by STEER-TRANSFER's source)."""

    model: str
    sizes: SteerSizes
    guess: int | None = None

    @property
    def need(self) -> Need:
        return Need(self.model, "steer-study-v2", "the steer plan's prompts")

    def measure(self, load_model: Callable[[str], Any]) -> dict:
        return cached_steer_study(load_model, self.model, self.sizes, self.guess)


def steer_spec(model: str, tier: str, params: Mapping[str, Any], plan: str | None,
               seed_figures: Mapping[str, Any]) -> SteerStudySpec:
    return SteerStudySpec(model, sizes_for(tier, params, plan), hub_guess(tier, seed_figures))


def _ci(ev: D.Evidence) -> dict[str, tuple[float, float]]:
    return {ev.label: ev.ci} if ev.ci is not None else {}


def steer_all_findings(study: dict, sizes: SteerSizes, heatmap_dir: str | Path, params: Mapping[str, Any],
                       key: str | None = None) -> tuple[Finding, Finding]:
    """STEER-ALL from a study (catalogue v2): on held-out prompts the full sweep's best layer (selected on the
    disjoint select prompts) beats the hub-only guess layer: :func:`gap_rule` on the per-prompt Δlog P(targets)
    (``params["delta"]``). Seed: the same rule on the seed procedure's per-prompt KL at its largest-KL layer vs
    the guess layer (``params["seed_delta"]``); the seed picks and scores the layer on the same prompts, so the
    held-out part is not decided there. Writes the sweep's heatmaps to ``heatmap_dir``."""
    n_layers, guess = study["n_layers"], study["hub_guess_layer"]
    rig, seed = study["rigorous"], study["seed"]
    model = study["model"] if key is None else key
    sweep_ = Sweep.from_dict(rig["sweep"])
    heatmaps = [str(sweep_.heatmap(Path(heatmap_dir) / f"steer-{model}-{m}.png", m)) for m in ("effect", "kl")]
    require(sweep_.layers == list(range(n_layers)) and bool(np.isfinite(sweep_.effect).all()),
            f"the sweep must cover every layer with finite effects (layers {sweep_.layers})")
    ev = gap_rule(rig["best_dlogp"], rig["guess_dlogp"], rig["test_groups"], params,
                  label=f"Δlog P(targets) at L{rig['best_layer']} - at guess L{guess} (held-out)")
    rigorous = Finding(
        "rigorous",
        figures={"best_layer": rig["best_layer"], "best_scale": rig["best_scale"], "hub_guess_layer": guess,
                 "best_depth": r4(rig["best_layer"] / (n_layers - 1)), "best_effect": r4(rig["best_test_effect"]),
                 "guess_effect": r4(rig["guess_test_effect"]), "guess_scale": rig.get("guess_scale"),
                 "gap": r4(ev.estimate), "n_test": ev.n, "delta": ev.params["delta"],
                 "effect_by_layer": [r4(x) for x in sweep_.layer_effects(rig["best_scale"])],
                 "all_layers_effect": r4(rig["all_layers_effect"]), "layers_swept": len(sweep_.layers),
                 "targets": study["targets"]},
        holds=ev, ci=_ci(ev), seeds=[sizes.seed],
        notes=[(f"{study['sizes']}; best (layer, scale) chosen on the select prompts, scored on the disjoint test "
               f"prompts: gap = Δlog P(targets) at the best layer minus at the guess layer, per prompt, bootstrap "
               f"stratified by family; {ev.statement}; heatmaps: {', '.join(heatmaps)}")],
    )
    kl = np.asarray(seed["kl_per_prompt"], dtype=np.float64)
    sev = gap_rule(kl[seed["best_layer"]], kl[guess], seed["groups"], params, key="seed_delta",
                   label=f"seed KL at L{seed['best_layer']} - at guess L{guess}")
    seed_finding = Finding(
        "seed",
        figures={"best_layer": seed["best_layer"], "hub_guess_layer": guess, "best_kl": r4(seed["best_kl"]),
                 "guess_kl": r4(seed["guess_kl"]), "gap_kl": r4(sev.estimate), "n_prompts": sev.n,
                 "kl_by_layer": [r4(x) for x in seed["kl_by_layer"]],
                 "not_decided": ["held-out prompts (the seed selects and scores its layer on the same prompts)",
                                 "a target effect (the seed's only metric is abs KL, sign dropped)"]},
        holds=sev, ci=_ci(sev), seeds=[sizes.seed],
        notes=[(f"seed procedure (own mean activation, norm |s|={abs(seed['scale'])}, sign dropped, all positions, "
               f"abs KL fp16) at every layer on {sev.n} prompts; 'best' = largest mean KL; {sev.statement}. The "
               f"seed picks and scores its best layer on the same prompts: the selection inflates the gap (a review's "
               f"simulation: 28-35% CONFIRMED with no layer effect), so read this verdict beside the rigorous "
               f"protocol's held-out one ({ev.outcome.value}: {ev.statement})")],
    )
    return seed_finding, rigorous


def steer_all(load_model: Callable[[str], Any], key: str, sizes: SteerSizes, params: Mapping[str, Any], *,
              guess: int | None = None, heatmap_dir: str | Path) -> tuple[Finding, Finding]:
    """STEER-ALL: sweep every layer and compare the best layer with the hub-only guess on held-out prompts."""
    return steer_all_findings(cached_steer_study(load_model, key, sizes, guess), sizes, heatmap_dir, params, key)


def steer_random_findings(study: dict, sizes: SteerSizes, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """STEER-RANDOM (block C4) from a study: :func:`control_rule` with two control sets, ``random`` (equal-norm
    random vectors) and ``off_target`` (the other families' difference-of-means directions at equal norm), at the
    best layer and scale, on the held-out prompts. The seed never ran C4: its protocol is UNTESTED."""
    rig = study["rigorous"]
    controls = {"random": rig["random_effects"], "off_target": list(rig["off_target_effects"].values())}
    ev = control_rule(rig["best_dlogp"], rig["test_groups"], controls, params,
                      label=f"direction effect - controls' p{float(params.get('random_percentile', 95)):g}")
    rand = np.asarray(rig["random_effects"])
    d = ev.details
    rigorous = Finding(
        "rigorous",
        figures={"direction_effect": r4(rig["best_test_effect"]), "direction_ci": d["direction_ci"],
                 "random_p95": r4(d["thresholds"]["random"]), "off_target_p95": r4(d["thresholds"]["off_target"]),
                 "random_mean": r4(rand.mean()), "random_max": r4(rand.max()), "n_random": len(rand),
                 "n_off_target": len(controls["off_target"]),
                 "off_target_effects": {k: r4(v) for k, v in rig["off_target_effects"].items()},
                 "rank_vs_random": r4(float((rand < rig["best_test_effect"]).mean())), "n_test": ev.n,
                 "delta": ev.params["delta"], "layer": rig["best_layer"], "scale": rig["best_scale"],
                 "vector_norm": r4(rig["vector_norm"]), "vector_to_resid": r4(rig["vector_norm"] / rig["resid_norm"]),
                 "targets": study["targets"]},
        holds=ev, ci=_ci(ev), seeds=[sizes.seed],
        notes=[(f"{study['sizes']}; effect = Δlog P(target tokens) per held-out prompt of other families; layer and "
               f"scale chosen on separate select prompts; controls at the same layer, scale and norm; "
               f"{ev.statement}")],
    )
    return Finding.not_run("seed", f"{SEED_NEVER_RAN} (block C4)"), rigorous


def steer_random(load_model: Callable[[str], Any], key: str, sizes: SteerSizes, params: Mapping[str, Any], *,
                 guess: int | None = None) -> tuple[Finding, Finding]:
    """STEER-RANDOM (block C4): the difference-of-means direction beats random and off-target controls."""
    return steer_random_findings(cached_steer_study(load_model, key, sizes, guess), sizes, params)


def steer_transfer_findings(t: dict, sizes: SteerSizes, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """STEER-TRANSFER (block G1) from a transfer study: :func:`control_rule` on the mapped direction's per-prompt
    effect against the mapped random controls (random source directions through the same map), held-out R^2 of
    the map reported. Requires that the source model was released before the target was loaded. The seed never
    ran G1: its protocol is UNTESTED."""
    require(bool(t["source_released"]), "the source model must be released before the target is loaded")
    ev = control_rule(t["mapped_dlogp"], t["test_groups"], {"random": t["random_effects"]}, params,
                      label="mapped direction effect - mapped random p95")
    rigorous = Finding(
        "rigorous",
        figures={"mapped_effect": r4(t["mapped_effect"]), "mapped_ci": ev.details["direction_ci"],
                 "native_effect": r4(t["native_effect"]), "random_p95": r4(ev.details["threshold"]),
                 "n_random": len(t["random_effects"]), "n_test": ev.n, "delta": ev.params["delta"],
                 "cosine_to_native": r4(t["cosine_to_native"]), "method": t["method"], "fit_r2": r4(t["fit_r2"]),
                 "heldout_r2": r4(t["heldout_r2"]), "n_pairs": t["n_pairs"], "source_layer": t["source_layer"],
                 "target_layer": t["target_layer"], "widths": [t["width_source"], t["width_target"]],
                 "peak_rss_mb": t["peak_rss_mb"], "peak_rss_delta_mb": t["peak_rss_delta_mb"],
                 "source_mb": t["source_mb"], "target_mb": t["target_mb"], "both_models_mb": t["both_models_mb"],
                 "source_released_before_target_load": True, "peak_is_reset": t["peak_is_reset"]},
        holds=ev, ci=_ci(ev), seeds=[sizes.seed],
        notes=[(f"{t['sizes']}; direction = the source's best layer/scale from its STEER-ALL sweep, mapped to the "
               "same relative depth; effect = Δlog P(the family's answer tokens) per held-out prompt of other "
               "families; controls: random source directions mapped the same way, at the mapped norm; held-out R^2 "
               "of the map on held-out pairing prompts; the source model is freed (checked by weak reference) "
               f"before the target is loaded; {ev.statement}")],
    )
    return Finding.not_run("seed", f"{SEED_NEVER_RAN} (block G1: its two-model load ran out of memory)"), rigorous


def steer_transfer(load_model: Callable[[str], Any], source: str, target: str, sizes: SteerSizes,
                   params: Mapping[str, Any], *, guess: int | None = None) -> tuple[Finding, Finding]:
    """STEER-TRANSFER (block G1): the source's best direction (its cached STEER-ALL study), mapped into the target
    (least squares on paired activations when the widths differ), still steers there beyond mapped random
    controls; one model in memory at a time."""
    src = cached_steer_study(load_model, source, sizes, guess)["rigorous"]
    parts = {"kind": "steer-transfer-v2", "source": source, "target": target, "sizes": plans.values(sizes),
             "weights": [quant.weights_fingerprint(source), quant.weights_fingerprint(target)],
             "layer": src["best_layer"], "scale": src["best_scale"]}
    t = cache.cached(parts, lambda: transfer_study(source, target, sizes, src["best_layer"], src["best_scale"]))
    return steer_transfer_findings(t, sizes, params)


def steer_transfer_claim(ctx, load_model: Callable[[str], Any]) -> tuple[Finding, Finding]:
    """The STEER-TRANSFER row's procedure (a cross-model map: the source's study decides what the target measures):
    the target's first model is the source, its last the target."""
    return steer_transfer(load_model, ctx.models[0], ctx.models[-1], sizes_for(ctx.tier, ctx.params, ctx.plan),
                          ctx.params, guess=hub_guess(ctx.tier, ctx.seed_figures))


steer_transfer_claim.dynamic = "the mapped transfer follows the source's best layer and scale (its steering study)"
