"""Measurement procedures of the atlas claims (block ``atlas``), each under the two protocols.

Every claim of the block is measured twice (under the seed-protocols document of the project brief):

* **seed protocol** - the seed research's own method, faithfully: the decoder layer's *output* (the whole
  residual stream after layer l) is zeroed; KL(clean || ablated) of the next-token distribution at the last
  prompt position; family effect = mean over the *first k examples* of the family in file order (the seed: 5);
  hub = argmax over layers of the mean over families; "seeds" only change random state, never the examples;
  position classes "bos" = the first prompt token and "answer" = the last three prompt positions; "mean
  ablation" as the seed ran it (no means were passed, so the hook returned its input); "skip" = residual
  zeroing of the skipped layers.
* **rigorous protocol** - the same question measured carefully: the layer's *contribution* is removed
  (``output := input``); a hub exists only if its bootstrap CI of the gap to the runner-up lies above 0 (a tie
  is "no hub", never argmax's first index); stratified samples are drawn per seed (seeds change the data);
  bootstrap CIs everywhere; equal-size position sets with the measured position reported on its own and a
  real BOS where the tokenizer adds one; real mean / resample / noise ablation; skipping a layer = removing its
  contribution.

Every procedure returns a :class:`Finding`: the figures, whether the claim's rule holds under that protocol, the
intervals and notes (sample sizes included) that ``claim.record`` needs. ``contrast`` adds to both findings
the step that makes the protocols disagree, read off the measured figures.

Atlases go through the engine's content-addressed cache (``atlas(..., cache=True)``), so an atlas shared by
several claims (e.g. the rigorous seed-42 atlas used by HUB-SEEDS, HUB-NL, HUB-BREADTH, HUB-SMOL and OWN-ATLAS)
is computed once and re-read afterwards; a rerun is fast.

Sample sizes are the protocol's, per tier (:data:`SIZES`): the gpu tier uses the seed's full sizes, the cpu
tier (2 cores, <= 15 min for the block on both embedded models) smaller ones, stated in every finding's notes.
Prompts are fed raw (``template="none"``, as the seed fed its base models), sorted by token length so that the
batches carry little padding; per-example results do not depend on batch composition (engine-tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from engine import metrics, stats, tasks
from engine.atlas import Atlas, atlas
from engine.interventions import (
    Ablate, InterventionError, capture, clean_run, edit_residual, encode, run_from, Site,
)
from engine.interventions import methods as ablation_methods

SEEDS: tuple[int, ...] = (42, 137, 256)
TEMPLATE = "none"
SPLIT = "short"  # the seed's hub runs used short templated prompts
TIE_RTOL = 1e-6  # top-two effects equal to this relative precision are an exact tie (argmax = first index)


# --------------------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """Sample sizes of one tier.

    ``seed_per_family``: the seed protocol's "first k examples per family" (the seed: 5).
    ``rigorous_per_family``: examples per family in each seed's stratified sample.
    ``nl_per_family``: natural-language prompts per family (the seed: 50+; every NL prompt is unique here).
    ``noop_examples``: examples used to show that the seed's "mean ablation" changed nothing.
    ``skip_single_layers``: how many single-layer skip configurations (spread over depth; None = every layer).
    """

    seed_per_family: int = 5
    rigorous_per_family: int = 10
    nl_per_family: int = 50
    noop_examples: int = 12
    skip_single_layers: int | None = None
    n_resamples: int = 2000
    batch_size: int = 16


SIZES: dict[str, Sizes] = {
    # the seed's sizes: first 5 per family; 10 per family for resampled seeds (the seed's coder run used 10)
    "gpu": Sizes(seed_per_family=5, rigorous_per_family=10, nl_per_family=50, noop_examples=24,
                 skip_single_layers=None, n_resamples=2000, batch_size=32),
    # 2 cores, <= 15 min for the whole block on both cpu models (measured; see README)
    "cpu": Sizes(seed_per_family=1, rigorous_per_family=2, nl_per_family=2, noop_examples=4,
                 skip_single_layers=5, n_resamples=2000, batch_size=4),
}


def sizes_for(tier: str) -> Sizes:
    return SIZES["gpu" if tier == "gpu" else "cpu"]


# --------------------------------------------------------------------------------------------- findings


@dataclass
class Finding:
    """What one protocol measured for one claim: the arguments of ``claim.record``."""

    protocol: str
    figures: dict[str, Any]
    holds: bool
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    suite_hash: str | None = None
    revised: bool = False
    reason: str = ""

    def record(self) -> dict[str, Any]:
        """Keyword arguments for ``claim.record``."""
        out: dict[str, Any] = {"protocol": self.protocol, "figures": self.figures, "holds": bool(self.holds),
                               "ci": {k: v for k, v in self.ci.items() if np.isfinite(v).all()},
                               "seeds": self.seeds, "notes": " ".join(self.notes), "suite_hash": self.suite_hash}
        if self.revised:
            out.update(revised=True, reason=self.reason)
        return out


def contrast(seed: Finding, rigorous: Finding, why: str) -> None:
    """When the two protocols disagree, say in both findings which step makes the difference."""
    if seed.holds == rigorous.holds and seed.revised == rigorous.revised:
        return
    text = (f"Protocols disagree (seed: {'holds' if seed.holds else 'falsified'}, rigorous: "
            f"{'holds' if rigorous.holds else 'falsified'}): {why}")
    seed.notes.append(text)
    rigorous.notes.append(text)


# --------------------------------------------------------------------------------------------- samples


def _pool(suite: str | Sequence[tasks.Example]) -> list[tasks.Example]:
    return tasks.load_suite(suite) if isinstance(suite, str) else list(suite)


def first_examples(per_family: int, families: Sequence[str] | None = None, suite="synthetic",
                   split: str | None = SPLIT) -> list[tasks.Example]:
    """The seed protocol's sample: the first ``per_family`` examples of each family, in file order.

    The same for every seed: the seed's "seeds" never changed the examples.
    """
    pool = [ex for ex in _pool(suite) if split is None or ex.split == split]
    families = list(families) if families is not None else list(dict.fromkeys(ex.family for ex in pool))
    out = []
    for family in families:
        members = [ex for ex in pool if ex.family == family][:per_family]
        if len(members) < per_family:
            raise ValueError(f"family {family!r} has {len(members)} examples, the protocol asks for {per_family}")
        out.extend(members)
    return out


def stratified_sample(seed: int, per_family: int, families: Sequence[str] | None = None, suite="synthetic",
                      split: str | None = SPLIT) -> list[tasks.Example]:
    """The rigorous protocol's sample for one seed: ``per_family`` examples drawn per family with that seed."""
    if isinstance(suite, str) and suite == "nl":
        split = None  # the NL suite has its own split
    return tasks.sample(families=families, per_family=per_family, seed=seed, suite=suite, split=split)


def by_length(lm, examples: Sequence[tasks.Example]) -> list[tasks.Example]:
    """Examples sorted by rendered token length (stable), so consecutive batches carry little padding."""
    lengths = [len(tasks.render(lm.tokenizer, ex, TEMPLATE).input_ids) for ex in examples]
    return [ex for _, _, ex in sorted(zip(lengths, range(len(examples)), examples), key=lambda t: t[:2])]


def prompt_overlap(samples: Sequence[Sequence[Any]]) -> float:
    """Mean Jaccard overlap of the example ids of pairs of samples (1.0: the samples are identical).

    A sample is a list of examples or of example ids."""
    sets = [{getattr(ex, "id", ex) for ex in s} for s in samples]
    pairs = [(i, j) for i in range(len(sets)) for j in range(i + 1, len(sets))]
    return float(np.mean([len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i, j in pairs])) if pairs else 1.0


# --------------------------------------------------------------------------------------------- atlases


def _atlas(lm, examples, sizes: Sizes, **kwargs) -> Atlas:
    return atlas(lm, by_length(lm, examples), template=TEMPLATE, cache=True, batch_size=sizes.batch_size,
                 n_resamples=sizes.n_resamples, **kwargs)


def seed_atlas(lm, sizes: Sizes, *, suite="synthetic", families=None, per_family: int | None = None,
               positions: Any = "all") -> Atlas:
    """The seed's layer ablation: zero the residual stream after each layer; KL at the last prompt position;
    the first k examples per family."""
    examples = first_examples(per_family or sizes.seed_per_family, families, suite,
                              None if suite == "nl" else SPLIT)
    return _atlas(lm, examples, sizes, method="zero", component="resid", positions=positions, measure="answer",
                  seed=SEEDS[0])


def rigorous_atlas(lm, sizes: Sizes, seed: int = SEEDS[0], *, suite="synthetic", families=None,
                   method: str = "zero", positions: Any = "all", per_family: int | None = None) -> Atlas:
    """Layer-contribution ablation (output := input) on that seed's stratified sample; KL at the answer."""
    examples = stratified_sample(seed, per_family or (sizes.nl_per_family if suite == "nl"
                                                      else sizes.rigorous_per_family), families, suite)
    return _atlas(lm, examples, sizes, method=method, component="layer", positions=positions, measure="answer",
                  seed=seed)


def reseeded(a: Atlas, seed: int) -> Atlas:
    """The same per-example effects with another bootstrap seed.

    Used for the seed protocol's "seeds": its examples and zero ablation do not depend on the seed (no
    randomness; unit-tested), so running the sweep again would only repeat identical numbers.
    """
    data = a.to_json()
    data["seed"] = seed
    return Atlas.from_json(data)


def restrict(a: Atlas, families: Sequence[str]) -> Atlas:
    """The atlas of a sub-suite: the rows of ``families`` only (per-example effects do not depend on which other
    examples were measured). The information-erasing ratio is not recomputed (left empty)."""
    rows = [i for i, f in enumerate(a.example_families) if f in set(families)]
    if not rows:
        raise ValueError(f"restrict: none of {list(families)} in the atlas")
    data = a.to_json()
    data.update(example_ids=[a.example_ids[i] for i in rows], example_families=[a.example_families[i] for i in rows],
                per_example=a.per_example[rows].tolist(), erase_ratio=[])
    return Atlas.from_json(data)


def exact_tie(a: Atlas) -> bool:
    """Top-two layer effects equal (to ``TIE_RTOL``): the argmax is an artefact of index order."""
    m = np.asarray(a.layer_effect, dtype=float)
    top = np.sort(m)[::-1]
    return bool(len(top) > 1 and abs(top[0] - top[1]) <= TIE_RTOL * max(abs(top[0]), 1e-12))


@dataclass(frozen=True)
class HubReading:
    """The hub of one atlas as the claims read it."""

    hub: int | None  # separated hub (gap CI above 0), or None
    argmax: int  # what a bare argmax says (the seed's hub)
    runner_up: int
    depth: float | None  # hub / (n_layers - 1)
    argmax_depth: float
    gap: stats.Interval
    exact_tie: bool
    erasing: bool
    n_layers: int
    profile: list[float]

    @classmethod
    def of(cls, a: Atlas) -> "HubReading":
        return cls(a.hub, a.argmax_layer, a.runner_up, a.hub_depth, a.argmax_depth, a.gap, exact_tie(a),
                   a.information_erasing, a.n_layers, [float(x) for x in a.layer_effect])

    def text(self) -> str:
        if self.hub is None:
            kind = "an exact tie" if self.exact_tie else "not separated"
            return (f"no hub: argmax L{self.argmax} vs runner-up L{self.runner_up} is {kind} (gap "
                    f"{self.gap.estimate:.4g}, CI [{self.gap.low:.4g}, {self.gap.high:.4g}])")
        return (f"hub L{self.hub} (depth {self.depth:.2f}), runner-up L{self.runner_up}, gap {self.gap.estimate:.4g} "
                f"CI [{self.gap.low:.4g}, {self.gap.high:.4g}]")


def _ci(interval: stats.Interval) -> tuple[float, float]:
    return (float(interval.low), float(interval.high))


def _erasing_note(a: Atlas) -> str:
    if not a.information_erasing:
        return ""
    flat = np.asarray(a.layer_effect)
    return (f"Residual zeroing is information-erasing here: ablated outputs of unrelated prompts coincide at "
            f"{len(a.erasing_layers)}/{len(a.layers)} layers, and the layer effects span only "
            f"[{flat.min():.4g}, {flat.max():.4g}] nats (a bias-free model's zeroed residual stays zero, so the "
            f"logits become uniform and every layer gives the same KL).")


# --------------------------------------------------------------------------------------------- hub claims


def _hub_figures(r: HubReading) -> dict[str, Any]:
    return {"hub_layer": r.hub, "hub_depth": r.depth, "argmax_layer": r.argmax, "argmax_depth": r.argmax_depth,
            "runner_up": r.runner_up, "gap": r.gap.estimate, "exact_tie": r.exact_tie,
            "information_erasing": r.erasing, "n_layers": r.n_layers, "layer_effects": r.profile}


def seed_protocol_hub(lm, sizes: Sizes, *, families=None, per_family: int | None = None) -> Finding:
    """Hub as the seed found it (residual zeroing, first k per family, one deterministic sweep for all seeds).

    Rule (HUB-Q05 and the like): a hub is the argmax *separated* from the runner-up; a tie means no hub.
    """
    a = seed_atlas(lm, sizes, families=families, per_family=per_family)
    r = HubReading.of(a)
    figures = _hub_figures(r) | {"hub_std": 0.0, "n_examples": a.n_examples}
    notes = [f"Seed protocol: residual zeroing, KL at the last position, first {per_family or sizes.seed_per_family} "
             f"examples/family ({a.n_examples} prompts); the seeds {list(SEEDS)} do not change the examples, so "
             f"one sweep serves all three and hub std 0.0 is by construction. {r.text()}.", _erasing_note(a)]
    return Finding("seed", figures, holds=r.hub is not None, ci={"gap": _ci(r.gap)}, seeds=list(SEEDS),
                   notes=[n for n in notes if n], suite_hash=a.suite_hash)


def rigorous_hub(lm, sizes: Sizes, seeds: Sequence[int] = SEEDS, *, families=None) -> Finding:
    """Hub under layer-contribution ablation on a fresh stratified sample per seed; holds when every seed has a
    separated hub and they agree (the falsifier: the hub differs in >= 1 seed, or there is none)."""
    atlases = [rigorous_atlas(lm, sizes, s, families=families) for s in seeds]
    readings = [HubReading.of(a) for a in atlases]
    hubs = [r.hub for r in readings]
    stable = all(h is not None for h in hubs) and len(set(hubs)) == 1
    main = readings[0]
    figures = _hub_figures(main) | {
        "hubs": hubs, "argmax_layers": [r.argmax for r in readings],
        "hub_std": float(np.std(hubs)) if all(h is not None for h in hubs) else None,
        "gaps": [r.gap.estimate for r in readings], "stable": stable,
        "prompt_overlap": prompt_overlap([a.example_ids for a in atlases]),
        "n_examples": atlases[0].n_examples,
    }
    if stable:
        figures["hub_layer"], figures["hub_depth"] = hubs[0], readings[0].depth
    ci = {"gap": _ci(main.gap)} | {f"gap_seed{s}": _ci(r.gap) for s, r in zip(seeds, readings)}
    notes = [f"Rigorous protocol: layer-contribution ablation, {sizes.rigorous_per_family} examples/family drawn "
             f"per seed ({atlases[0].n_examples} prompts/seed), stratified bootstrap CI of the top-two gap "
             f"({sizes.n_resamples} resamples). " + "; ".join(f"seed {s}: {r.text()}" for s, r in zip(seeds, readings))
             + "."]
    return Finding("rigorous", figures, holds=stable, ci=ci, seeds=list(seeds), notes=notes,
                   suite_hash=atlases[0].suite_hash)


def hub_contrast(seed: Finding, rigorous: Finding) -> None:
    why = []
    if seed.figures.get("exact_tie") or seed.figures.get("information_erasing"):
        why.append("residual zeroing erases the prompt (every layer gives the same KL, an exact tie whose argmax "
                   "is L0); removing only the layer's contribution separates the layers")
    if seed.figures.get("hub_layer") != rigorous.figures.get("hub_layer"):
        why.append(f"the ablation step (residual zeroing -> contribution removal) and the resampled stratified "
                   f"sample move the hub from {seed.figures.get('hub_layer')} to {rigorous.figures.get('hub_layer')}")
    if rigorous.figures.get("hubs") and not rigorous.figures.get("stable"):
        why.append(f"seeds that resample the prompts disagree (hubs {rigorous.figures['hubs']}), which the seed's "
                   "identical-input seeds could not show")
    contrast(seed, rigorous, "; ".join(why) or "the ablation step and the sample differ")


# ----- HUB-SEEDS


def seed_protocol_hub_seeds(lm, sizes: Sizes, seeds: Sequence[int] = SEEDS) -> Finding:
    """The seed's seeds: identical examples for every seed, deterministic zero ablation.

    Rule: seeds must resample the prompt set, and the hub must not move (std 0). Here they do not resample
    (the samples are identical), so std 0.0 is guaranteed, not measured: the rule's precondition fails.
    """
    samples = [first_examples(sizes.seed_per_family) for _ in seeds]
    base = seed_atlas(lm, sizes)
    atlases = [reseeded(base, s) for s in seeds]
    readings = [HubReading.of(a) for a in atlases]
    hubs = [r.hub for r in readings]
    argmaxes = [r.argmax for r in readings]
    overlap = prompt_overlap(samples)
    resampled = overlap < 1.0
    has_hub = all(h is not None for h in hubs)
    figures = {"hubs": hubs, "argmax_layers": argmaxes, "hub_std": float(np.std(argmaxes)),
               "samples_differ": resampled, "prompt_overlap": overlap,
               "suite_hashes": [tasks.suite_hash(s)[:12] for s in samples], "exact_tie": readings[0].exact_tie,
               "gaps": [r.gap.estimate for r in readings], "n_examples": base.n_examples}
    ci = {f"gap_seed{s}": _ci(r.gap) for s, r in zip(seeds, readings)}
    notes = [f"Seed protocol: the first {sizes.seed_per_family} examples/family ({base.n_examples} prompts) for "
             f"every seed (identical suite hashes, Jaccard overlap {overlap:.2f}); zero ablation has no randomness, "
             f"so one sweep gives all three seeds and hub std {np.std(argmaxes):.1f} is guaranteed, not measured. "
             f"Argmax per seed {argmaxes}; {readings[0].text()}.", _erasing_note(base)]
    return Finding("seed", figures, holds=resampled and has_hub and len(set(hubs)) == 1, ci=ci, seeds=list(seeds),
                   notes=[n for n in notes if n], suite_hash=base.suite_hash)


def rigorous_hub_seeds(lm, sizes: Sizes, seeds: Sequence[int] = SEEDS) -> Finding:
    """Three seeds, three stratified samples (the test checks they differ), layer-contribution ablation; hub per
    seed, its std and the bootstrap CI of each seed's top-two gap. Falsified if the hub std > 0 (or a seed finds
    no separated hub, so the std is undefined)."""
    samples = [stratified_sample(s, sizes.rigorous_per_family) for s in seeds]
    atlases = [rigorous_atlas(lm, sizes, s) for s in seeds]
    readings = [HubReading.of(a) for a in atlases]
    hubs = [r.hub for r in readings]
    has_hub = all(h is not None for h in hubs)
    overlap = prompt_overlap(samples)
    std = float(np.std(hubs)) if has_hub else None
    figures = {"hubs": hubs, "argmax_layers": [r.argmax for r in readings], "hub_std": std,
               "argmax_std": float(np.std([r.argmax for r in readings])), "samples_differ": overlap < 1.0,
               "prompt_overlap": overlap, "suite_hashes": [tasks.suite_hash(s)[:12] for s in samples],
               "gaps": [r.gap.estimate for r in readings], "n_examples": atlases[0].n_examples}
    ci = {f"gap_seed{s}": _ci(r.gap) for s, r in zip(seeds, readings)}
    notes = [f"Rigorous protocol: {sizes.rigorous_per_family} examples/family drawn per seed "
             f"({atlases[0].n_examples} prompts/seed, Jaccard overlap {overlap:.2f}), layer-contribution ablation, "
             f"bootstrap CI of the top-two gap ({sizes.n_resamples} resamples). "
             + "; ".join(f"seed {s}: {r.text()}" for s, r in zip(seeds, readings)) + "."]
    return Finding("rigorous", figures, holds=overlap < 1.0 and has_hub and std == 0.0, ci=ci, seeds=list(seeds),
                   notes=notes, suite_hash=atlases[0].suite_hash)


def hub_seeds_contrast(seed: Finding, rigorous: Finding) -> None:
    why = []
    if not seed.figures["samples_differ"]:
        why.append("the seed's seeds never resampled the prompts (overlap 1.0), so its std 0.0 is guaranteed")
    if seed.figures.get("exact_tie"):
        why.append("residual zeroing gives an exact tie at every layer (no hub to be stable)")
    if rigorous.figures["hub_std"] is None:
        why.append("under the rigorous protocol at least one seed has no separated hub")
    elif rigorous.figures["hub_std"] > 0:
        why.append(f"resampled prompts move the hub ({rigorous.figures['hubs']})")
    contrast(seed, rigorous, "; ".join(why))


# ----- HUB-NL


def _family_agreement(a: Atlas, b: Atlas) -> tuple[float, list[str], int]:
    """Fraction of the shared families whose per-family argmax layers agree, an exact tie counting as "no hub"
    (never agreeing); also the agreeing families and how many family pairs are both CI-separated."""
    shared = [f for f in a.families if f in b.families]
    agree, separated = [], 0
    for f in shared:
        tie_a = _family_exact_tie(a, f)
        tie_b = _family_exact_tie(b, f)
        if not tie_a and not tie_b and a.family_argmax[f] == b.family_argmax[f]:
            agree.append(f)
        separated += int(a.family_hubs[f] is not None and b.family_hubs[f] is not None)
    return (len(agree) / len(shared) if shared else 0.0), agree, separated


def _family_exact_tie(a: Atlas, family: str) -> bool:
    m = np.sort(np.asarray(a.effects[family], dtype=float).reshape(-1))[::-1]
    return bool(len(m) > 1 and abs(m[0] - m[1]) <= TIE_RTOL * max(abs(m[0]), 1e-12))


def nl_suite_counts() -> dict[str, int]:
    nl = tasks.load_suite("nl")
    return {"n_prompts": len(nl), "n_unique_prompts": len({ex.prompt for ex in nl}),
            "min_per_family": min(sum(ex.family == f for ex in nl) for f in {ex.family for ex in nl})}


def _nl_finding(protocol: str, syn: Atlas, nl: Atlas, threshold: float, sizes_text: str) -> Finding:
    agreement, agree, separated = _family_agreement(syn, nl)
    rs, rn = HubReading.of(syn), HubReading.of(nl)
    rho, _ = stats.spearman(rs.profile, rn.profile)
    figures = {"family_agreement": agreement, "agreeing_families": agree, "families_separated_both": separated,
               "hub_layer": rn.hub, "hub_layer_synthetic": rs.hub, "argmax_nl": rn.argmax,
               "argmax_synthetic": rs.argmax, "profile_spearman": None if not np.isfinite(rho) else rho,
               "n_nl_examples": nl.n_examples, "n_synthetic_examples": syn.n_examples,
               "family_argmax_nl": nl.family_argmax, "family_argmax_synthetic": syn.family_argmax,
               "information_erasing": nl.information_erasing or syn.information_erasing, **nl_suite_counts()}
    notes = [f"{sizes_text} Per-family argmax agreement {agreement:.2f} ({len(agree)}/{len(syn.families)}; an exact "
             f"tie counts as no hub); families with a CI-separated hub in both suites: {separated}. NL: {rn.text()}; "
             f"synthetic: {rs.text()}.", _erasing_note(nl)]
    return Finding(protocol, figures, holds=agreement >= threshold, seeds=[nl.seed],
                   notes=[n for n in notes if n], suite_hash=nl.suite_hash)


def seed_protocol_nl_agreement(lm, sizes: Sizes, threshold: float) -> Finding:
    syn = seed_atlas(lm, sizes)
    nl = seed_atlas(lm, sizes, suite="nl")
    return _nl_finding("seed", syn, nl, threshold,
                       f"Seed protocol: residual zeroing, first {sizes.seed_per_family} prompts/family of each "
                       f"suite.")


def rigorous_nl_agreement(lm, sizes: Sizes, threshold: float, seed: int = SEEDS[0]) -> Finding:
    syn = rigorous_atlas(lm, sizes, seed)
    nl = rigorous_atlas(lm, sizes, seed, suite="nl")
    return _nl_finding("rigorous", syn, nl, threshold,
                       f"Rigorous protocol: layer-contribution ablation, stratified samples (seed {seed}): "
                       f"{sizes.rigorous_per_family}/family synthetic, {sizes.nl_per_family}/family NL.")


def nl_contrast(seed: Finding, rigorous: Finding) -> None:
    contrast(seed, rigorous,
             f"per-family argmax agreement {seed.figures['family_agreement']:.2f} (seed) vs "
             f"{rigorous.figures['family_agreement']:.2f} (rigorous): "
             + ("residual zeroing erases the prompt, so every family profile is an exact tie (no family hub to "
                "agree on)" if seed.figures["information_erasing"]
                else "the ablation step (residual zeroing -> contribution removal) and the resampled sample"))


# ----- HUB-BREADTH


def _breadth_finding(protocol: str, full: Atlas, narrow_families: Sequence[str], text: str) -> Finding:
    narrow = restrict(full, narrow_families)
    r12, r4 = HubReading.of(full), HubReading.of(narrow)
    same = r4.hub == r12.hub
    figures = {"hub_layer_12fam": r12.hub, "hub_layer_4fam": r4.hub, "argmax_12fam": r12.argmax,
               "argmax_4fam": r4.argmax, "gap_12fam": r12.gap.estimate, "gap_4fam": r4.gap.estimate,
               "hubs_identical": same, "families_4": list(narrow_families), "n_examples_12fam": full.n_examples,
               "n_examples_4fam": narrow.n_examples}
    ci = {"gap_12fam": _ci(r12.gap), "gap_4fam": _ci(r4.gap)}
    notes = [f"{text} 12 families: {r12.text()}; 4 families ({', '.join(narrow_families)}): {r4.text()}. The "
             "4-family atlas is the same sweep restricted to those families' prompts."]
    reason = ""
    if same:
        what = "no separated hub in either suite" if r12.hub is None else f"L{r12.hub} for both suites"
        reason = f"the hub does not depend on breadth on this model ({what})"
    return Finding(protocol, figures, holds=True, ci=ci, seeds=[full.seed], notes=notes, suite_hash=full.suite_hash,
                   revised=same, reason=reason)


def seed_protocol_breadth(lm, sizes: Sizes) -> Finding:
    return _breadth_finding("seed", seed_atlas(lm, sizes), tasks.BREADTH_FAMILIES,
                            f"Seed protocol: residual zeroing, first {sizes.seed_per_family}/family.")


def rigorous_breadth(lm, sizes: Sizes, seed: int = SEEDS[0]) -> Finding:
    return _breadth_finding("rigorous", rigorous_atlas(lm, sizes, seed), tasks.BREADTH_FAMILIES,
                            f"Rigorous protocol: layer-contribution ablation, {sizes.rigorous_per_family}/family "
                            f"(seed {seed}).")


# ----- OWN-ATLAS and HUB-MIGRATE (several models)


def _depths_differ(depths: Sequence[float | None], tol: float) -> bool:
    known = [d for d in depths if d is not None]
    if len(known) != len(depths):  # "no hub" differs from a hub; all "no hub" is no difference
        return len(known) > 0
    return max(known) - min(known) > tol


def own_atlas(readings: Mapping[str, HubReading], protocol: str, tol: float, text: str) -> Finding:
    """Hubs (depth fractions) of several models; the rule holds when they are not all equal (beyond ``tol``)."""
    keys = list(readings)
    depths = [readings[k].depth for k in keys]
    figures = {"models": keys, "hub_layers": [readings[k].hub for k in keys], "hub_depths": depths,
               "argmax_layers": [readings[k].argmax for k in keys],
               "argmax_depths": [readings[k].argmax_depth for k in keys],
               "exact_ties": [readings[k].exact_tie for k in keys]}
    notes = [text + " " + "; ".join(f"{k}: {readings[k].text()}" for k in keys) + "."]
    ci = {f"gap[{k}]": _ci(readings[k].gap) for k in keys}
    return Finding(protocol, figures, holds=_depths_differ(depths, tol), ci=ci, seeds=[SEEDS[0]], notes=notes)


def hub_migration(readings: Mapping[str, HubReading], protocol: str, text: str) -> Finding:
    """Hub depth strictly increases along ``readings`` (models in scale order)."""
    keys = list(readings)
    depths = [readings[k].depth for k in keys]
    rising = all(d is not None for d in depths) and all(a < b for a, b in zip(depths, depths[1:]))
    figures = {"models": keys, "hub_depths": depths, "hub_layers": [readings[k].hub for k in keys],
               "argmax_depths": [readings[k].argmax_depth for k in keys],
               "argmax_layers": [readings[k].argmax for k in keys]}
    notes = [text + " " + "; ".join(f"{k}: {readings[k].text()}" for k in keys) + "."]
    ci = {f"gap[{k}]": _ci(readings[k].gap) for k in keys}
    return Finding(protocol, figures, holds=rising, ci=ci, seeds=[SEEDS[0]], notes=notes)


def code_moves_hub(coder: HubReading, base: HubReading, protocol: str, text: str) -> Finding:
    """HUB-CODER: the hubs of the coder and the base model differ (both must be separated hubs: a tie is no hub)."""
    figures = {"hub_layer": coder.hub, "hub_depth": coder.depth, "base_hub_layer": base.hub,
               "base_hub_depth": base.depth, "argmax_layer": coder.argmax, "base_argmax_layer": base.argmax,
               "gap": coder.gap.estimate, "base_gap": base.gap.estimate}
    holds = coder.hub is not None and base.hub is not None and coder.hub != base.hub
    notes = [f"{text} Coder: {coder.text()}; base: {base.text()}."]
    return Finding(protocol, figures, holds=holds, ci={"gap": _ci(coder.gap), "base_gap": _ci(base.gap)},
                   seeds=[SEEDS[0]], notes=notes)


# --------------------------------------------------------------------------------------------- POS-ANSWER


def _position_profile(a: Atlas) -> tuple[np.ndarray, stats.Interval]:
    """Layer profile (mean over families) and the CI of its mean over layers (stratified bootstrap)."""
    per_ex = a.per_example.mean(1, keepdims=True)
    return np.asarray(a.layer_effect), stats.mean_ci(per_ex, a.example_families, 0, n_resamples=a.n_resamples,
                                                     seed=a.seed)


def _pos_finding(protocol: str, answer: Atlas, bos: Atlas, text: str, extra: dict | None = None,
                 extra_ci: dict | None = None) -> Finding:
    pa, ca = _position_profile(answer)
    pb, cb = _position_profile(bos)
    dominates = int(np.sum(pa > pb))
    figures = {"answer_effect": float(pa.mean()), "bos_effect": float(pb.mean()),
               "layers_answer_dominates": dominates, "n_layers": len(pa), "answer_profile": pa.tolist(),
               "bos_profile": pb.tolist(), "weakest_margin_layer": int(np.argmin(pa - pb)),
               "n_examples": answer.n_examples} | (extra or {})
    notes = [f"{text} Answer set effect {pa.mean():.4g} vs BOS set {pb.mean():.4g} (mean over layers); the answer "
             f"set is larger at {dominates}/{len(pa)} layers."]
    ci = {"answer_effect": _ci(ca), "bos_effect": _ci(cb)} | (extra_ci or {})
    return Finding(protocol, figures, holds=dominates == len(pa), ci=ci, seeds=[answer.seed], notes=notes,
                   suite_hash=answer.suite_hash)


def seed_protocol_positions(lm, sizes: Sizes) -> Finding:
    """The seed: zero the residual at "bos" (position 0) and at "answer" (the last three prompt positions, which
    include the measured one) at each layer; KL at the last position; first k per family."""
    answer = seed_atlas(lm, sizes, positions="last3")
    bos = seed_atlas(lm, sizes, positions="first")
    has_bos = lm.tokenizer.bos_token_id is not None and _adds_bos(lm)
    return _pos_finding("seed", answer, bos,
                        f"Seed protocol: residual zeroing at the last 3 prompt positions (incl. the measured one) vs "
                        f"position 0 ({'the BOS token' if has_bos else 'the first prompt token: no BOS here'}), "
                        f"first {sizes.seed_per_family}/family ({answer.n_examples} prompts).")


def rigorous_positions(lm, sizes: Sizes) -> Finding:
    """Equal-size sets, the measured position apart: the token before the answer position (1 token, the nearest
    answer-side token that is not measured) vs BOS (1 token; the first token where the tokenizer adds none),
    plus the measured position itself reported separately (large by construction). Same sample and the same
    residual zeroing as the seed protocol, so a disagreement is due to the position sets alone."""
    pre = seed_atlas(lm, sizes, positions=[-2])
    bos = seed_atlas(lm, sizes, positions="first")  # == the BOS token where the tokenizer adds one
    measured = seed_atlas(lm, sizes, positions="answer")
    pm, cm = _position_profile(measured)
    bos_text = "the BOS token" if _adds_bos(lm) else "the first token (this tokenizer adds no BOS)"
    return _pos_finding("rigorous", pre, bos,
                        f"Rigorous protocol: residual zeroing of one position each: the token before the measured "
                        f"position vs {bos_text}; "
                        f"the measured position alone: {pm.mean():.4g} (reported, not compared: it is the "
                        f"position whose output is measured). {_sample_text(sizes, measured)}",
                        extra={"measured_position_effect": float(pm.mean()),
                               "measured_position_profile": pm.tolist(), "bos_is_real_bos": _adds_bos(lm)},
                        extra_ci={"measured_position_effect": _ci(cm)})


def _sample_text(sizes: Sizes, a: Atlas) -> str:
    return f"First {sizes.seed_per_family}/family ({a.n_examples} prompts), the seed protocol's sample."


def _adds_bos(lm) -> bool:
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = lm.tokenizer("probe")["input_ids"]
    return bool(ids) and ids[0] == bos


def positions_contrast(seed: Finding, rigorous: Finding) -> None:
    contrast(seed, rigorous,
             f"the seed's 'answer' set has 3 positions and includes the measured one (effect of the measured "
             f"position alone: {rigorous.figures['measured_position_effect']:.4g}); with one non-measured "
             f"answer-side token against one BOS token the answer side is larger at "
             f"{rigorous.figures['layers_answer_dominates']}/{rigorous.figures['n_layers']} layers")


# --------------------------------------------------------------------------------------------- ABL-MEAN


def residual_mean_ratios(lm, examples, batch_size: int = 16) -> dict[str, list[float]]:
    """Per layer, ||mean residual|| / mean ||residual|| over real tokens: all tokens (as a single pool), and per
    position class (first token, body, answer position) - the first token often carries a huge constant vector.
    """
    examples = by_length(lm, examples)
    batch = encode(lm, examples, template=TEMPLATE)
    sites = [Site("resid", l) for l in range(lm.n_layers)]
    sums = {k: np.zeros((lm.n_layers, lm.d_model)) for k in ("all", "first", "body", "answer")}
    norms = {k: np.zeros(lm.n_layers) for k in sums}
    counts = dict.fromkeys(sums, 0)
    for chunk in batch.chunks(batch_size):
        got = capture(lm, chunk, sites)
        cls = chunk.class_ids()
        masks = {"all": cls >= 0, "first": cls == 0, "body": cls == 1, "answer": cls == 2}
        for key, mask in masks.items():
            counts[key] += int(mask.sum())
            for l, s in enumerate(sites):
                v = got[s].values.double().cpu()[mask]
                sums[key][l] += v.sum(0).numpy()
                norms[key][l] += v.norm(dim=-1).sum().item()
    return {k: [float(np.linalg.norm(sums[k][l] / max(counts[k], 1)) / max(norms[k][l] / max(counts[k], 1), 1e-30))
                for l in range(lm.n_layers)] for k in sums}


def seed_mean_ablation_effects(lm, examples) -> tuple[list[float], int, int]:
    """The seed's "mean ablation" as it ran: the hook's mean branch received no means and returned the hidden
    states unchanged. Returns (mean KL per layer, layers where the hook fired, layers where it changed anything).
    """
    examples = by_length(lm, examples)
    batch = encode(lm, examples, template=TEMPLATE)
    run = clean_run(lm, batch)
    layers = lm.adapter.layers(lm.model)
    effects, fired, changed = [], 0, 0

    def seed_hook(means=None):
        state = {"fired": False, "changed": False}

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            state["fired"] = True
            if means is None:  # the seed's branch: nothing passed in -> return the input unchanged
                new = hidden
            else:
                new = means.to(hidden.dtype).expand_as(hidden)
            state["changed"] = not torch.equal(new, hidden)
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook, state

    with torch.no_grad():
        for l in range(lm.n_layers):
            hook, state = seed_hook(None)
            handle = layers[l].register_forward_hook(hook)
            try:
                edited = run.rerun(start=l)  # the clean suffix from layer l, under the seed's own hook
            finally:
                handle.remove()
            fired += int(state["fired"])
            changed += int(state["changed"])
            effects.append(float(metrics.kl(run.logits, edited).mean()))
    return effects, fired, changed


def _rho(a, b) -> float | None:
    r, _ = stats.spearman(a, b)
    return None if not np.isfinite(r) else r


def _abl_parts(ratio: float, mean_max: float, rho_min: float | None, destructive: float | None,
               params: Mapping[str, Any]) -> dict[str, bool]:
    return {
        "near_zero_mean": ratio < params["near_zero_mean_ratio"],
        "mean_ablation_all_zero": mean_max <= params["zero_effect_tolerance"],
        "zero_ablation_valid": (rho_min is not None and rho_min >= params["rank_rho_threshold"]
                                and destructive is not None and destructive <= params["destructive_ratio"]),
    }


def _parts_text(parts: Mapping[str, bool]) -> str:
    held = [k for k, v in parts.items() if v]
    failed = [k for k, v in parts.items() if not v]
    return f"Parts that hold: {', '.join(held) or 'none'}; parts that do not: {', '.join(failed) or 'none'}."


def seed_protocol_mean_ablation(lm, sizes: Sizes, params: Mapping[str, Any]) -> Finding:
    """The seed: "mean" ablation returned its input (all effects exactly 0), zero ablation = residual zeroing,
    residual mean taken over all tokens."""
    sample = first_examples(sizes.seed_per_family)
    effects, fired, changed = seed_mean_ablation_effects(lm, sample[: sizes.noop_examples])
    zero = seed_atlas(lm, sizes)
    ratios = residual_mean_ratios(lm, sample, sizes.batch_size)
    ratio = float(np.median(ratios["all"]))
    zero_profile = np.asarray(zero.layer_effect)
    mean_max = float(np.max(np.abs(effects)))
    rho = _rho(zero_profile, effects)
    parts = _abl_parts(ratio, mean_max, rho, None, params)
    figures = {"mean_ablation_effect": mean_max, "mean_hook_fired_layers": fired,
               "mean_hook_changed_layers": changed, "residual_mean_ratio": ratio,
               "residual_mean_ratio_per_layer": ratios["all"], "zero_effects": zero_profile.tolist(),
               "rank_rho_zero_mean": rho, "parts": parts, "n_examples": zero.n_examples}
    notes = [f"Seed protocol: the 'mean' hook fired at {fired}/{lm.n_layers} layers and changed the activations at "
             f"{changed} (no means were passed: it returned its input), so every mean-ablation effect is at most "
             f"{mean_max:.3g} (float noise of re-running the same layers) and no rank order exists to compare; zero "
             f"ablation = residual zeroing (first {sizes.seed_per_family}/family, {zero.n_examples} prompts; no-op "
             f"check on {min(len(sample), sizes.noop_examples)} prompts); "
             f"residual mean over all tokens: median ||mean||/mean||x|| = {ratio:.3g}. " + _parts_text(parts)]
    holds = all(parts.values())
    return Finding("seed", figures, holds=holds, seeds=[SEEDS[0]], notes=notes, suite_hash=zero.suite_hash)


def rigorous_mean_ablation(lm, sizes: Sizes, params: Mapping[str, Any], seed: int = SEEDS[0]) -> Finding:
    """Real mean ablation (per layer and position class over the sample), resample and noise, against zero
    (layer-contribution) ablation on the same prompts; residual mean norm per position class; Spearman rank
    order of the layer profiles. Runs on the NL stratified sample (short prompts; the HUB-NL zero atlas is reused).
    """
    profiles = {m: np.asarray(rigorous_atlas(lm, sizes, seed, suite="nl", method=m).layer_effect)
                for m in ablation_methods.names()}  # every registered method (built-ins: zero, mean, resample, noise)
    sample = stratified_sample(seed, sizes.nl_per_family, suite="nl")
    ratios = residual_mean_ratios(lm, sample, sizes.batch_size)
    # the first token is one vector per prompt (often a near-constant attention sink): judged apart
    body_ratio = float(np.median(ratios["body"]))
    mean_max = float(profiles["mean"].max())
    rhos = {m: _rho(profiles["zero"], profiles[m]) for m in profiles if m != "zero"}
    rho_min = None if rhos["mean"] is None or rhos["resample"] is None else min(rhos["mean"], rhos["resample"])
    destructive = float(profiles["zero"].sum() / profiles["mean"].sum()) if profiles["mean"].sum() > 0 else None
    parts = _abl_parts(body_ratio, mean_max, rho_min, destructive, params)
    figures = {"mean_ablation_effect": mean_max, "residual_mean_ratio": body_ratio,
               "residual_mean_ratio_first": float(np.median(ratios["first"])),
               "residual_mean_ratio_answer": float(np.median(ratios["answer"])),
               "residual_mean_ratio_all": float(np.median(ratios["all"])),
               "residual_mean_ratio_per_layer": ratios["body"],
               "rank_rho_zero_mean": rhos["mean"], "rank_rho_zero_resample": rhos["resample"],
               "rank_rho_zero_noise": rhos["noise"], "zero_over_mean_effect": destructive,
               "effects": {m: p.tolist() for m, p in profiles.items()},
               "top_layer": {m: int(np.argmax(p)) for m, p in profiles.items()}, "parts": parts,
               "n_examples": len(sample)}
    notes = [f"Rigorous protocol: layer-contribution ablation by zero / mean (per position class over the sample) / "
             f"resample (another prompt's activation) / noise (Gaussian at the activation's std) on {len(sample)} NL "
             f"prompts ({sizes.nl_per_family}/family, seed {seed}). Residual ||mean||/mean||x|| (median over layers): "
             f"body {body_ratio:.3g}, first token {figures['residual_mean_ratio_first']:.3g}, all tokens pooled "
             f"{figures['residual_mean_ratio_all']:.3g}. Mean-ablation max effect {mean_max:.4g}; Spearman vs zero: "
             + ", ".join(f"{m} {('n/a' if r is None else f'{r:.2f}')}" for m, r in rhos.items())
             + (f"; zero/mean total effect {destructive:.3g}" if destructive is not None else "") + ". "
             + _parts_text(parts)]
    return Finding("rigorous", figures, holds=all(parts.values()), seeds=[seed], notes=notes)


def mean_ablation_contrast(seed: Finding, rigorous: Finding) -> None:
    contrast(seed, rigorous,
             f"the seed's mean ablation changed nothing (hook changed {seed.figures['mean_hook_changed_layers']} "
             f"layers), so its 'all-zero effects' follow from the no-op; real mean ablation gives up to "
             f"{rigorous.figures['mean_ablation_effect']:.4g} nats")


# --------------------------------------------------------------------------------------------- SKIP-ALL


def skip_configs(n_layers: int, singles: int | None = None) -> dict[str, list[int]]:
    """Named skip configurations: single layers (all, or ``singles`` spread over depth), the early / middle /
    late third, the middle 5 layers, and every other layer (odd layers)."""
    third = n_layers // 3
    mid = n_layers // 2
    if singles is None or singles >= n_layers:
        single_layers = list(range(n_layers))
    else:
        single_layers = sorted({round(i * (n_layers - 1) / (singles - 1)) for i in range(singles)})
    configs = {f"skip_L{l}": [l] for l in single_layers}
    configs.update({
        "skip_early_third": list(range(0, third)),
        "skip_mid_third": list(range(third, 2 * third)),
        "skip_late_third": list(range(n_layers - third, n_layers)),
        "skip_mid_5": list(range(max(0, mid - 2), min(n_layers, mid + 3))),
        "skip_every_other": list(range(1, n_layers, 2)),
    })
    return configs


@torch.no_grad()
def skip_overlaps(lm, examples, configs: Mapping[str, Sequence[int]], component: str, k: int = 5,
                  batch_size: int = 16) -> dict[str, float]:
    """Mean top-k next-token overlap with the full model (answer position) per skip configuration.

    ``component="resid"``: the seed's skip (the residual after each skipped layer is zeroed; the layers still
    run). ``"layer"``: the layer's contribution is removed (output := input), i.e. the layer is skipped.
    """
    examples = by_length(lm, examples)
    batch = encode(lm, examples, template=TEMPLATE)
    sums = dict.fromkeys(configs, 0.0)
    for chunk in batch.chunks(batch_size):
        run = clean_run(lm, chunk)
        for name, layers in configs.items():
            layers = sorted(layers)
            first = Ablate(component, layers[0])
            hidden, trace = edit_residual(lm, run, first)
            if not trace.changed[0]:
                raise InterventionError(f"skip {name}: the first edit changed nothing")
            rest = [Ablate(component, l) for l in layers[1:]]
            edited = run_from(lm, run, layers[0] + 1, hidden, *rest)
            sums[name] += float(metrics.topk_overlap(run.logits, edited, k).sum())
    return {name: round(total / len(batch), 6) for name, total in sums.items()}  # float sums of k-ths


def _skip_finding(protocol: str, overlaps: Mapping[str, float], keep_threshold: float, text: str,
                  n: int) -> Finding:
    worst = max(overlaps, key=overlaps.get)
    figures = {"max_top5_overlap": overlaps[worst], "max_config": worst, "overlaps": dict(overlaps),
               "configs_keeping_1of5": [c for c, v in overlaps.items() if v >= keep_threshold], "n_examples": n}
    notes = [f"{text} Highest mean top-5 overlap: {overlaps[worst]:.2f} ({worst}); configurations keeping >= "
             f"{keep_threshold:g} (1 of 5): {len(figures['configs_keeping_1of5'])}/{len(overlaps)}."]
    return Finding(protocol, figures, holds=overlaps[worst] < keep_threshold, seeds=[SEEDS[0]], notes=notes)


def _skip_protocol(lm, sizes: Sizes, keep_threshold: float, protocol: str, component: str) -> Finding:
    """SKIP-ALL under one protocol: the same prompts and configurations, only the skip operation differs."""
    sample = first_examples(sizes.seed_per_family)
    configs = skip_configs(lm.n_layers, sizes.skip_single_layers)
    overlaps = skip_overlaps(lm, sample, configs, component, batch_size=sizes.batch_size)
    if protocol == "seed":
        notes = (f"Seed protocol: 'skip' zeroes the residual after each skipped layer (the layers still "
                 f"run); first {sizes.seed_per_family}/family ({len(sample)} prompts), {len(configs)} "
                 "configurations.")
    else:
        notes = (f"Rigorous protocol: skipping = removing the layer's contribution (output := input), same "
                 f"{len(sample)} prompts and {len(configs)} configurations as the seed protocol, so a "
                 "disagreement is due to the skip operation alone.")
    return _skip_finding(protocol, overlaps, keep_threshold, notes, len(sample))


def seed_protocol_skip(lm, sizes: Sizes, keep_threshold: float) -> Finding:
    return _skip_protocol(lm, sizes, keep_threshold, "seed", "resid")


def rigorous_skip(lm, sizes: Sizes, keep_threshold: float) -> Finding:
    return _skip_protocol(lm, sizes, keep_threshold, "rigorous", "layer")


def skip_contrast(seed: Finding, rigorous: Finding) -> None:
    contrast(seed, rigorous,
             f"zeroing the residual (seed) destroys the prompt, so no configuration can keep a top-5 token "
             f"(max overlap {seed.figures['max_top5_overlap']:.2f}); actually skipping the layers keeps up to "
             f"{rigorous.figures['max_top5_overlap']:.2f} ({rigorous.figures['max_config']})")
