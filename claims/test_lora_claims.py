"""The lora block: LORA-ATLAS, LORA-LATE, LORA-OPROJ, LOCKIN (G3) and SKIP-RECOVER (G4), seed and rigorous protocol.

Each test measures with :class:`engine.lora.LoraBench` (one per model, shared by the tests: the all-linear
adapter, the atlases and every training run are computed once and cached on disk) and records one verdict per
protocol. Sizes and budgets are the tier's plan (``engine.lora.CPU_PLAN`` / ``GPU_PLAN``); rule thresholds come
from ``[claim.params]`` in ``engine/data/claims.toml``. On the gpu tier the seed's figures are compared by the
framework; on the cpu tier the rule decides and the figures are pinned as baselines.
"""

from __future__ import annotations

import pytest

from claims.plugin import claim_params
from engine import lora

pytestmark = pytest.mark.slow  # every test here trains adapters on a real model (minutes on 2 cores)

_BENCHES: dict[tuple[str, str], lora.LoraBench] = {}


def per_model(claim_id: str):
    """``claim_params`` with an xdist group per model: under ``-n 2 --dist loadgroup`` each worker trains one
    model's adapters (and shares them across the five claims) instead of both workers training both."""
    return [pytest.param(*p.values, marks=[*p.marks, pytest.mark.xdist_group(p.id)], id=p.id)
            for p in claim_params(claim_id)]


@pytest.fixture(scope="module", autouse=True)
def _free_benches():
    yield
    _BENCHES.clear()


@pytest.fixture
def bench(claim, load_model):
    """The model's LoRA bench for this claim's tier (one per model and tier for the whole module)."""
    key = (claim.model, claim.tier)
    if key not in _BENCHES:
        _BENCHES[key] = lora.LoraBench(load_model(claim.model), lora.plan_for(claim.tier))
    return _BENCHES[key]


def _note(bench: lora.LoraBench) -> str:
    plan = bench.plan
    return (f"{plan.tier} plan: {plan.n_train}/{plan.n_eval} train/held-out examples per family of "
            f"{', '.join(plan.families)}; {plan.steps} steps, batch {plan.batch_size}, lr {plan.lr}, "
            f"{plan.warmup_steps} warm-up, prompts cut to {plan.max_len} tokens, r={plan.r}, alpha={plan.alpha}")


@pytest.mark.parametrize("model", per_model("LORA-ATLAS"))
def test_atlas_guided_lora_beats_random_matched_at_equal_params(claim, model, bench):
    study = bench.targeting
    for protocol in claim.target.protocols:
        figures = study.figures(protocol)
        assert figures["atlas_params"] == figures["random_params"], "random-matched must have equal parameters"
        if protocol == "seed":
            beats = study.beats_random("seed")
            json_ok = figures["atlas_json_exact"] >= figures["all_linear_json_exact"]
            expectation = ("seed layers beat the seed's random draw on every family (final training loss) and "
                           "match all-linear's JSON exact match")
        else:
            beats = {f: figures[f"atlas_{lora.short(f)}_percentile"] > claim.params["min_percentile"]
                     for f in study.families}
            json_ok = figures["atlas_json_accuracy"] >= figures["all_linear_json_accuracy"]
            expectation = (f"own-atlas layers beat > {claim.params['min_percentile']:.0%} of random-matched draws "
                           "on every family (held-out loss) and match all-linear's JSON accuracy")
        figures["beats_random"] = beats
        claim.record(protocol, figures={**bench.common_figures(), **figures}, holds=all(beats.values()) and json_ok,
                     expectation=expectation, seeds=[bench.plan.train_seed, bench.plan.data_seed],
                     notes=_note(bench))


@pytest.mark.parametrize("model", per_model("LORA-OPROJ"))
def test_o_proj_is_the_most_parameter_efficient_module(claim, model, bench):
    sweep = bench.sweep
    for protocol in claim.target.protocols:
        figures = sweep.figures(protocol)
        ratio = figures["efficiency_ratio"]
        claim.record(protocol, figures={**bench.common_figures(), **figures},
                     holds=ratio is not None and ratio > claim.params["min_efficiency_ratio"],
                     expectation=("loss reduction per parameter: o_proj > " + figures["mlp_module"]
                                  + (" (final training loss)" if protocol == "seed" else " (held-out loss)")),
                     seeds=[bench.plan.train_seed], notes=_note(bench))


@pytest.mark.parametrize("model", per_model("LORA-LATE"))
def test_adapter_effects_concentrate_in_the_final_tenth_of_layers(claim, model, bench):
    last = claim.params["last_decile"]
    for protocol in claim.target.protocols:
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
        claim.record(protocol, figures=figures, holds=holds, ci=ci, expectation=expectation,
                     seeds=[bench.plan.train_seed], notes=_note(bench))


@pytest.mark.parametrize("model", per_model("LOCKIN"))
def test_the_atlas_locks_in_early_in_training(claim, model, bench):
    threshold, limit = claim.params["overlap_threshold"], claim.params["lock_in_fraction"]
    for protocol in claim.target.protocols:
        result = bench.lock_in(protocol, threshold=threshold, k=claim.params["top_k"])
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
        claim.record(protocol, figures=figures, holds=holds, revised=revised, reason=reason,
                     expectation=(f"every checkpoint from <= {limit:.0%} of training has overlap@{result.k} >= "
                                  f"{threshold} with the final checkpoint's atlas"),
                     seeds=[bench.plan.train_seed], notes=_note(bench))


@pytest.mark.parametrize("model", per_model("SKIP-RECOVER"))
def test_atlas_guided_skip_recovers_more_than_random_skip(claim, model, bench):
    study = bench.skip
    for protocol in claim.target.protocols:
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
            holds = figures["atlas_recovered_loss_percentile"] > claim.params["min_percentile"]
            expectation = (f"after recovery, the own-atlas skip's held-out loss beats > "
                           f"{claim.params['min_percentile']:.0%} of the random skips")
        claim.record(protocol, figures={**bench.common_figures(), **figures}, holds=holds, expectation=expectation,
                     seeds=[bench.plan.train_seed, bench.plan.data_seed], notes=_note(bench))
