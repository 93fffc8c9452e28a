"""The lora block's claim procedures: LORA-ATLAS, LORA-OPROJ, LORA-LATE, LOCKIN (G3), SKIP-RECOVER (G4).

Each takes a :class:`engine.lora.LoraBench` (one model under one plan: the shared adapters, atlases and training
runs, computed once and cached on disk; :func:`plan_for` reads the plan) and the claim's ``[claim.params]`` (rule
thresholds), and returns ``(seed, rigorous)`` findings (:mod:`engine.studies.findings`) with the rule decided. The
measurements themselves are :mod:`engine.lora.studies` (``TargetingStudy.figures(protocol)`` and the like); this
module only reads them and applies the claims' rules.
"""

from __future__ import annotations

from typing import Any, Mapping

from engine.lora import LoraBench, LoraPlan, plan_for, short
from engine.studies.findings import Finding, require

__all__ = ["LoraPlan", "lockin", "lora_atlas", "lora_late", "lora_oproj", "note", "plan_for", "skip_recover"]

PROTOCOLS = ("seed", "rigorous")


def note(bench: LoraBench) -> str:
    """The plan as every lora record's notes state it."""
    plan = bench.plan
    return (f"{plan.tier} plan: {plan.n_train}/{plan.n_eval} train/held-out examples per family of "
            f"{', '.join(plan.families)}; {plan.steps} steps, batch {plan.batch_size}, lr {plan.lr}, "
            f"{plan.warmup_steps} warm-up, prompts cut to {plan.max_len} tokens, r={plan.r}, alpha={plan.alpha}")


def _pair(findings: Mapping[str, Finding]) -> tuple[Finding, Finding]:
    return findings["seed"], findings["rigorous"]


def lora_atlas(bench: LoraBench, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """LORA-ATLAS: atlas-guided LoRA beats random-matched LoRA at equal parameters on every family and matches
    all-linear on JSON (seed: its fixed layers vs its random draw, final training loss, exact match; rigorous:
    own-atlas layers beat > ``params["min_percentile"]`` of random draws on held-out loss, suite accuracy)."""
    study = bench.targeting
    out = {}
    for protocol in PROTOCOLS:
        figures = study.figures(protocol)
        require(figures["atlas_params"] == figures["random_params"], "random-matched must have equal parameters")
        if protocol == "seed":
            beats = study.beats_random("seed")
            json_ok = figures["atlas_json_exact"] >= figures["all_linear_json_exact"]
            expectation = ("seed layers beat the seed's random draw on every family (final training loss) and "
                           "match all-linear's JSON exact match")
        else:
            beats = {f: figures[f"atlas_{short(f)}_percentile"] > params["min_percentile"] for f in study.families}
            json_ok = figures["atlas_json_accuracy"] >= figures["all_linear_json_accuracy"]
            expectation = (f"own-atlas layers beat > {params['min_percentile']:.0%} of random-matched draws "
                           "on every family (held-out loss) and match all-linear's JSON accuracy")
        figures["beats_random"] = beats
        out[protocol] = Finding(protocol, {**bench.common_figures(), **figures}, holds=all(beats.values()) and json_ok,
                                expectation=expectation, seeds=[bench.plan.train_seed, bench.plan.data_seed],
                                notes=[note(bench)])
    return _pair(out)


def lora_oproj(bench: LoraBench, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """LORA-OPROJ: o_proj's loss reduction per parameter / the MLP's exceeds ``params["min_efficiency_ratio"]``."""
    sweep = bench.sweep
    out = {}
    for protocol in PROTOCOLS:
        figures = sweep.figures(protocol)
        ratio = figures["efficiency_ratio"]
        out[protocol] = Finding(
            protocol, {**bench.common_figures(), **figures},
            holds=ratio is not None and ratio > params["min_efficiency_ratio"],
            expectation=("loss reduction per parameter: o_proj > " + figures["mlp_module"]
                         + (" (final training loss)" if protocol == "seed" else " (held-out loss)")),
            seeds=[bench.plan.train_seed], notes=[note(bench)])
    return _pair(out)


def lora_late(bench: LoraBench, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """LORA-LATE: the decile ``params["last_decile"]`` holds the largest adapter effect (seed: share of the summed
    effect on the training prompts; rigorous: mean per-layer effect on held-out prompts, gap CI above 0)."""
    last = params["last_decile"]
    out = {}
    for protocol in PROTOCOLS:
        loc = bench.localisation(protocol)
        figures = {**bench.common_figures(), "adapter": "all-linear", "effect_per_layer": loc.effect,
                   "total_kl_adapter_off": loc.total, "decile_share": loc.decile_share,
                   "decile_mean": loc.decile_mean, "last_decile_layers": loc.deciles[last],
                   "share_last10": loc.share_last10, "n_examples": loc.n_examples}
        ci = {}
        if protocol == "seed":
            figures.update(largest_decile=loc.largest_decile, prompts="training")
            holds = loc.largest_decile == last
            expectation = "the last decile holds the largest share of the summed per-layer adapter effect"
        else:
            gap = loc.last_decile_gap(statistic="mean", seed=bench.plan.data_seed)
            figures.update(largest_decile=loc.largest_mean_decile, prompts="held-out",
                           last_decile_gap=gap.estimate)
            ci["last_decile_gap"] = (gap.low, gap.high)
            holds = loc.largest_mean_decile == last and gap.low > 0
            expectation = ("the last decile has the largest mean per-layer effect, its gap to the next decile "
                           "with a bootstrap CI above 0 (held-out prompts)")
        out[protocol] = Finding(protocol, figures, holds=holds, ci=ci, expectation=expectation,
                                seeds=[bench.plan.train_seed], notes=[note(bench)])
    return _pair(out)


def lockin(bench: LoraBench, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """LOCKIN (G3): every checkpoint from <= ``params["lock_in_fraction"]`` of training agrees (overlap@top_k >=
    ``params["overlap_threshold"]``) with the final atlas; a documented revision when the base model agrees too."""
    threshold, limit = params["overlap_threshold"], params["lock_in_fraction"]
    out = {}
    for protocol in PROTOCOLS:
        result = bench.lock_in(protocol, threshold=threshold, k=params["top_k"])
        early = [o for f, o in zip(result.fractions, result.overlap) if f <= limit + 1e-9]
        figures = {**bench.common_figures(), "atlas": "seed (residual zeroed)" if protocol == "seed"
                   else "own (layer contribution removed), held-out prompts",
                   "fractions": result.fractions, "steps": result.steps, "k": result.k, "top_k": result.top,
                   "overlap_with_final": result.overlap, "spearman_with_final": result.spearman,
                   "base_overlap_with_final": result.base_overlap, "base_spearman_with_final": result.base_spearman,
                   "lock_in_fraction": result.lock_in_fraction,
                   "importance_tie_final": len(set(result.importance[-1])) == 1}
        holds = result.lock_in_fraction is not None and result.lock_in_fraction <= limit + 1e-9 and bool(early)
        revised, reason = False, ""
        if holds and result.base_overlap >= threshold:
            revised = True
            reason = (f"the base model's atlas already agrees with the final one (overlap@{result.k} "
                      f"{result.base_overlap:.2f}): the finetune does not move the atlas, so 'locks in early' "
                      "cannot be told from 'never changes'")
        out[protocol] = Finding(protocol, figures, holds=holds, revised=revised, reason=reason,
                                expectation=(f"every checkpoint from <= {limit:.0%} of training has overlap@{result.k} "
                                             f">= {threshold} with the final checkpoint's atlas"),
                                seeds=[bench.plan.train_seed], notes=[note(bench)])
    return _pair(out)


def skip_recover(bench: LoraBench, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """SKIP-RECOVER (G4): an atlas-chosen skip + recovery finetune beats random skips (seed: its atlas's skip vs its
    random skip, recovered fraction of the training loss; rigorous: held-out loss after recovery beats >
    ``params["min_percentile"]`` of the random skips)."""
    study = bench.skip
    out = {}
    for protocol in PROTOCOLS:
        figures = study.figures(protocol)
        if protocol == "seed":
            atlas_f, random_f = figures["atlas_recovered_fraction"], figures["random_recovered_fraction"]
            if atlas_f is not None and random_f is not None:
                holds = atlas_f > random_f
                measure = "recovered fraction of the training loss"
            else:  # a skip that did not raise the loss leaves no damage to recover: compare the end result
                holds = figures["atlas_recovered_loss"] < figures["random_recovered_loss"]
                measure = "training loss after recovery (a skip did no damage, so no fraction)"
            expectation = f"seed-atlas skip beats the seed's random skip: {measure}"
        else:
            holds = figures["atlas_recovered_loss_percentile"] > params["min_percentile"]
            expectation = (f"after recovery, the own-atlas skip's held-out loss beats > "
                           f"{params['min_percentile']:.0%} of the random skips")
        out[protocol] = Finding(protocol, {**bench.common_figures(), **figures}, holds=holds, expectation=expectation,
                                seeds=[bench.plan.train_seed, bench.plan.data_seed], notes=[note(bench)])
    return _pair(out)
