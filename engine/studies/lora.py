"""The lora block's claim procedures on their catalogue v2 rules: LORA-ATLAS, LORA-OPROJ, LORA-LATE, LOCKIN (G3),
SKIP-RECOVER (G4).

Each procedure takes a :class:`engine.lora.LoraBench` (one model under one plan: the shared adapters, atlases and
training runs, computed once and cached on disk; :func:`plan_for` reads the plan) and the claim's
``[claim.params]`` (deltas with their rationale, the rule's minimum numbers of training seeds and random draws),
and returns ``(seed, rigorous)`` findings whose ``holds`` is what :mod:`engine.decisions` decided. The decisions
themselves are the ``decide_*`` functions below: pure functions of per-example measurements, so a test reaches
each outcome from constructed numbers.

Units and groups, for every rule here: the resampled unit is an evaluated example (held-out, or training for the
seed protocol), grouped by task family (the primitives' stratification); a per-example value is averaged over the
training seeds and over the random draws first. Seeds and draws are therefore not counted as examples: the rule's
minimum numbers of seeds / draws are checked separately (:func:`_units`), and below them the decision is
INCONCLUSIVE "below the rule's minimum number of training seeds / draws" (passed to the primitive as its
``precondition``, so the stored evidence recomputes to the same outcome). The run as the unit of these rules is
"Verdicts v3, 2/2".

The seed protocol applies the same decision to what the seed's method measured; where its method cannot test a
part of the rule (one training seed, one random draw, unequal parameter counts) the finding says so. The seed
never ran G3 (LOCKIN) and G4 (SKIP-RECOVER): their seed findings are UNTESTED.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine import decisions as D
from engine.lora import LoraBench, LoraPlan, depth_deciles, plan_for
from engine.lora.studies import MODULE_LEAF, short
from engine.studies.findings import Finding


def model_atlas(tier: str, params: Mapping[str, Any] | None = None, plan: str | None = None):
    """``atlas(lm)`` for :class:`~engine.lora.LoraBench`: the model's rigorous atlas under the claim's plan (the
    atlas block's seed-42 stratified sample, each layer's contribution removed, KL at the answer), i.e. the very
    measurement HUB-SMOL, HUB-SEEDS, HUB-BREADTH and OWN-ATLAS read, so the session computes it once."""
    from engine.studies.atlas import common

    sizes = common.sizes_for(tier, params, plan)
    if sizes.stages:  # the hub claims' first look: the atlas every staged claim computes first
        sizes = dataclasses.replace(sizes, rigorous_per_family=sizes.stages[0])
    return lambda lm: common.rigorous_atlas(lm, sizes)

__all__ = ["LoraPlan", "decide_atlas", "decide_late", "decide_lockin", "decide_oproj", "decide_oproj_seed",
           "decide_skip", "lockin", "lora_atlas", "lora_late", "lora_oproj", "note", "plan_for", "skip_recover"]

OTHER_MODULES = ("q", "k", "v", "gate", "up", "down")  # LORA-OPROJ compares o_proj with every one of these
SEED_NEVER_RAN = "the seed never ran this (open follow-up block {block}): there is no seed method to reproduce"


def note(bench: LoraBench) -> str:
    """The plan as every lora record's notes state it."""
    plan = bench.plan
    return (f"{plan.name} {plan.tier} plan: {plan.n_train}/{plan.n_eval} train/held-out examples per family of "
            f"{', '.join(plan.families)}; {plan.steps} steps, batch {plan.batch_size}, lr {plan.lr}, "
            f"{plan.warmup_steps} warm-up, prompts cut to {plan.max_len} tokens, r={plan.r}, alpha={plan.alpha}, "
            f"training seeds {list(plan.train_seeds)}.")


# ------------------------------------------------------------------------------------------------ helpers


def _units(need: Mapping[str, tuple[int, int]]) -> str:
    """Why the rule cannot decide at these unit counts ("" when it can): ``need`` maps a unit ("training seeds") to
    (have, the rule's minimum)."""
    short_ = [f"{have} {name} (the rule needs >= {minimum})" for name, (have, minimum) in need.items()
              if have < minimum]
    return "below the rule's minimum number of runs: " + ", ".join(short_) if short_ else ""


def _floored(ev: D.Evidence, why: str, units: Mapping[str, tuple[int, int]]) -> D.Evidence:
    """``ev`` with its undecided reason naming the unit minimum that was not met (outcome unchanged: undecided)."""
    details = {**ev.details, "units": {k: {"have": h, "need": n} for k, (h, n) in units.items()}}
    if not why:
        return dataclasses.replace(ev, details=details)
    return dataclasses.replace(ev, statement=f"{ev.label}: {why}", undecided=why, n_to_decide=None,
                               details={**details, "at_this_n": ev.statement})


def _by_family(values: np.ndarray, groups: Sequence[str]) -> dict[str, tuple[np.ndarray, list[str]]]:
    groups = np.asarray([str(g) for g in groups])
    return {f: (values[groups == f], [f] * int(np.sum(groups == f))) for f in dict.fromkeys(groups.tolist())}


def member_cis(members: Mapping[str, tuple[Sequence[float], Sequence[str]]]) -> dict[str, tuple[float, float]]:
    """95% CI (:func:`engine.decisions.interval`) of each member's mean (reported beside a for_every decision; a member with
    fewer than 2 examples in some family has no CI)."""
    out = {}
    for name, (values, groups) in members.items():
        iv = D.interval(np.asarray(values, dtype=np.float64), groups)
        if iv.low is not None:
            out[name] = (float(iv.low), float(iv.high))
    return out


def _param(params: Mapping[str, Any], key: str) -> Any:
    if key not in params:
        raise KeyError(f"[claim.params] needs {key!r} (engine/data/claims.toml)")
    return params[key]


# ------------------------------------------------------------------------------------------------ decisions


def _family_means(values: np.ndarray, groups: Sequence[str]) -> dict[str, np.ndarray]:
    """Per family, the mean over that family's examples along the last axis (a run's loss on the family)."""
    groups = np.asarray([str(g) for g in groups])
    return {f: values[..., groups == f].mean(axis=-1) for f in dict.fromkeys(groups.tolist())}


def decide_atlas(atlas: np.ndarray, random: np.ndarray, groups: Sequence[str], *, delta: float, rationale: str = "",
                 min_seeds: int = 3, min_draws: int = 10, label: str = "atlas-guided runs vs random-matched draws"
                 ) -> D.Evidence:
    """LORA-ATLAS (catalogue v3: the unit is the training run): ``atlas`` [n_seeds, n_examples] and ``random``
    [n_seeds, n_draws, n_examples] held-out losses per example, seed i's draws its own (never trained under another
    seed: :func:`engine.lora.studies.targeting_study`). Per family, each run's mean loss on that family;
    :func:`engine.decisions.beats_draws`: the atlas-guided run's rank among its seed's random-matched runs, summed
    over the seeds (an exact permutation p-value, floor (1 / (D + 1)) ** S), on every family (Holm): for; on some
    family the exact shifted-rank p-value of "better by delta" rejected: against. Fewer seeds / draws than the
    rule's minimum: undecided. The atlas-guided layer set is this model's one set, so "for" says it beats the
    random-matched sets (calibration: engine.calibration, lora-atlas), not that atlas guidance helps on other
    models."""
    atlas, random = np.atleast_2d(np.asarray(atlas, float)), np.asarray(random, float)
    if random.ndim != 3 or random.shape[0] != atlas.shape[0] or random.shape[2] != atlas.shape[1]:
        raise ValueError(f"decide_atlas: random must be [n_seeds, n_draws, n_examples] matching atlas "
                         f"{atlas.shape}, got {random.shape}")
    ours, draws = _family_means(atlas, groups), _family_means(random, groups)  # [S], [S, D] per family
    units = {"training seeds": (atlas.shape[0], min_seeds), "random-matched draws": (random.shape[1], min_draws)}
    why = _units(units)
    ev = D.beats_draws({f: (ours[f], draws[f]) for f in ours}, delta=delta, rationale=rationale, label=label,
                       precondition=why)
    return _floored(ev, why, units)


def decide_oproj(losses: Mapping[str, np.ndarray], groups: Sequence[str], params: Mapping[str, int], *,
                 delta: float, rationale: str = "", tolerance: float = 0.05, reference: str = "o") -> D.Evidence:
    """LORA-OPROJ (rigorous; catalogue v3: the unit is the training run): ``losses[module]`` [n_seeds, n_examples]
    held-out losses at matched parameter counts (``params``, within ``tolerance`` of each other, else ValueError:
    the comparison is not at matched parameters). Per training seed, each module's run loss minus o_proj's (the mean
    over family means of the held-out examples: their noise enters within the run); for every other module (Holm,
    the t interval over seeds): > 0: for; some module below delta: against; one seed: no CI over runs."""
    counts = list(params.values())
    if max(counts) > (1 + tolerance) * min(counts):
        raise ValueError(f"decide_oproj: parameter counts {dict(params)} differ by more than {tolerance:.0%}: "
                         "the rule compares modules at matched trainable parameters")

    def run_loss(v) -> np.ndarray:  # [n_seeds]: each run's mean over family means
        fam = _family_means(np.atleast_2d(np.asarray(v, float)), groups)
        return np.mean(np.stack(list(fam.values()), axis=0), axis=0)

    ref = run_loss(losses[reference])
    members = {f"{MODULE_LEAF.get(m, m)} - {MODULE_LEAF.get(reference, reference)}":
               (run_loss(v) - ref, ["runs"] * len(ref)) for m, v in losses.items() if m != reference}
    units = {"other modules compared": (len(members), len(OTHER_MODULES))}
    why = _units(units)
    ev = D.for_every(members, delta=delta, rationale=rationale, label="other module's run loss - o_proj's",
                     precondition=why)
    return _floored(ev, why, units)


def decide_oproj_seed(losses: Mapping[str, np.ndarray], base: np.ndarray, groups: Sequence[str],
                      params: Mapping[str, int], *, delta: float, rationale: str = "",
                      reference: str = "o") -> D.Evidence:
    """LORA-OPROJ, the seed's method: loss reduction per million parameters (base - loss) / params on the
    training examples; for every other module (Holm): o_proj's efficiency - its > 0: for; < delta: against."""
    base = np.asarray(base, float)

    def eff(m: str) -> np.ndarray:
        return (base - np.atleast_2d(np.asarray(losses[m], float)).mean(axis=0)) / params[m] * 1e6

    members = {f"{MODULE_LEAF.get(reference, reference)} - {MODULE_LEAF.get(m, m)}": (eff(reference) - eff(m),
                                                                                    list(groups))
               for m in losses if m != reference}
    units = {"other modules compared": (len(members), len(OTHER_MODULES))}
    why = _units(units)
    ev = D.for_every(members, delta=delta, rationale=rationale, precondition=why,
                     label="o_proj's loss reduction per Mparam - other module's")
    return _floored(ev, why, units)


def decile_shares(per_example: np.ndarray, n_layers: int) -> np.ndarray:
    """[n_examples, 10]: each example's per-layer mean adapter effect in each depth decile, as a share of its summed
    effect scaled to a decile of n_layers / 10 layers (uniform effects give every decile 10%). Deciles hold unequal
    numbers of layers (24 layers: [2, 3, 2, 3, 2, 2, 3, 2, 3, 2]); comparing sums would handicap a 2-layer decile by
    a third, so deciles are compared per layer (catalogue v3; an empty decile is 0)."""
    values = np.asarray(per_example, float)
    weights = np.zeros((n_layers, 10))
    for d, group in enumerate(depth_deciles(n_layers)):
        weights[group, d] = 1.0
    counts = weights.sum(axis=0)
    sums = values @ weights
    per_layer = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0) * (n_layers / 10.0)
    total = sums.sum(axis=1, keepdims=True)
    return np.divide(per_layer, total, out=np.zeros_like(per_layer), where=total > 0)


def decide_late(per_example: np.ndarray, groups: Sequence[str], *, delta: float, rationale: str = "",
                last: int = 9) -> D.Evidence:
    """LORA-LATE: per example, the last decile's share of the adapter effect minus each other (non-empty) decile's;
    every other decile (Holm) > 0: for; some decile's gap < delta: against."""
    values = np.asarray(per_example, float)
    shares = decile_shares(values, values.shape[1])
    filled = [d for d, g in enumerate(depth_deciles(values.shape[1])) if g]
    if last not in filled:
        raise ValueError(f"decide_late: decile {last} holds no layer of a {values.shape[1]}-layer model")
    members = {f"decile {last} - decile {d}": (shares[:, last] - shares[:, d], list(groups))
               for d in filled if d != last}
    return D.for_every(members, delta=delta, rationale=rationale, label="last decile's share - other decile's")


def decide_lockin(checkpoint_overlap: Sequence[float], base_overlap: Sequence[float], groups: Sequence[str], *,
                  delta: float, control_delta: float, rationale: str = "",
                  control_rationale: str = "") -> tuple[D.Evidence, D.Evidence]:
    """LOCKIN: per prompt, the top-k overlap of the early checkpoint's atlas with the final one's and the base
    model's. (control, claim): control = training moves the atlas, 1 - base overlap > 0 (i.e. the overlap's CI
    upper < 1); claim = checkpoint overlap - base overlap > 0: for; < delta: against."""
    ck, base = np.asarray(checkpoint_overlap, float), np.asarray(base_overlap, float)
    control = D.greater(1.0 - base, groups, delta=control_delta, rationale=control_rationale,
                        label="1 - base/final top-k overlap", bounds=(0.0, 1.0))
    claim = D.greater(D.paired(ck, base), groups, delta=delta, rationale=rationale,
                      label="early-checkpoint - base top-k overlap with the final atlas", bounds=(-1.0, 1.0))
    return control, claim


def decide_skip(atlas: np.ndarray, random: np.ndarray, groups: Sequence[str], *, delta: float,
                rationale: str = "", min_draws: int = 10) -> D.Evidence:
    """SKIP-RECOVER (catalogue v3: the unit is the skip + recovery run): ``atlas`` [n_seeds, n_examples] and
    ``random`` [n_seeds, n_draws, n_examples] held-out losses after skip + recovery, seed i's random skips its own
    (:func:`engine.lora.studies.skip_study`; one seed: ``atlas`` [n_examples] and ``random`` [n_draws, n_examples]
    are accepted). Each run's loss = the mean over family means; :func:`engine.decisions.beats_draws`: the atlas
    skip's rank among its seed's random skips, summed over the seeds (an exact p-value, floor
    (1 / (n_draws + 1)) ** n_seeds): for; the exact shifted-rank p-value of "better by delta" rejected: against;
    fewer random skips per seed than the rule's minimum: undecided."""
    atlas, random = np.asarray(atlas, float), np.asarray(random, float)
    if atlas.ndim == 1:
        atlas, random = atlas[None, :], np.atleast_2d(random)[None, :, :]
    if random.ndim != 3 or random.shape[0] != atlas.shape[0] or random.shape[2] != atlas.shape[1]:
        raise ValueError(f"decide_skip: random must be [n_seeds, n_draws, n_examples] matching atlas {atlas.shape}, "
                         f"got {random.shape}")
    fam_a, fam_r = _family_means(atlas, groups), _family_means(random, groups)  # [S], [S, D] per family
    ours = np.mean(np.stack(list(fam_a.values()), axis=0), axis=0)  # [S]
    draws = np.mean(np.stack(list(fam_r.values()), axis=0), axis=0)  # [S, D]
    units = {"random skips": (random.shape[1], min_draws)}
    why = _units(units)
    ev = D.beats_draws({"all families": (ours, draws)}, delta=delta, rationale=rationale, precondition=why,
                       label="atlas skip vs random skips (recovered held-out loss)")
    return _floored(ev, why, units)


# ------------------------------------------------------------------------------------------------ claims


def _ci_of(ev: D.Evidence, name: str) -> dict[str, tuple[float, float]]:
    return {name: tuple(ev.ci)} if ev.ci is not None else {}


def lora_atlas(bench: LoraBench, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """LORA-ATLAS on its v2 rule (:func:`decide_atlas`), seed: the seed's layers vs its one draw, one training
    seed, final training loss; rigorous: own-atlas layers vs the random-matched draws, every training seed,
    held-out loss."""
    study = bench.targeting
    delta, rationale = _param(params, "delta"), _param(params, "delta_rationale")
    out = {}
    for protocol in ("seed", "rigorous"):
        atlas, random, groups = study.losses(protocol)
        figures = study.figures(protocol)
        if figures["atlas_params"] != figures["random_params"]:
            raise ValueError("LORA-ATLAS: random-matched must have the atlas-guided adapter's parameter count")
        ev = decide_atlas(atlas, random, groups, delta=delta, rationale=rationale,
                          min_seeds=_param(params, "min_seeds"), min_draws=_param(params, "min_draws"))
        members = _by_family((random.mean(axis=1) - atlas).mean(axis=0), groups)
        ci = {f"random_minus_atlas_{short(f)}": v for f, v in member_cis(members).items()}
        notes = [note(bench)]
        if protocol == "seed":
            notes.append("Seed protocol: layers [2, 7, 9] (the seed's atlas lookup never matched) vs the seed's one "
                         "random draw (seed 42), one training seed, padding labels unmasked, final training loss. "
                         "Its method cannot test the random-matched distribution (one draw) nor stability across "
                         "training seeds (one seed): not decided. All-linear figures come from the shared (masked) "
                         "run.")
        runs = {k: ev.details.get(k) for k in ("n_runs", "n_training_seeds", "n_random_draws")}
        out[protocol] = Finding(protocol, {**bench.common_figures(), **figures, **runs}, holds=ev, ci=ci,
                                expectation=f"on every family (Holm) the atlas-guided run ranks below the random-matched "
                                            f"draws ({figures['metric']}; exact rank-sum p over training seeds); "
                                            f">= {params['min_seeds']} training seeds, >= {params['min_draws']} "
                                            f"random-matched draws; the unit is the training run",
                                seeds=figures["training_seeds"], notes=notes)
    return out["seed"], out["rigorous"]


def lora_oproj(bench: LoraBench, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """LORA-OPROJ: rigorous at matched parameters (:func:`decide_oproj`); seed: its loss-per-parameter ratio on
    training loss at r for every module (:func:`decide_oproj_seed`)."""
    sweep = bench.sweep
    out = {}
    for protocol in ("seed", "rigorous"):
        losses, base, groups = sweep.losses(protocol)
        counts = sweep.params(protocol)
        figures = {**bench.common_figures(), **sweep.figures(protocol)}
        notes = [note(bench)]
        if protocol == "seed":
            ev = decide_oproj_seed(losses, base, groups, counts, delta=_param(params, "seed_delta"),
                                   rationale=_param(params, "seed_delta_rationale"))
            shown = {MODULE_LEAF[m]: c for m, c in counts.items()}
            notes.append(f"Seed protocol: every module at r={bench.plan.r} on every layer (unequal parameter counts: "
                         f"{shown}), padding labels unmasked, final training loss, one training seed; the figure is "
                         "loss reduction per parameter, which divides by the parameter count, so it cannot test the "
                         "rule's comparison at matched parameters nor held-out loss: those are not decided by it.")
            label = "o_proj's loss reduction per Mparam > every other module's (training loss)"
        else:
            ev = decide_oproj(losses, groups, counts, delta=_param(params, "delta"),
                              rationale=_param(params, "delta_rationale"),
                              tolerance=_param(params, "match_tolerance"))
            notes.append(f"Rigorous protocol: rank per module so that trainable parameters match o_proj's within "
                         f"{params['match_tolerance']:.0%} (ranks {figures['ranks']}; counts "
                         f"{ {MODULE_LEAF[m]: c for m, c in counts.items()} }), alpha/r constant, held-out loss.")
            label = "at matched parameters, o_proj's held-out loss < every other module's (Holm)"
        ref = np.atleast_2d(losses["o"]).mean(axis=0)
        members = {MODULE_LEAF[m]: (np.atleast_2d(v).mean(axis=0) - ref, groups) for m, v in losses.items() if m != "o"}
        ci = {f"loss_minus_o_proj[{k}]": v for k, v in member_cis(members).items()}
        out[protocol] = Finding(protocol, figures, holds=ev, ci=ci, expectation=label, seeds=figures["training_seeds"],
                                notes=notes)
    return out["seed"], out["rigorous"]


def lora_late(bench: LoraBench, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """LORA-LATE (:func:`decide_late`): the all-linear adapter's per-layer effect; seed: on the training prompts,
    rigorous: on held-out prompts."""
    last = _param(params, "last_decile")
    out = {}
    for protocol in ("seed", "rigorous"):
        loc = bench.localisation(protocol)
        values = np.asarray(loc.per_example, float)
        ev = decide_late(values, loc.families, delta=_param(params, "delta"),
                         rationale=_param(params, "delta_rationale"), last=last)
        shares = decile_shares(values, values.shape[1])
        figures = {**bench.common_figures(), "adapter": "all-linear", "effect_per_layer": loc.effect,
                   "total_kl_adapter_off": loc.total, "decile_share": loc.decile_share,
                   "decile_share_per_example_mean": [float(v) for v in shares.mean(axis=0)],
                   "last_decile_layers": loc.deciles[last], "share_last10": loc.share_last10,
                   "largest_decile": loc.largest_decile, "n_examples": loc.n_examples,
                   "prompts": "training" if protocol == "seed" else "held-out"}
        filled = [d for d, g in enumerate(loc.deciles) if g and d != last]
        members = {f"decile {d}": (shares[:, last] - shares[:, d], loc.families) for d in filled}
        ci = {f"last_minus[{k}]": v for k, v in member_cis(members).items()}
        out[protocol] = Finding(protocol, figures, holds=ev, ci=ci,
                                expectation=f"the last decile's share of the adapter effect exceeds every other "
                                            f"decile's (Holm; {figures['prompts']} prompts)",
                                seeds=list(bench.plan.train_seeds[:1]), notes=[note(bench)])
    return out["seed"], out["rigorous"]


def _early_checkpoint(fractions: Sequence[float], limit: float) -> int:
    early = [i for i, f in enumerate(fractions[:-1]) if f <= limit + 1e-9]
    if not early:
        raise ValueError(f"LOCKIN: the plan saves no checkpoint at <= {limit:.0%} of training (checkpoints "
                         f"{list(fractions)}); add one to [plans.*.*.lora] checkpoints")
    return early[-1]


def lockin(bench: LoraBench, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """LOCKIN (G3): precondition (training moves the atlas), then the early checkpoint agrees with the final
    atlas better than the base model does (:func:`decide_lockin`). The seed never ran G3: seed UNTESTED."""
    limit, k = _param(params, "lock_in_fraction"), _param(params, "top_k")
    result = bench.lock(k)
    i = _early_checkpoint(result.fractions, limit)
    groups = [ex.family for ex in bench.lock_prompts]
    control, ev = decide_lockin(result.prompt_overlap[i], result.base_prompt_overlap, groups,
                                delta=_param(params, "delta"), control_delta=_param(params, "control_delta"),
                                rationale=_param(params, "delta_rationale"),
                                control_rationale=_param(params, "control_delta_rationale"))
    figures = {**bench.common_figures(), "atlas": "own (layer contribution removed), per prompt, held-out prompts",
               "fractions": result.fractions, "steps": result.steps, "k": result.k,
               "early_checkpoint_fraction": result.fractions[i], "top_k": result.top,
               "overlap_with_final": result.overlap, "base_overlap_with_final": result.base_overlap,
               "spearman_with_final": result.spearman, "base_spearman_with_final": result.base_spearman,
               "prompt_overlap_early_mean": float(np.mean(result.prompt_overlap[i])),
               "prompt_overlap_base_mean": float(np.mean(result.base_prompt_overlap)),
               "n_prompts": len(groups), "control": control.statement, "control_outcome": control.outcome.value}
    undecided = ""
    early_step = int(result.steps[i])  # the checkpoint's optimizer step
    figures.update(early_checkpoint_step=early_step, warmup_steps=bench.plan.warmup_steps,
                   steps_run=bench.plan.steps)
    if early_step <= bench.plan.warmup_steps:
        undecided = (f"the {result.fractions[i]:.0%} checkpoint is step {early_step} of {bench.plan.steps}, inside the "
                     f"{bench.plan.warmup_steps}-step warm-up (numerically the base model, not a trained checkpoint): "
                     f"the plan must run more steps (warm-up is never removed)")
    elif control.outcome is D.Outcome.AGAINST:
        undecided = (f"failed control: training moves the atlas by less than {control.params['delta']:g} of the "
                     f"top-{k} overlap ({control.statement}); an early checkpoint that agrees with the final atlas "
                     "cannot be told from an atlas that never changes")
    elif control.outcome is not D.Outcome.FOR:
        undecided = (f"failed control: it cannot be told at this n whether training moves the atlas "
                     f"({control.statement})")
    if undecided:  # the failed control travels with the claim's evidence, so recompute() decides the same
        ev = dataclasses.replace(ev, outcome=D.Outcome.UNDECIDED, undecided=undecided, n_to_decide=None,
                                 statement=f"{ev.statement}; {undecided}",
                                 params={**ev.params, "precondition": undecided})
    ci = _ci_of(ev, "early_minus_base_overlap") | _ci_of(control, "one_minus_base_overlap")
    rigorous = Finding("rigorous", figures, holds=ev, ci=ci, undecided=undecided,
                       expectation=f"training moves the atlas (base/final top-{k} overlap CI < 1); then the "
                                   f"{result.fractions[i]:.0%} checkpoint's overlap with the final atlas exceeds the "
                                   "base model's (CI of the difference > 0)",
                       seeds=list(bench.plan.train_seeds[:1]), notes=[note(bench)])
    return Finding.not_run("seed", SEED_NEVER_RAN.format(block="G3")), rigorous


def skip_recover(bench: LoraBench, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """SKIP-RECOVER (G4): the own-atlas skip vs the random skips after the same recovery finetune
    (:func:`decide_skip`), damage before recovery reported beside it. The seed never ran G4: seed UNTESTED."""
    study = bench.skip
    atlas, random, groups = study.losses()
    delta, rationale = _param(params, "delta"), _param(params, "delta_rationale")
    ev = decide_skip(atlas, random, groups, delta=delta, rationale=rationale, min_draws=_param(params, "min_draws"))
    damage_atlas, damage_random = study.damage()
    damage = D.greater(damage_random.mean(axis=0) - damage_atlas, groups, delta=delta, rationale=rationale,
                       label="random mean - atlas skip damage (before recovery; reported, not deciding)")
    figures = {**bench.common_figures(), **study.figures(), "damage_difference": damage.statement}
    ci = _ci_of(ev, "random_minus_atlas_recovered_loss") | _ci_of(damage, "random_minus_atlas_damage")
    rigorous = Finding("rigorous", figures, holds=ev, ci=ci,
                       expectation=f"after skip + equal recovery, the own-atlas skip's held-out loss is below the mean"
                                   f" of >= {params['min_draws']} random skips of {study.k} layers per training seed "
                                   "(the atlas skip's rank among them, summed over the seeds)",
                       seeds=list(study.seeds),
                       notes=[note(bench), ("Damage before recovery (skipped - full held-out loss) is reported beside "
                                            "the decision; no 'recovered fraction' (it exceeds 1 when the finetune "
                                            "also teaches the task): atlas/random_excess_after_recovery = recovered - "
                                            "the full model after the same finetune.")])
    return Finding.not_run("seed", SEED_NEVER_RAN.format(block="G4")), rigorous


# ------------------------------------------------------------------------------------------------ the rows' procedures
#
# The LoRA claims are procedures by nature (``procedure = "engine.studies.lora:lora_atlas_claim"`` ...): what they
# train follows the model's atlas and the random draws. One bench per model and plan, shared by the five claims
# of a session (the all-linear adapter, the atlases and every training run computed once; cached on disk too).

_BENCHES: dict[tuple[str, LoraPlan], LoraBench] = {}
DYNAMIC = "trainings and evaluations follow the layers the model's atlas picks (and the random draws)"


def bench_for(ctx, load_model) -> LoraBench:
    """The LoRA bench of the claim's model under its plan (one per model and plan for the session; a claim the plan
    sizes apart, ``per_claim``, on every model or on this one, gets a bench of its own sizes, sharing the disk
    cache)."""
    plan = plan_for(ctx.tier, ctx.params, ctx.plan, claim=ctx.claim.id, model=ctx.model)
    key = (ctx.model, plan)
    if key not in _BENCHES:
        _BENCHES[key] = LoraBench(load_model(ctx.model), plan, atlas=model_atlas(ctx.tier, ctx.params, ctx.plan))
    return _BENCHES[key]


def release_benches() -> None:
    _BENCHES.clear()


def _procedure(decide):
    def run(ctx, load_model) -> tuple[Finding, Finding]:
        return decide(bench_for(ctx, load_model), ctx.params)
    run.__name__ = run.__qualname__ = f"{decide.__name__}_claim"
    run.__doc__ = f"The row's procedure: :func:`{decide.__name__}` on the model's shared LoRA bench."
    run.dynamic = DYNAMIC
    return run


lora_atlas_claim = _procedure(lora_atlas)
lora_oproj_claim = _procedure(lora_oproj)
lora_late_claim = _procedure(lora_late)
lockin_claim = _procedure(lockin)
skip_recover_claim = _procedure(skip_recover)
