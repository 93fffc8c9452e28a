"""The hub claims: HUB-Q05/Q15/Q3/SMOL (the hub layer), HUB-SEEDS, HUB-NL, HUB-BREADTH, HUB-CODER, HUB-MIGRATE, OWN-ATLAS.

Every rule is decided by :mod:`engine.decisions` (catalogue v2) on the atlases' per-example layer effects, families
as strata: "the argmax is layer L" by :func:`engine.decisions.argmax` (re-selected in every resample), depth
differences by :func:`~engine.decisions.greater` / :func:`~engine.decisions.for_every`. Each measurement is one
function of ``(lm, sizes)`` returning atlases (through :mod:`.common`, so shared atlases are computed once); each
decision is one function of atlases (``decide_*``), so a unit test reaches every outcome from constructed data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations, pairwise
from typing import Any

import numpy as np

from engine import decisions as D
from engine import stats, tasks
from engine.atlas import Atlas, concat, prompt_overlap
from engine.studies.atlas.common import (
    ROBUSTNESS_METHODS,
    SEEDS,
    AtlasSpec,
    Sizes,
    argmax_depths,
    argmax_evidence,
    argmax_figures,
    argmax_of,
    erasing_note,
    evidence_text,
    exact_tie,
    first_examples,
    negate,
    restrict,
    rigorous_spec,
    robustness_figures,
    robustness_specs,
    same_argmax,
    seed_spec,
    stratified_sample,
)
from engine.studies.findings import Finding, StudyError, contrast, require  # noqa: F401 (re-exported)
from engine.studies.specs import Loader, measure, measure_on

NOT_RESAMPLED = ("seeds change nothing: the seed protocol's seeds {seeds} reuse the same examples (Jaccard overlap "
                 "{overlap:.2f}) and zero ablation has no randomness, so stability across seeds is not decided")


def _profile_figures(a: Atlas) -> dict[str, Any]:
    return {"layer_effects": [float(x) for x in a.layer_effect], "n_layers": a.n_layers, "n_examples": a.n_examples,
            "exact_tie": exact_tie(a), "information_erasing": a.information_erasing, "template": a.template,
            "method": a.method, "component": a.component}


def _text(holds) -> str:
    return evidence_text(holds if isinstance(holds, Mapping) else {"": holds})


def _depth(layer: int | None, n_layers: int) -> float | None:
    return None if layer is None else layer / max(n_layers - 1, 1)


# ------------------------------------------------------------------------------------------------ HUB-Q05 and co.


def decide_hub(atlases: Mapping[str, Atlas], claimed: int | None, delta: float = 0.0,
               rationale: str = "") -> tuple[dict, dict[str, D.Evidence]]:
    """HUB-Q05/Q15/Q3/SMOL on one atlas per seed: with a ``claimed`` layer, "the argmax is L" in every seed (a
    seed decided against -> FAILED); without one (the cpu tier), "an argmax layer exists, the same in every seed".
    Returns (figures, holds)."""
    if claimed is None:
        per_seed, holds = same_argmax(atlases, "argmax layer", delta, rationale)
    else:
        per_seed = {k: argmax_evidence(a, claimed=claimed, label=f"argmax layer ({k}) is L{claimed}", delta=delta,
                                       rationale=rationale)
                    for k, a in atlases.items()}
        against = {k: e for k, e in per_seed.items() if e.outcome is D.Outcome.AGAINST}
        holds = against or per_seed
    layers = [e.estimate for e in per_seed.values()]
    decided = all(e.outcome is D.Outcome.FOR for e in per_seed.values()) and len(set(layers)) == 1
    first = next(iter(atlases.values()))
    hub = int(layers[0]) if decided else None
    figures = {"hub_layer": hub, "hub_depth": _depth(hub, first.n_layers), "argmax_layer": layers[0],
               "argmax_layers": layers, "argmax_depth": _depth(layers[0], first.n_layers), "claimed_layer": claimed,
               "per_seed": argmax_figures(per_seed), **_profile_figures(first)}
    return figures, holds


def seed_protocol_hub(a: Atlas, sizes: Sizes, *, claimed: int | None = None, per_family: int | None = None) -> Finding:
    """The seed's hub: residual zeroing, first k per family, one deterministic sweep (its seeds never resample, so
    "in every seed" reduces to that sweep; the stability part is named as not decided)."""
    figures, holds = decide_hub({f"seed {SEEDS[0]}": a}, claimed, sizes.hub_delta or 0.0, sizes.hub_delta_rationale or "")
    notes = [(f"Seed protocol: residual zeroing, KL at the last position, first {per_family or sizes.seed_per_family} "
             f"examples/family ({a.n_examples} prompts); the seeds {list(SEEDS)} do not change the examples, so one "
             f"sweep serves all three and stability across seeds is not decided here (HUB-SEEDS). "
             f"{evidence_text(holds)}."), erasing_note(a)]
    return Finding("seed", figures, holds=holds, seeds=list(SEEDS), notes=[n for n in notes if n],
                   suite_hash=a.suite_hash)


def rigorous_hub(atlases: Mapping[str, Atlas], sizes: Sizes, robust: Mapping[str, Any], *,
                 claimed: int | None = None) -> Finding:
    """Layer-contribution ablation on a fresh stratified sample per seed (``atlases``: "seed <s>" -> atlas); the
    argmax rule in every seed."""
    seeds = [int(k.split()[-1]) for k in atlases]
    figures, holds = decide_hub(atlases, claimed, sizes.hub_delta or 0.0, sizes.hub_delta_rationale or "")
    figures["prompt_overlap"] = prompt_overlap([a.example_ids for a in atlases.values()])
    figures["robustness"] = dict(robust)
    first = next(iter(atlases.values()))
    how = ("layer-contribution ablation" if (first.method, first.component) == ("zero", "layer") else
           f"{first.method} ablation of each {first.component}")
    notes = [(f"Rigorous protocol (prompt template {first.template!r}: raw prompts, no chat "
              f"rendering): {how}, {first.n_examples // max(len(first.families), 1)} examples/family drawn "
             f"per seed ({figures['n_examples']} prompts/seed, Jaccard overlap {figures['prompt_overlap']:.2f}), "
             f"argmax re-selected in {sizes.n_resamples} stratified resamples per seed. {evidence_text(holds)}.")]
    return Finding("rigorous", figures, holds=holds, seeds=list(seeds), notes=notes,
                   suite_hash=next(iter(atlases.values())).suite_hash)


def hub_contrast(seed: Finding, rigorous: Finding) -> None:
    why = []
    if seed.figures.get("exact_tie") or seed.figures.get("information_erasing"):
        why.append("residual zeroing erases the prompt (every layer gives the same KL: an exact tie, no single "
                   "argmax); removing only the layer's contribution separates the layers")
    if seed.figures.get("argmax_layer") != rigorous.figures.get("argmax_layer"):
        why.append(f"the ablation step (residual zeroing -> contribution removal) and the resampled stratified "
                   f"sample move the argmax from L{seed.figures.get('argmax_layer')} to "
                   f"L{rigorous.figures.get('argmax_layer')}")
    why.append(f"the seed's sample ({seed.figures.get('n_examples')} prompts) vs {rigorous.figures.get('n_examples')} "
               "per seed decides whether the argmax can be decided at all")
    contrast(seed, rigorous, "; ".join(why))


# ------------------------------------------------------------------------------------------------ HUB-SEEDS


def decide_hub_seeds(atlases: Mapping[str, Atlas], samples_differ: bool, overlap: float, delta: float = 0.0,
                     rationale: str = "") -> Finding:
    """HUB-SEEDS: every seed has an argmax layer and it is the same (CONFIRMED); two seeds decided for different
    layers, or an exact tie (no single hub to be stable) (FAILED); else INCONCLUSIVE. Precondition: the seeds'
    samples differ, else INCONCLUSIVE "seeds change nothing" (the decided parts are still recorded)."""
    per_seed, holds = same_argmax(atlases, "argmax layer", delta, rationale)
    layers = [e.estimate for e in per_seed.values()]
    found = [argmax_of(e) for e in per_seed.values()]
    std = float(np.std(found)) if all(f is not None for f in found) else None
    figures = {"hub_std": std, "argmax_layers": layers, "argmax_std": float(np.std([x or 0 for x in layers])),
               "hubs": found, "samples_differ": samples_differ, "prompt_overlap": overlap,
               "per_seed": argmax_figures(per_seed), "n_examples": next(iter(atlases.values())).n_examples}
    undecided = "" if samples_differ else NOT_RESAMPLED.format(seeds=list(SEEDS), overlap=overlap)
    if undecided:
        holds = next(iter(per_seed.values()))  # the one sweep's evidence, recorded; the precondition decides
    return Finding("", figures, holds=holds, undecided=undecided)


def seed_protocol_hub_seeds(base: Atlas, sizes: Sizes, seeds: Sequence[int] = SEEDS) -> Finding:
    """The seed's seeds: identical examples for every seed, deterministic residual zeroing: one sweep (``base``),
    reseeded for the bootstrap only. The rule's precondition (the seeds resample the prompts) does not hold."""
    samples = [first_examples(sizes.seed_per_family, sizes.families) for _ in seeds]
    overlap = prompt_overlap(samples)
    finding = decide_hub_seeds({f"seed {seeds[0]}": base}, overlap < 1.0, overlap, sizes.hub_delta or 0.0,
                               sizes.hub_delta_rationale or "")
    finding.protocol = "seed"
    finding.figures["suite_hashes"] = [tasks.suite_hash(s)[:12] for s in samples]
    finding.seeds, finding.suite_hash = list(seeds), base.suite_hash
    finding.notes = [n for n in (
        (f"Seed protocol: the first {sizes.seed_per_family} examples/family ({base.n_examples} prompts) for every "
        f"seed (identical suite hashes, Jaccard overlap {overlap:.2f}); zero ablation has no randomness, so one "
        f"sweep gives all three seeds and their std 0 is guaranteed, not measured. "
        f"{_text(finding.holds)}."),
        erasing_note(base)) if n]
    return finding


def rigorous_hub_seeds(atlases: Mapping[str, Atlas], sizes: Sizes, robust: Mapping[str, Any]) -> Finding:
    """Three seeds, three stratified samples (checked to differ), layer-contribution ablation; the argmax rule
    per seed (the same atlases as HUB-SMOL / HUB-Q05 on this model: one spec each, computed once)."""
    seeds = [int(k.split()[-1]) for k in atlases]
    samples = [stratified_sample(s, sizes.rigorous_per_family, sizes.families) for s in seeds]
    overlap = prompt_overlap(samples)
    finding = decide_hub_seeds(atlases, overlap < 1.0, overlap, sizes.hub_delta or 0.0, sizes.hub_delta_rationale or "")
    finding.protocol = "rigorous"
    finding.figures["suite_hashes"] = [tasks.suite_hash(s)[:12] for s in samples]
    finding.figures["robustness"] = dict(robust)
    finding.seeds, finding.suite_hash = list(seeds), next(iter(atlases.values())).suite_hash
    finding.notes = [(f"Rigorous protocol: {sizes.rigorous_per_family} examples/family drawn per seed "
                     f"({finding.figures['n_examples']} prompts/seed, Jaccard overlap {overlap:.2f}), "
                     f"layer-contribution ablation, argmax re-selected in {sizes.n_resamples} resamples per seed. "
                     f"{_text(finding.holds)}.")]
    return finding


def hub_seeds_contrast(seed: Finding, rigorous: Finding) -> None:
    why = ["the seed's seeds never resample the prompts (its stability is guaranteed, not measured)"]
    if rigorous.figures.get("hubs") and len(set(rigorous.figures["argmax_layers"])) > 1:
        why.append(f"resampled prompts move the argmax ({rigorous.figures['argmax_layers']})")
    contrast(seed, rigorous, "; ".join(why))


# ------------------------------------------------------------------------------------------------ HUB-NL


def family_agreement(a: Atlas, b: Atlas) -> tuple[float, list[str], int]:
    """Fraction of the shared families whose per-family argmax layers agree, an exact tie counting as "no hub"
    (never agreeing); also the agreeing families and how many family pairs are both CI-separated (a figure)."""
    shared = [f for f in a.families if f in b.families]
    agree, separated = [], 0
    for f in shared:
        if not exact_tie(a, f) and not exact_tie(b, f) and a.family_argmax[f] == b.family_argmax[f]:
            agree.append(f)
        separated += int(a.family_hubs[f] is not None and b.family_hubs[f] is not None)
    return (len(agree) / len(shared) if shared else 0.0), agree, separated


def nl_suite_counts() -> dict[str, int]:
    nl = tasks.load_suite("nl")
    return {"n_prompts": len(nl), "n_unique_prompts": len({ex.prompt for ex in nl}),
            "min_per_family": min(sum(ex.family == f for ex in nl) for f in {ex.family for ex in nl})}


def decide_nl(protocol: str, syn: Atlas, nl: Atlas, sizes_text: str, delta: float = 0.0, rationale: str = "") -> Finding:
    """HUB-NL: the NL suite's argmax layer equals the synthetic suite's (CONFIRMED); both exist and differ
    (FAILED); else (an undecided argmax, or an exact tie: no argmax to compare) INCONCLUSIVE. Per-family
    agreement is a figure."""
    per_suite, holds = same_argmax({"synthetic": syn, "nl": nl}, "argmax layer", delta, rationale)
    ties = [k for k, e in per_suite.items() if e.outcome is D.Outcome.AGAINST]
    undecided = (f"no single argmax layer in the {' and the '.join(ties)} suite (an exact tie, or the top layer's lead "
                 f"decided below hub_delta): nothing to compare"
                 if ties else "")
    if ties:
        holds = per_suite[ties[0]]  # one evidence: the precondition (an argmax to compare) decides, not its parts
    agreement, agree, separated = family_agreement(syn, nl)
    figures = {"family_agreement": agreement, "agreeing_families": agree, "families_separated_both": separated,
               "hub_layer": argmax_of(per_suite["nl"]), "hub_layer_synthetic": argmax_of(per_suite["synthetic"]),
               "argmax_nl": per_suite["nl"].estimate, "argmax_synthetic": per_suite["synthetic"].estimate,
               "per_suite": argmax_figures(per_suite),
               "profile_spearman": stats.rank_rho(syn.layer_effect, nl.layer_effect),
               "n_nl_examples": nl.n_examples, "n_synthetic_examples": syn.n_examples,
               "family_argmax_nl": nl.family_argmax, "family_argmax_synthetic": syn.family_argmax,
               "information_erasing": nl.information_erasing or syn.information_erasing, "template": nl.template,
               **nl_suite_counts()}
    notes = [(f"{sizes_text} Per-family argmax agreement {agreement:.2f} ({len(agree)}/{len(syn.families)}; an exact "
             f"tie counts as no hub), a figure. {_text(holds)}."), erasing_note(nl)]
    return Finding(protocol, figures, holds=holds, seeds=[nl.seed], notes=[n for n in notes if n],
                   suite_hash=nl.suite_hash, undecided=undecided)


def seed_protocol_nl_agreement(syn: Atlas, nl: Atlas, sizes: Sizes) -> Finding:
    return decide_nl("seed", syn, nl,
                     f"Seed protocol: residual zeroing, first {sizes.seed_per_family} prompts/family of each suite.",
                     sizes.hub_delta or 0.0, sizes.hub_delta_rationale or "")


def rigorous_nl_agreement(syn: Atlas, nl: Atlas, sizes: Sizes, robust: Mapping[str, Any],
                          seed: int = SEEDS[0]) -> Finding:
    finding = decide_nl("rigorous", syn, nl, f"Rigorous protocol: layer-contribution ablation, stratified samples "
                        f"(seed {seed}): {sizes.rigorous_per_family}/family synthetic, {sizes.nl_per_family}/family NL.",
                        sizes.hub_delta or 0.0, sizes.hub_delta_rationale or "")
    finding.figures["robustness"] = dict(robust)
    return finding


def nl_contrast(seed: Finding, rigorous: Finding) -> None:
    contrast(seed, rigorous,
             f"argmax layers (synthetic, NL) {seed.figures['argmax_synthetic']}, {seed.figures['argmax_nl']} (seed) vs "
             f"{rigorous.figures['argmax_synthetic']}, {rigorous.figures['argmax_nl']} (rigorous): "
             + ("residual zeroing erases the prompt, so every profile is an exact tie" if
                seed.figures["information_erasing"] else
                "the ablation step (residual zeroing -> contribution removal) and the sample size"))


# ------------------------------------------------------------------------------------------------ HUB-BREADTH


def decide_differ(atlases: Mapping[str, Atlas], label: str, delta: float = 0.0,
                  rationale: str = "") -> tuple[dict[str, D.Evidence], Any, str]:
    """"Both atlases have an argmax layer and they differ" (HUB-BREADTH, HUB-CODER). Returns (each atlas's
    "an argmax exists" evidence, holds, undecided):

    * both decided for, different layers: both (CONFIRMED);
    * both decided for, the same layer: "the second's argmax is the first's layer" decided for, negated (FAILED);
    * an exact tie (no argmax exists, so nothing to compare) or an undecided argmax: INCONCLUSIVE.
    """
    (ka, _a), (kb, b) = list(atlases.items())
    exists = {k: argmax_evidence(x, label=f"{label} ({k})", delta=delta, rationale=rationale)
              for k, x in atlases.items()}
    la, lb = argmax_of(exists[ka]), argmax_of(exists[kb])
    if la is not None and lb is not None:
        if la != lb:
            return exists, exists, ""
        same = argmax_evidence(b, claimed=la, label=f"{label} ({kb}) is L{la}, the {ka} argmax", delta=delta,
                               rationale=rationale)
        return exists, negate(same, f"{label}: {kb} and {ka} differ"), ""
    ties = {k: e for k, e in exists.items() if e.outcome is D.Outcome.AGAINST}
    if ties:
        return exists, next(iter(ties.values())), (f"no single argmax layer in {' and '.join(ties)} (an exact tie or "
                                                   f"a lead decided below hub_delta: "
                                                   "nothing to compare)")
    return exists, exists, ""


def _breadth_finding(protocol: str, full: Atlas, narrow_families: Sequence[str], text: str, delta: float = 0.0,
                     rationale: str = "", beyond: Atlas | None = None) -> Finding:
    narrow = restrict(full, narrow_families)
    if beyond is not None:
        require(not set(narrow.example_ids) & set(beyond.example_ids),
                "the 4-family look's prompts must be new (none of the 12-family sample's)")
        narrow = concat([narrow, beyond])
    per_suite, holds, undecided = decide_differ({"12-family": full, "4-family": narrow}, "argmax layer", delta,
                                                rationale)
    l12, l4 = argmax_of(per_suite["12-family"]), argmax_of(per_suite["4-family"])
    figures = {"hub_layer_12fam": l12, "hub_layer_4fam": l4, "argmax_12fam": per_suite["12-family"].estimate,
               "argmax_4fam": per_suite["4-family"].estimate, "hubs_identical": l12 is not None and l12 == l4,
               "per_suite": argmax_figures(per_suite), "families_4": list(narrow_families),
               "n_examples_12fam": full.n_examples, "n_examples_4fam": narrow.n_examples, "template": full.template}
    grown = ("" if beyond is None else f" and {beyond.n_examples} more of those families' prompts of the same "
             f"nested sample ({narrow.n_examples // len(narrow_families)}/family; the 4-family suite's own look)")
    notes = [(f"{text} The 4-family atlas is the same sweep restricted to those families' prompts{grown}. "
             f"{_text(holds)}.")]
    return Finding(protocol, figures, holds=holds, seeds=[full.seed], notes=notes, suite_hash=full.suite_hash,
                   undecided=undecided)


def seed_protocol_breadth(a: Atlas, sizes: Sizes) -> Finding:
    return _breadth_finding("seed", a, tasks.BREADTH_FAMILIES,
                            f"Seed protocol: residual zeroing, first {sizes.seed_per_family}/family.",
                            sizes.hub_delta or 0.0, sizes.hub_delta_rationale or "")


def rigorous_breadth(full: Atlas, sizes: Sizes, robust: Mapping[str, Any], seed: int = SEEDS[0],
                     beyond: Atlas | None = None) -> Finding:
    """``beyond``: the 4-family suite's rows past the 12-family sample's (:func:`breadth_beyond_spec`)."""
    finding = _breadth_finding("rigorous", full, tasks.BREADTH_FAMILIES, f"Rigorous protocol: layer-contribution "
                               f"ablation, {sizes.rigorous_per_family}/family (seed {seed}).", sizes.hub_delta or 0.0,
                               sizes.hub_delta_rationale or "", beyond)
    finding.figures["robustness"] = dict(robust)
    return finding


# ------------------------------------------------------------------------------------------------ OWN-ATLAS, MIGRATE


def _paired_depths(atlases: Mapping[str, Atlas], a: str, b: str) -> tuple[list[float], list[str]]:
    """Per prompt (shared by both models' samples, each with an argmax layer): depth(b's argmax) - depth(a's argmax),
    with its family. Prompts whose layer profile ties exactly in either model are left out (a precondition)."""
    da, db = argmax_depths(atlases[a]), argmax_depths(atlases[b])
    family = dict(zip(atlases[a].example_ids, atlases[a].example_families))
    shared = [ex for ex in atlases[a].example_ids if ex in db and ex in da]
    return [db[ex] - da[ex] for ex in shared], [family[ex] for ex in shared]


NO_DEPTHS = ("every prompt's layer profile ties exactly in {models} (the measurement cannot separate layers): no "
             "argmax depths to compare")


def decide_own_atlas(protocol: str, atlases: Mapping[str, Atlas], delta: float, rationale: str,
                     text: str) -> Finding:
    """OWN-ATLAS (catalogue v3): for each pair of models (in the target's order, the direction fixed before the data),
    the paired per-prompt argmax depth difference, two-sided, Holm across pairs (:func:`engine.decisions.differs`):
    some pair differs -> CONFIRMED; every pair equivalent within ``delta`` -> FAILED; else INCONCLUSIVE. Prompts
    whose profile ties exactly are left out; a model with no untied prompt is a failed precondition."""
    keys = list(atlases)
    require(len(keys) >= 2, f"OWN-ATLAS needs at least two models, got {keys}")
    depths = {k: argmax_depths(a) for k, a in atlases.items()}
    tied = [k for k, d in depths.items() if not d]
    members = {}
    for a, b in combinations(keys, 2):
        diffs, groups = _paired_depths(atlases, a, b)
        if diffs:
            members[f"{b} - {a}"] = (diffs, groups)
    undecided = NO_DEPTHS.format(models=", ".join(tied)) if tied or not members else ""
    if members:
        holds = D.differs(members, delta=delta, rationale=rationale, label="argmax depths differ (some pair)", discrete=True,
                          n_resamples=atlases[keys[0]].n_resamples, seed=atlases[keys[0]].seed, precondition=undecided)
    else:
        first = next(iter(atlases.values()))
        holds = argmax_evidence(first)
    exists = {k: argmax_evidence(a) for k, a in atlases.items()}
    mean_depth = {k: float(np.mean(list(d.values()))) if d else None for k, d in depths.items()}
    figures = {"models": keys, "hub_layers": [argmax_of(exists[k]) for k in keys],
               "argmax_layers": [exists[k].estimate for k in keys],
               "hub_depths": [_depth(argmax_of(exists[k]), atlases[k].n_layers) for k in keys],
               "argmax_depths": [_depth(exists[k].estimate, atlases[k].n_layers) for k in keys],
               "mean_prompt_argmax_depths": [mean_depth[k] for k in keys], "per_model": argmax_figures(exists),
               "untied_prompts": {k: len(d) for k, d in depths.items()},
               "depth_differences": dict(holds.estimate) if holds.primitive == "differs" else {}}
    ci = {f"depth[{k}]": tuple(v) for k, v in (holds.details.get("cis") or {}).items() if v is not None}
    return Finding(protocol, figures, holds=holds, ci=ci, seeds=[SEEDS[0]], undecided=undecided,
                   notes=[f"{text} {holds.statement}."])


def decide_migration(protocol: str, atlases: Mapping[str, Atlas], delta: float, rationale: str,
                     text: str, hub_delta: float = 0.0) -> Finding:
    """HUB-MIGRATE (catalogue v3): the claim is about the hub depth, the argmax of each model's mean ablation effect,
    so each model's "an argmax exists" (:func:`engine.decisions.argmax`, with its uncertainty) decides its hub; then
    along the models in scale order the hub depths rise by more than ``delta`` at every step: CONFIRMED; every
    model's hub decided and some step does not rise by ``delta``: FAILED (the decided hubs' evidence); a hub not
    decided (or a tie): INCONCLUSIVE. Per-prompt argmax depths are reported, never deciding."""
    keys = list(atlases)
    exists = {k: argmax_evidence(a, label=f"argmax layer ({k})", delta=hub_delta) for k, a in atlases.items()}
    hubs_ = {k: argmax_of(e) for k, e in exists.items()}
    depths = {k: _depth(hubs_[k], atlases[k].n_layers) for k in keys}
    undecided = ""
    if any(h is None for h in hubs_.values()):
        missing = [k for k, h in hubs_.items() if h is None]
        undecided = f"no hub decided in {', '.join(missing)}: the depths cannot be ordered"
        holds: Any = exists
    else:
        steps = {f"{b} - {a}": depths[b] - depths[a] for a, b in pairwise(keys)}
        rises = all(v > delta for v in steps.values())
        # every hub decided: the order of their depths follows; a step that does not rise is the claim decided
        # against (recorded as the first model's decided hub read for the opposite statement, so recompute agrees)
        holds = exists if rises else negate(exists[keys[0]], f"hub depths {[round(depths[k], 3) for k in keys]} do "
                                                             f"not rise by {delta:g} at every step")
    prompt_depths = {k: float(np.mean(list(argmax_depths(a).values()) or [np.nan])) for k, a in atlases.items()}
    figures = {"models": keys, "hub_depths": [depths[k] for k in keys], "hub_layers": [hubs_[k] for k in keys],
               "argmax_layers": [exists[k].estimate for k in keys], "per_model": argmax_figures(exists),
               "depth_delta": delta, "mean_prompt_argmax_depths": [prompt_depths[k] for k in keys]}
    return Finding(protocol, figures, holds=holds, seeds=[SEEDS[0]], undecided=undecided,
                   notes=[f"{text} {evidence_text(exists)}."])


def decide_coder(protocol: str, coder: Atlas, base: Atlas, text: str, delta: float = 0.0) -> Finding:
    """HUB-CODER: both models have an argmax layer and they differ (CONFIRMED); the same layer (FAILED)."""
    per_model, holds, undecided = decide_differ({"coder": coder, "base": base}, "argmax layer", delta)
    figures = {"hub_layer": argmax_of(per_model["coder"]), "base_hub_layer": argmax_of(per_model["base"]),
               "hub_depth": _depth(argmax_of(per_model["coder"]), coder.n_layers),
               "argmax_layer": per_model["coder"].estimate, "base_argmax_layer": per_model["base"].estimate,
               "per_model": argmax_figures(per_model)}
    return Finding(protocol, figures, holds=holds, seeds=[SEEDS[0]], undecided=undecided,
                   notes=[f"{text} {evidence_text(per_model)}."])


# ------------------------------------------------------------------------------------------------ a stand-in


@dataclass(frozen=True)
class StandIn:
    """A model measured in place of a seed model whose weights the suite does not have (a row's ``stand_in``
    table): ``model`` stands in for ``of`` (other weights: ``withheld`` says how); ``layer`` is the seed's figure
    on ``of`` (its hub), ``versus`` the layer the seed's margin was over; ``seed_figure`` the seed's own words."""

    model: str
    of: str
    layer: int
    versus: int
    withheld: str
    seed_figure: str = ""

    @property
    def reason(self) -> str:
        """Why the record is not decided against the seed's figure (its INCONCLUSIVE reason)."""
        return (f"stand-in: {self.model} is measured in place of {self.of}, so its figures are reported beside the "
                f"seed's hub L{self.layer} and never compared with it ({self.withheld})")


def decide_stand_in(protocol: str, a: Atlas, s: StandIn, text: str, delta: float = 0.0,
                    rationale: str = "") -> Finding:
    """The stand-in's own figures on one atlas, each decided by :mod:`engine.decisions`: its argmax layer ("an
    argmax exists"), whether the seed's layer ``s.layer`` is decided its argmax ("the argmax is L", named in
    advance) and the paired per-prompt gap L``s.layer`` - L``s.versus`` with its CI (``greater``, delta 0: the
    whole CI above or below 0). The seed's figure is shown beside them and never compared: the finding is
    undecided for :attr:`StandIn.reason` (a precondition every part carries, so a recompute agrees), whatever
    the parts decided."""
    exists = argmax_evidence(a, label=f"argmax layer ({s.model})", delta=delta, rationale=rationale)
    parts: dict[str, D.Evidence] = {"argmax layer": exists}
    hub = argmax_of(exists)
    means = {layer: float(x) for layer, x in zip(a.layers, a.layer_effect)}
    figures: dict[str, Any] = {
        "stand_in": s.model, "stands_in_for": s.of, "seed_hub_layer": s.layer, "seed_versus_layer": s.versus,
        "seed_figure": s.seed_figure, "hub_layer": hub, "hub_depth": _depth(hub, a.n_layers),
        "argmax_layer": exists.estimate, "argmax_depth": _depth(exists.estimate, a.n_layers),
        "seed_layer_is_argmax": None, "seed_layer_rank": None, "gap": None, "gap_outcome": None,
        "per_model": argmax_figures({s.model: exists}), **_profile_figures(a)}
    ci: dict[str, tuple[float, float]] = {}
    gap_label = f"L{s.layer} - L{s.versus}"
    if s.layer in means and s.versus in means:
        at = argmax_evidence(a, claimed=s.layer, label=f"L{s.layer} (the seed's {s.of} hub) is the argmax "
                             f"({s.model})", delta=delta, rationale=rationale)
        i, j = a.layers.index(s.layer), a.layers.index(s.versus)
        gap = D.greater(D.paired(a.per_example[:, i], a.per_example[:, j]), a.example_families, delta=0.0,
                        label=f"{gap_label} ({s.model})", n_resamples=a.n_resamples, seed=a.seed)
        parts[f"L{s.layer} is the argmax"], parts[f"{gap_label} > 0"] = at, gap
        figures.update(seed_layer_is_argmax=at.outcome.value, gap=gap.estimate, gap_outcome=gap.outcome.value,
                       seed_layer_rank=1 + sorted(means.values(), reverse=True).index(means[s.layer]))
        if gap.ci is not None:
            ci[gap_label] = gap.ci
    gap_text = (f"not measured (L{s.layer} or L{s.versus} not swept: layers {a.layers})" if figures["gap"] is None
                else f"{figures['gap']:.4g}" + (f", 95% CI [{ci[gap_label][0]:.4g}, {ci[gap_label][1]:.4g}]"
                                                  if gap_label in ci else " (no CI)"))
    notes = [f"{text} Stand-in {s.model} for the seed's {s.of}: argmax L{exists.estimate} ({exists.outcome.value}); "
             f"the seed's L{s.layer} is decided the argmax: {figures['seed_layer_is_argmax']} (rank "
             f"{figures['seed_layer_rank']}); {gap_label} = {gap_text}. Beside it, never compared: the seed's "
             f"figure on {s.of}: {s.seed_figure or f'hub L{s.layer}'}. {evidence_text(parts)}.", erasing_note(a)]
    return Finding(protocol, figures, holds=parts, ci=ci, seeds=[a.seed], undecided=s.reason,
                   notes=[n for n in notes if n], suite_hash=a.suite_hash,
                   expectation=f"the stand-in's own figures beside the seed's hub L{s.layer} on {s.of} (never "
                               "compared: other weights)")


# ------------------------------------------------------------------------------------------------ claim procedures


def hub_specs(model: str, sizes: Sizes, seeds: Sequence[int] = SEEDS, *, suite: str = "synthetic",
              method: str = "zero", component: str = "layer", seed_protocol: bool = True) -> dict[str, AtlasSpec]:
    """What HUB-Q05/Q15/Q3/SMOL and HUB-SEEDS read on one model: the seed protocol's sweep (``seed_protocol``),
    one rigorous atlas per seed (``method`` ablation of each ``component``, on ``suite``'s stratified samples), and
    the robustness sweeps beside seed ``SEEDS[0]``'s default atlas."""
    specs = {"seed": seed_spec(model, sizes)} if seed_protocol else {}
    specs.update({f"seed {s}": rigorous_spec(model, sizes, s, suite=suite, method=method, component=component)
                  for s in seeds})
    if (suite, method, component) == ("synthetic", "zero", "layer"):
        specs.update(robustness_specs(model, sizes))
    return specs


def _rigorous(m: Mapping[str, Any], seeds: Sequence[int]) -> tuple[dict[str, Atlas], dict[str, Any]]:
    atlases = {f"seed {s}": m[f"seed {s}"] for s in seeds}
    default = f"seed {SEEDS[0]}" if SEEDS[0] in seeds and all(f"robustness {x}" in m for x in ROBUSTNESS_METHODS) \
        else None
    return atlases, robustness_figures(atlases, m, default)


NO_SEED_PROTOCOL = "not measured: a user's claim is measured under the rigorous protocol only"


def _findings(m: Mapping[str, Any], seed_of, rigorous: Finding, contrast_of) -> tuple[Finding, Finding]:
    """The seed protocol's finding when its sweep was measured (and the two protocols contrasted), else not run."""
    if "seed" not in m:
        return Finding.not_run("seed", NO_SEED_PROTOCOL), rigorous
    seed = seed_of(m["seed"])
    contrast_of(seed, rigorous)
    return seed, rigorous


def hub_findings(m: Mapping[str, Any], sizes: Sizes, claimed: int | None = None,
                 seeds: Sequence[int] = SEEDS) -> tuple[Finding, Finding]:
    """HUB-Q05 / HUB-Q15 / HUB-Q3 / HUB-SMOL on :func:`hub_specs`' measurements: the argmax layer (``claimed``, or
    "one exists" on the cpu tier) in every seed, seed protocol vs rigorous protocol."""
    atlases, robust = _rigorous(m, seeds)
    return _findings(m, lambda a: seed_protocol_hub(a, sizes, claimed=claimed),
                     rigorous_hub(atlases, sizes, robust, claimed=claimed), hub_contrast)


def hub_seeds_findings(m: Mapping[str, Any], sizes: Sizes, seeds: Sequence[int] = SEEDS) -> tuple[Finding, Finding]:
    """HUB-SEEDS on :func:`hub_specs`' measurements: the argmax layer does not move across seeds that resample the
    prompts. Checks that the rigorous seeds draw different samples (else the procedure fails)."""
    atlases, robust = _rigorous(m, seeds)
    rigorous = rigorous_hub_seeds(atlases, sizes, robust)
    require(rigorous.figures["samples_differ"] and rigorous.figures["prompt_overlap"] < 1.0,
            "the rigorous seeds must resample the prompts")
    require(len(set(rigorous.figures["suite_hashes"])) == len(seeds),
            f"the rigorous seeds must draw {len(seeds)} different samples")

    def seed_of(a: Atlas) -> Finding:
        seed = seed_protocol_hub_seeds(a, sizes, seeds)
        require(not seed.figures["samples_differ"], "the seed protocol's seeds must reuse the same examples")
        return seed
    return _findings(m, seed_of, rigorous, hub_seeds_contrast)


def nl_specs(model: str, sizes: Sizes) -> dict[str, AtlasSpec]:
    """HUB-NL: both suites under both protocols (seed ``SEEDS[0]``), and the robustness sweeps."""
    return {"seed synthetic": seed_spec(model, sizes), "seed nl": seed_spec(model, sizes, suite="nl"),
            "synthetic": rigorous_spec(model, sizes), "nl": rigorous_spec(model, sizes, suite="nl"),
            **robustness_specs(model, sizes)}


def nl_findings(m: Mapping[str, Any], sizes: Sizes) -> tuple[Finding, Finding]:
    """HUB-NL: the NL suite's argmax layer equals the synthetic suite's."""
    robust = robustness_figures({"synthetic": m["synthetic"], "nl": m["nl"]}, m, "synthetic")
    seed = seed_protocol_nl_agreement(m["seed synthetic"], m["seed nl"], sizes)
    rigorous = rigorous_nl_agreement(m["synthetic"], m["nl"], sizes, robust)
    require(rigorous.figures["n_unique_prompts"] <= rigorous.figures["n_prompts"],
            "the NL suite cannot have more unique prompts than prompts")
    nl_contrast(seed, rigorous)
    return seed, rigorous


def one_seed_specs(model: str, sizes: Sizes) -> dict[str, AtlasSpec]:
    """HUB-BREADTH (and each model of OWN-ATLAS, HUB-MIGRATE): the seed sweep, seed ``SEEDS[0]``'s rigorous atlas
    and the robustness sweeps."""
    return {"seed": seed_spec(model, sizes), f"seed {SEEDS[0]}": rigorous_spec(model, sizes),
            **robustness_specs(model, sizes)}


BEYOND = f"seed {SEEDS[0]} 4-family beyond"  # the spec name of HUB-BREADTH's 4-family look past the 12-family rows


def breadth_beyond_spec(model: str, sizes: Sizes, per_family: int) -> AtlasSpec:
    """HUB-BREADTH's 4-family look (``Sizes.breadth_per_family``): seed ``SEEDS[0]``'s nested sample grown to
    ``per_family`` on the 4 families only, without the rows the 12-family sample (``sizes``) already has."""
    return rigorous_spec(model, sizes, families=tasks.BREADTH_FAMILIES, per_family=per_family,
                         beyond=sizes.rigorous_per_family)


def breadth_findings(m: Mapping[str, Any], sizes: Sizes) -> tuple[Finding, Finding]:
    """HUB-BREADTH: the 4-family and the 12-family argmax layers both exist and differ (CONFIRMED); the same layer
    (FAILED); no argmax decided in a suite (INCONCLUSIVE). With ``m[BEYOND]`` (the 4-family look) the 4-family suite
    is the 12-family sample's rows of those families and those rows."""
    atlases, robust = _rigorous(m, [SEEDS[0]])
    seed, rigorous = seed_protocol_breadth(m["seed"], sizes), rigorous_breadth(atlases[f"seed {SEEDS[0]}"], sizes,
                                                                                robust, beyond=m.get(BEYOND))
    contrast(seed, rigorous, "residual zeroing ties every layer in both suites; contribution removal separates them")
    return seed, rigorous


SEVERAL_SIZES = "needs models of several sizes of one family (the cpu tier has one model per family)"


def untested(reason: str) -> tuple[Finding, Finding]:
    return Finding.not_run("seed", reason), Finding.not_run("rigorous", reason, skip_test=True)


def per_model_specs(keys: Sequence[str], sizes_of: Callable[[str], Sizes]) -> dict[str, AtlasSpec]:
    """:func:`one_seed_specs` of each model (named "<model> <spec>"), each with its own sizes."""
    return {f"{key} {name}": spec for key in keys for name, spec in one_seed_specs(key, sizes_of(key)).items()}


def _per_model(m: Mapping[str, Any], keys: Sequence[str]) -> tuple[dict, dict, dict]:
    seed = {k: m[f"{k} seed"] for k in keys}
    rigorous = {k: m[f"{k} seed {SEEDS[0]}"] for k in keys}
    robust = {k: robustness_figures({f"seed {SEEDS[0]}": rigorous[k]},
                                    {f"robustness {x}": m[f"{k} robustness {x}"] for x in ROBUSTNESS_METHODS},
                                    f"seed {SEEDS[0]}") for k in keys}
    return seed, rigorous, robust


CODER_SEED_PER_FAMILY = 10  # the seed's HUB-CODER run: 4 families (tasks.BREADTH_FAMILIES) x 10 prompts


def coder_specs(keys: Sequence[str], sizes: Sizes) -> dict[str, AtlasSpec]:
    """HUB-CODER: the coder (``keys[0]``) as the seed ran it (4 families x 10 prompts, residual zeroing) and the
    base (``keys[1]``) from the 12-family seed sweep; both rigorous atlases with their robustness sweeps."""
    coder, base = keys
    return {"coder seed": seed_spec(coder, sizes, families=tasks.BREADTH_FAMILIES, per_family=CODER_SEED_PER_FAMILY),
            "coder rigorous": rigorous_spec(coder, sizes),
            **{f"coder {k}": v for k, v in robustness_specs(coder, sizes).items()},
            "base rigorous": rigorous_spec(base, sizes),
            **{f"base {k}": v for k, v in robustness_specs(base, sizes).items()},
            "base seed": seed_spec(base, sizes)}


def coder_findings(m: Mapping[str, Any], keys: Sequence[str], sizes: Sizes) -> tuple[Finding, Finding]:
    """HUB-CODER: the coder's argmax layer differs from the base model's."""
    robust = {key: robustness_figures({f"seed {SEEDS[0]}": m[f"{role} rigorous"]},
                                      {f"robustness {x}": m[f"{role} robustness {x}"] for x in ROBUSTNESS_METHODS},
                                      f"seed {SEEDS[0]}") for key, role in zip(keys, ("coder", "base"))}
    seed = decide_coder("seed", m["coder seed"], m["base seed"], "Seed protocol: residual zeroing; coder 4 "
                        f"families x 10 prompts, base first {sizes.seed_per_family}/family.", sizes.hub_delta or 0.0)
    rigorous = decide_coder("rigorous", m["coder rigorous"], m["base rigorous"], "Rigorous protocol: "
                            f"layer-contribution ablation, {sizes.rigorous_per_family}/family, seed {SEEDS[0]}.",
                            sizes.hub_delta or 0.0)
    rigorous.figures["robustness"] = robust
    contrast(seed, rigorous, "the coder's seed-protocol hub is a narrow margin (1.9% in the seed) over 4 families; "
             "with contribution ablation over 12 families and the argmax re-selected per resample it changes")
    return seed, rigorous


def stand_in_specs(model: str, sizes: Sizes) -> dict[str, AtlasSpec]:
    """A stand-in for the coder of HUB-CODER: its seed sweep as the seed ran the coder (4 families x 10 prompts,
    residual zeroing) and its seed-42 rigorous atlas with the robustness sweeps (the same specs as every other
    claim's on this model, so shared)."""
    return {"seed": seed_spec(model, sizes, families=tasks.BREADTH_FAMILIES, per_family=CODER_SEED_PER_FAMILY),
            f"seed {SEEDS[0]}": rigorous_spec(model, sizes), **robustness_specs(model, sizes)}


def stand_in_findings(m: Mapping[str, Any], s: StandIn, sizes: Sizes) -> tuple[Finding, Finding]:
    """HUB-CODER on a stand-in (:func:`decide_stand_in` under both protocols): its own figures beside the seed's
    layer, never compared with it."""
    atlases, robust = _rigorous(m, [SEEDS[0]])
    delta, why = sizes.hub_delta or 0.0, sizes.hub_delta_rationale or ""
    seed = decide_stand_in("seed", m["seed"], s, "Seed protocol as the seed ran the coder: residual zeroing, "
                           f"{len(tasks.BREADTH_FAMILIES)} families x {CODER_SEED_PER_FAMILY} prompts.", delta, why)
    rigorous = decide_stand_in("rigorous", atlases[f"seed {SEEDS[0]}"], s, "Rigorous protocol: layer-contribution "
                               f"ablation, {sizes.rigorous_per_family}/family, seed {SEEDS[0]}.", delta, why)
    rigorous.figures["robustness"] = robust
    both = (f"Argmax by protocol on the stand-in: seed L{seed.figures['argmax_layer']} "
            f"({seed.figures['per_model'][s.model]['outcome']}), rigorous L{rigorous.figures['argmax_layer']} "
            f"({rigorous.figures['per_model'][s.model]['outcome']}).")
    seed.notes.append(both)
    rigorous.notes.append(both)
    return seed, rigorous


def migrate_findings(m: Mapping[str, Any], keys: Sequence[str], sizes: Sizes,
                     params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """HUB-MIGRATE: argmax depth rises along ``keys`` (models in scale order, loaded one at a time)."""
    seed_atlases, rigorous_atlases, robust = _per_model(m, keys)
    delta, why = params["depth_delta"], params["depth_delta_rationale"]
    seed = decide_migration("seed", seed_atlases, delta, why, "Seed protocol: residual zeroing.",
                            sizes.hub_delta or 0.0)
    rigorous = decide_migration("rigorous", rigorous_atlases, delta, why,
                                f"Rigorous protocol: layer-contribution ablation, seed {SEEDS[0]}.", sizes.hub_delta or 0.0)
    rigorous.figures["robustness"] = robust
    contrast(seed, rigorous, "the ablation step (residual zeroing -> contribution removal) changes the argmax")
    return seed, rigorous


def own_atlas_findings(m: Mapping[str, Any], keys: Sequence[str], sizes: Sizes,
                       params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """OWN-ATLAS: some two of the models ``keys`` have different argmax depths (paired per prompt: the stratified
    sample is the same for every model). Each model is measured with its own tier's sizes; the rigorous atlas is
    the HUB-SEEDS / HUB-SMOL seed-42 atlas (the same spec)."""
    seed_atlases, rigorous_atlases, robust = _per_model(m, keys)
    delta, why = params["depth_tolerance"], params["depth_tolerance_rationale"]
    seed = decide_own_atlas("seed", seed_atlases, delta, why, "Seed protocol: residual zeroing, first "
                            f"{sizes.seed_per_family}/family.")
    rigorous = decide_own_atlas("rigorous", rigorous_atlases, delta, why, "Rigorous protocol: layer-contribution "
                                f"ablation, {sizes.rigorous_per_family}/family, seed {SEEDS[0]}.")
    rigorous.figures["robustness"] = robust
    contrast(seed, rigorous, "residual zeroing gives every bias-free model the same exact tie; contribution removal "
             "gives each model its own profile")
    return seed, rigorous


# ------------------------------------------------------------------------------------------------ on a loaded model
# The same specs and findings on a model in hand (unit tests, calibration, the CLI); a catalogue row runs them
# through its template (engine.templates).


def hub(lm, sizes: Sizes, claimed: int | None = None) -> tuple[Finding, Finding]:
    return hub_findings(measure_on(lm, hub_specs(lm.key, sizes)), sizes, claimed)


def hub_seeds(lm, sizes: Sizes) -> tuple[Finding, Finding]:
    return hub_seeds_findings(measure_on(lm, hub_specs(lm.key, sizes)), sizes)


def hub_nl(lm, sizes: Sizes) -> tuple[Finding, Finding]:
    return nl_findings(measure_on(lm, nl_specs(lm.key, sizes)), sizes)


def hub_breadth(lm, sizes: Sizes) -> tuple[Finding, Finding]:
    return breadth_findings(measure_on(lm, one_seed_specs(lm.key, sizes)), sizes)


def own_atlas(load_model: Loader, keys: Sequence[str], sizes_of: Callable[[str], Sizes],
              params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    return own_atlas_findings(measure(per_model_specs(keys, sizes_of), load_model), keys, sizes_of(keys[0]), params)


def hub_migrate(load_model: Loader, keys: Sequence[str], sizes: Sizes,
                params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    return migrate_findings(measure(per_model_specs(keys, lambda key: sizes), load_model), keys, sizes, params)


def hub_coder(load_model: Loader, keys: Sequence[str], sizes: Sizes) -> tuple[Finding, Finding]:
    return coder_findings(measure(coder_specs(keys, sizes), load_model), keys, sizes)
