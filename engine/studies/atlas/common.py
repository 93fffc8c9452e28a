"""What the atlas claims share: sizes (plans data), samples, the protocols' atlases, ties and hub readings."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from engine import decisions as D
from engine import plans, tasks
from engine.atlas import Atlas, atlas, concat
from engine.planner import Need
from engine.studies.findings import Finding, StudyError, contrast, require  # noqa: F401 (re-exported)

SEEDS: tuple[int, ...] = (42, 137, 256)


TEMPLATE = "none"


SPLIT = "short"  # the seed's hub runs used short templated prompts


TIE_RTOL = 1e-6  # top-two effects equal to this relative precision are an exact tie (argmax = first index)


@plans.sizes_of("atlas")
@dataclass(frozen=True)
class Sizes:
    """Sample sizes of one tier.

    ``seed_per_family``: the seed protocol's "first k examples per family" (the seed: 5).
    ``rigorous_per_family``: examples per family in each seed's stratified sample.
    ``nl_per_family``: natural-language prompts per family (the seed: 50+; every NL prompt is unique here).
    ``noop_examples``: examples used to show that the seed's "mean ablation" changed nothing.
    ``skip_single_layers``: how many single-layer skip configurations (spread over depth; None = every layer).
    ``name``: the plan of ``engine/data/plans.toml`` these sizes were read from (set by the loader).
    """

    seed_per_family: int = 5
    rigorous_per_family: int = 10
    nl_per_family: int = 50
    noop_examples: int = 12
    skip_single_layers: int | None = None
    n_resamples: int = 2000
    batch_size: int = 16
    families: tuple[str, ...] | None = None  # the families sampled (None: all 12); smoke: a fixed few
    layer_stride: int = 1  # ablate every k-th layer (and the last); 1: every layer. Smoke only: a cheaper sweep
    reported_per_family: int | None = None  # sweeps whose figures are reported beside a decision, never deciding
    # it (robustness: mean / resample; POS-ANSWER's measured position), on the first k per family of seed
    # SEEDS[0]'s sample (None: the whole sample); robustness compares with the zero atlas on the same prompts
    stages: tuple[int, ...] | None = None  # sequential looks: the rigorous sample's examples per family at each
    # look (nested samples; None: one look at rigorous_per_family); a claim stops at its first decided look
    breadth_per_family: int | None = None  # HUB-BREADTH's 4-family suite (tasks.BREADTH_FAMILIES) at one more
    # look after the last: its seed-42 sample grown to this many per family on those 4 families only (the first
    # rows are the 12-family sample's own; nested, so needs stages); None: the restriction of the 12-family sample
    name: str = plans.DEFAULT_PLAN  # the plan these sizes come from (engine/data/plans.toml)
    hub_delta: float | None = None  # the hub rules' smallest meaningful lead of the top layer (nats): a rule
    hub_delta_rationale: str | None = None  # threshold set by the claim's [claim.params], never by a plan

    def __post_init__(self):
        stages = self.stages
        if stages is not None and (not stages or list(stages) != sorted(set(stages))):
            raise plans.PlanError(f"plan {self.name!r}: stages {list(stages)}: expected strictly increasing examples "
                                  "per family")
        if self.breadth_per_family is not None and stages is None:
            raise plans.PlanError(f"plan {self.name!r}: breadth_per_family = {self.breadth_per_family}: needs stages "
                                  "(the 4-family suite grows past the 12-family sample's rows: nested samples)")

    @property
    def looks(self) -> tuple[int, ...]:
        """The rigorous sample's examples per family at each sequential look: the plan's stages below
        ``rigorous_per_family``, then ``rigorous_per_family`` itself (one look without stages)."""
        below = tuple(n for n in self.stages or () if n < self.rigorous_per_family)
        return below + (self.rigorous_per_family,)


def sizes_for(tier: str, params: Mapping[str, Any] | None = None, plan: str | None = None,
              model: str | None = None) -> Sizes:
    """The tier's sizes (any tier but ``gpu`` reads the cpu plan) from ``engine/data/plans.toml``; on the cpu tier
    the plan's own fields for ``model`` (``[plans.<plan>.cpu.atlas.per_model."<model>"]``; a "+"-joined group has
    none); then a claim's ``[claim.params]`` size overrides (:func:`engine.plans.override`); then, when the plan
    gives the atlas block a budget, its stages cut after the last look the budget buys on ``model``
    (:func:`engine.budget.cap_atlas`)."""
    sizes = plans.load("atlas", Sizes, "gpu" if tier == "gpu" else "cpu", params, plan=plan, model=model)
    if tier != "gpu" and model and "+" not in model:
        from engine import budget

        sizes = budget.cap_atlas(sizes, model)
    return sizes


SIZES: dict[str, Sizes] = {tier: sizes_for(tier) for tier in plans.TIERS}  # the default plan


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
                      split: str | None = SPLIT, nested: bool = False) -> list[tasks.Example]:
    """The rigorous protocol's sample for one seed: ``per_family`` examples drawn per family with that seed.
    ``suite``: "synthetic", "nl" or a user's prompts file (JSONL, ``tasks.load_prompts``: every split)."""
    if isinstance(suite, str) and suite not in tasks.SUITES:
        suite, split = tasks.load_prompts(suite), None  # a user's prompts file (checked by engine.claims_file)
    elif isinstance(suite, str) and suite == "nl":
        split = None  # the NL suite has its own split
    return tasks.sample(families=families, per_family=per_family, seed=seed, suite=suite, split=split, nested=nested)


def by_length(lm, examples: Sequence[tasks.Example]) -> list[tasks.Example]:
    """Examples sorted by rendered token length (stable), so consecutive batches carry little padding."""
    lengths = [len(tasks.render(lm.tokenizer, ex, TEMPLATE).input_ids) for ex in examples]
    return [ex for _, _, ex in sorted(zip(lengths, range(len(examples)), examples), key=lambda t: t[:2])]


def swept_layers(lm, sizes: Sizes) -> list[int] | None:
    """The layers a sweep ablates: every layer (None), or every ``layer_stride``-th and the last."""
    if sizes.layer_stride <= 1:
        return None
    return sorted(set(range(0, lm.n_layers, sizes.layer_stride)) | {lm.n_layers - 1})


def _atlas(lm, examples, sizes: Sizes, **kwargs) -> Atlas:
    kwargs.setdefault("layers", swept_layers(lm, sizes))
    return atlas(lm, by_length(lm, examples), template=TEMPLATE, cache=True, batch_size=sizes.batch_size,
                 n_resamples=sizes.n_resamples, **kwargs)


@dataclass(frozen=True)
class AtlasSpec:
    """One atlas sweep a claim reads, on one model with its plan's sizes: which prompts and how they are ablated.

    ``sample``: ``"first"`` (the seed protocol's first k per family, in file order), ``"stratified"`` (seed
    ``seed``'s stratified sample) or ``"reported"`` (the first ``sizes.reported_per_family`` per family of seed
    ``SEEDS[0]``'s sample: sweeps reported beside a decision, never deciding it). ``method`` / ``component`` /
    ``positions`` as :func:`engine.atlas.atlas`. :attr:`need` is what the planner shows and shares;
    :meth:`measure` computes the atlas (cached by content, so every claim naming the same spec reads one sweep).
    """

    model: str
    sizes: Sizes
    sample: str = "stratified"
    seed: int = SEEDS[0]
    suite: str = "synthetic"
    per_family: int | None = None
    families: tuple[str, ...] | None = None
    method: str = "zero"
    component: str = "layer"
    positions: Any = "all"  # a position class, or a tuple of offsets
    beyond: int = 0  # a staged stratified sample's first ``beyond`` examples per family are left out (another spec
    # measured them): the rows a suite adds past a larger suite's sample (HUB-BREADTH's 4-family look)

    def __post_init__(self):
        if self.sample not in ("first", "stratified", "reported"):
            raise ValueError(f"AtlasSpec: unknown sample {self.sample!r}")
        if self.beyond and not (self.nested and 0 < self.beyond < (self.k or 0)):
            raise ValueError(f"AtlasSpec: beyond = {self.beyond} needs a staged stratified sample of more than that "
                             f"many per family (k = {self.k})")
        if isinstance(self.positions, list):
            object.__setattr__(self, "positions", tuple(self.positions))

    @property
    def k(self) -> int | None:
        """Examples per family."""
        s = self.sizes
        if self.sample == "first":
            return self.per_family or s.seed_per_family
        if self.sample == "reported" and s.reported_per_family is not None:
            return s.reported_per_family
        return self.per_family or (s.nl_per_family if self.suite == "nl" else s.rigorous_per_family)

    def examples(self) -> list[tasks.Example]:
        families = self.families or self.sizes.families
        if self.sample == "first":
            return first_examples(self.k, families, self.suite, None if self.suite == "nl" else SPLIT)
        if self.sample == "stratified":
            sample = stratified_sample(self.seed, self.k, families, self.suite, nested=self.nested)
            if not self.beyond:
                return sample
            skipped = {ex.id for ex in stratified_sample(self.seed, self.beyond, families, self.suite, nested=True)}
            return [ex for ex in sample if ex.id not in skipped]
        sample = stratified_sample(SEEDS[0], self.sizes.rigorous_per_family, self.sizes.families,
                                   nested=self.sizes.stages is not None)
        if self.sizes.reported_per_family is None:
            return sample
        taken: dict[str, int] = {}
        kept = []
        for ex in sample:
            if taken.get(ex.family, 0) < self.sizes.reported_per_family:
                taken[ex.family] = taken.get(ex.family, 0) + 1
                kept.append(ex)
        return kept

    @property
    def need(self) -> Need:
        n = (self.k - self.beyond) * len(self.families or self.sizes.families or tasks.FAMILIES)
        positions = str(list(self.positions)) if isinstance(self.positions, tuple) else self.positions
        if self.sample == "first":
            sample = f"seed first-k {self.suite}"
        elif self.sample == "reported" and self.sizes.reported_per_family is not None:
            sample = f"synthetic seed {SEEDS[0]} first {self.sizes.reported_per_family}/family"
        else:
            sample = f"{self.suite} seed {self.seed if self.sample == 'stratified' else SEEDS[0]}"
        if self.beyond:
            sample += f" {', '.join(self.families or ())} beyond {self.beyond}/family"
        return Need(self.model, "atlas", sample, n, f"{self.method}/{self.component}", positions)

    @property
    def nested(self) -> bool:
        """The plan grows this sample in stages (sequential looks): nested samples, computed stage by stage."""
        return self.sizes.stages is not None and self.sample == "stratified"

    def increments(self) -> list[list[tasks.Example]]:
        """The examples new at each stage up to this spec's n (one part: a sample that is not staged)."""
        examples = self.examples()
        if not self.nested:
            return [examples]
        bounds = [n for n in self.sizes.looks if self.beyond < n < self.k] + [self.k]
        parts, previous = [], self.beyond
        taken = {ex.id for ex in stratified_sample(self.seed, self.beyond, self.families or self.sizes.families,
                                                   self.suite, nested=True)} if self.beyond else set()
        for n in bounds:
            part = [ex for ex in stratified_sample(self.seed, n, self.families or self.sizes.families, self.suite,
                                                   nested=True) if ex.id not in taken]
            taken.update(ex.id for ex in part)
            parts.append(part)
            previous = n
        assert previous == self.k and sum(map(len, parts)) == len(examples)
        return parts

    def compute(self, lm) -> Atlas:
        """The atlas, through the content-addressed cache; a staged sample as one atlas per stage's new examples,
        concatenated (a larger stage computes only the prompts it adds)."""
        positions = list(self.positions) if isinstance(self.positions, tuple) else self.positions
        parts = [_atlas(lm, part, self.sizes, method=self.method, component=self.component, positions=positions,
                        measure="answer", seed=self.seed if self.sample == "stratified" else SEEDS[0])
                 for part in self.increments()]
        return parts[0] if len(parts) == 1 else concat(parts)

    def measure(self, load_model) -> Atlas:
        return self.compute(load_model(self.model))


def seed_spec(model: str, sizes: Sizes, *, suite="synthetic", families=None, per_family: int | None = None,
              positions: Any = "all") -> AtlasSpec:
    """The seed's layer ablation: zero the residual stream after each layer; KL at the last prompt position; the
    first k examples per family."""
    return AtlasSpec(model, sizes, "first", suite=suite, per_family=per_family,
                     families=tuple(families) if families else None, component="resid", positions=positions)


def rigorous_spec(model: str, sizes: Sizes, seed: int = SEEDS[0], *, suite="synthetic", families=None,
                  method: str = "zero", positions: Any = "all", per_family: int | None = None,
                  component: str = "layer", beyond: int = 0) -> AtlasSpec:
    """Layer-contribution ablation (output := input) on that seed's stratified sample; KL at the answer.

    Every claim that reads a model's seed-``seed`` atlas (HUB-Q05/Q15/Q3/SMOL, HUB-SEEDS, HUB-BREADTH, OWN-ATLAS,
    HUB-NL's synthetic side) names the same spec, so the content-addressed cache computes it once.
    ``component="resid"``: residual zeroing on the same stratified sample (POS-ANSWER's position sets)."""
    return AtlasSpec(model, sizes, "stratified", seed=seed, suite=suite, per_family=per_family,
                     families=tuple(families) if families else None, method=method, component=component,
                     positions=positions, beyond=beyond)


def reported_spec(model: str, sizes: Sizes, method: str = "zero", component: str = "layer",
                  positions: Any = "all") -> AtlasSpec:
    """A sweep reported beside a decision, never deciding it: on seed ``SEEDS[0]``'s sample, or on its first
    ``sizes.reported_per_family`` examples per family (in the sample's order)."""
    return AtlasSpec(model, sizes, "reported", method=method, component=component, positions=positions)


def seed_atlas(lm, sizes: Sizes, **kwargs) -> Atlas:
    """:func:`seed_spec` on a loaded model."""
    return seed_spec(lm.key, sizes, **kwargs).compute(lm)


def rigorous_atlas(lm, sizes: Sizes, seed: int = SEEDS[0], **kwargs) -> Atlas:
    """:func:`rigorous_spec` on a loaded model."""
    return rigorous_spec(lm.key, sizes, seed, **kwargs).compute(lm)


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
    return restrict_rows(a, rows)


def top_two_tie(values) -> bool:
    """The two largest of ``values`` are equal (to ``TIE_RTOL``): an argmax over them is an artefact of index
    order."""
    top = np.sort(np.asarray(values, dtype=float).reshape(-1))[::-1]
    return bool(len(top) > 1 and abs(top[0] - top[1]) <= TIE_RTOL * max(abs(top[0]), 1e-12))


def exact_tie(a: Atlas, family: str | None = None) -> bool:
    """Top-two layer effects of the atlas (or of one ``family``'s profile) are an exact tie."""
    return top_two_tie(a.layer_effect if family is None else a.effects[family])


def erasing_note(a: Atlas) -> str:
    if not a.information_erasing:
        return ""
    flat = np.asarray(a.layer_effect)
    return (f"Residual zeroing is information-erasing here: ablated outputs of unrelated prompts coincide at "
            f"{len(a.erasing_layers)}/{len(a.layers)} layers, and the layer effects span only "
            f"[{flat.min():.4g}, {flat.max():.4g}] nats (a bias-free model's zeroed residual stays zero, so the "
            f"logits become uniform and every layer gives the same KL).")


Loader = Callable[[str], Any]


# ------------------------------------------------------------------------------------------------ v2 decisions


def argmax_evidence(a: Atlas, claimed: int | None = None, label: str = "argmax layer", *,
                    delta: float = 0.0, rationale: str = "") -> D.Evidence:
    """Catalogue v3 "the argmax is layer L" on the atlas's per-example layer effects (families as strata): L beats
    every other layer in its paired test; ``claimed`` None asks "does an argmax layer exist". ``delta``: the hub
    rule's smallest meaningful lead ([claim.params] hub_delta). An exact tie where the atlas's erasure guard fired
    is a failed precondition (the method cannot separate layers), never evidence."""
    return D.argmax(a.per_example, a.example_families, claimed=claimed, units=a.layers, label=label, delta=delta,
                    rationale=rationale, erasing=a.information_erasing, n_resamples=a.n_resamples, seed=a.seed)


def argmax_of(ev: D.Evidence) -> int | None:
    """The layer an "argmax exists" evidence decided for (None: none decided)."""
    return int(ev.estimate) if ev.outcome is D.Outcome.FOR and ev.estimate is not None else None


def negate(ev: D.Evidence, label: str) -> D.Evidence:
    """The same evidence read for the opposite statement (``for`` <-> ``against``; undecided stays): e.g. "the
    4-family argmax is the 12-family layer" decided for is "the hubs differ" decided against. ``params.negated``
    says so, so that an offline recompute flips it back."""
    flip = {D.Outcome.FOR: D.Outcome.AGAINST, D.Outcome.AGAINST: D.Outcome.FOR}
    return replace(ev, outcome=flip.get(ev.outcome, ev.outcome), label=label,
                   statement=f"{label}: not ({ev.statement})", params={**ev.params, "negated": True})


def same_argmax(atlases: Mapping[str, Atlas], label: str, delta: float = 0.0,
                rationale: str = "") -> tuple[dict[str, D.Evidence], dict[str, D.Evidence]]:
    """"Every atlas has an argmax layer, and it is the same one" (HUB-SEEDS, HUB-NL, the cpu-tier hub rule).

    Returns (each atlas's "an argmax exists" evidence, the evidence that decides): an exact tie anywhere -> that
    tie (against: no single argmax); two atlases decided for different layers -> the later ones re-decided as
    "the argmax is the first one's layer" (against); else every atlas's evidence (all for: the same layer in
    all; some undecided: not decided).
    """
    exists = {k: argmax_evidence(a, label=f"{label} ({k})", delta=delta, rationale=rationale)
              for k, a in atlases.items()}
    ties = {k: e for k, e in exists.items() if e.outcome is D.Outcome.AGAINST}
    if ties:
        return exists, ties
    found = {k: argmax_of(e) for k, e in exists.items() if argmax_of(e) is not None}
    if len(set(found.values())) > 1:
        first = next(iter(found))
        ref = found[first]
        return exists, {k: argmax_evidence(atlases[k], claimed=ref, label=f"{label} ({k}) is L{ref}, the {first} "
                                                                            "argmax", delta=delta, rationale=rationale)
                        for k, layer in found.items() if layer != ref}
    return exists, exists


def argmax_figures(evidence: Mapping[str, D.Evidence]) -> dict[str, Any]:
    """Per atlas: the argmax layer, runner-up, P(argmax = best) and the outcome, for the record's figures."""
    return {k: {"argmax": e.estimate, "runner_up": e.details.get("runner_up"),
                "top_two_gap": e.details.get("top_two_gap"), "top_two_gap_ci": e.details.get("top_two_gap_ci"),
                "beaten": len(e.details.get("beaten") or []), "method": e.details.get("method"),
                "tied_units": e.details.get("tied_units"), "outcome": e.outcome.value, "n": e.n}
            for k, e in evidence.items()}


def evidence_text(evidence: Mapping[str, D.Evidence]) -> str:
    return "; ".join(e.statement + (f" [{e.undecided}]" if e.undecided else "") for e in evidence.values())


def aligned(a: Atlas, b: Atlas) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-example effects of two atlases of the same examples, rows in ``a``'s order (paired by example id)."""
    index = {ex: i for i, ex in enumerate(b.example_ids)}
    missing = [ex for ex in a.example_ids if ex not in index]
    if missing or len(a.example_ids) != len(b.example_ids):
        raise ValueError(f"aligned: the atlases were not measured on the same examples ({missing[:3]} ...)")
    rows = [index[ex] for ex in a.example_ids]
    return a.per_example, b.per_example[rows], list(a.example_families)


def argmax_depths(a: Atlas) -> dict[str, float]:
    """Per example (by id): the depth fraction of that prompt's own argmax layer (OWN-ATLAS, HUB-MIGRATE). A prompt
    whose top two layers tie exactly has no argmax layer and is left out (an argmax over a tie would be its first
    index: a precondition, never a depth of 0)."""
    out = {}
    for ex, row in zip(a.example_ids, np.asarray(a.per_example)):
        if top_two_tie(row):
            continue
        out[ex] = float(a.layers[int(np.argmax(row))]) / max(a.n_layers - 1, 1)
    return out


# ------------------------------------------------------------------------------------------------ robustness

ROBUSTNESS_METHODS = ("mean", "resample")  # beside zero ablation of the contribution (seed SEEDS[0]'s sample)


def _argmax_figure(values: np.ndarray, groups: Sequence[str], a: Atlas, kl_argmax: int | None,
                   label: str) -> dict[str, Any]:
    """One robustness reading: the argmax rule ("an argmax exists") on other per-example values of the same
    prompts, and whether its layer is the KL atlas's argmax."""
    if values.shape[0] == 0:
        return {"n": 0, "argmax": None, "outcome": "undecided", "agrees_with_kl": None, "undecided": "no prompts"}
    ev = D.argmax(values, list(groups), units=a.layers, label=label, n_resamples=a.n_resamples, seed=a.seed)
    means = values.mean(0)
    return {"n": ev.n, "argmax": ev.estimate, "outcome": ev.outcome.value,
            "top_two_gap_ci": ev.details.get("top_two_gap_ci"),
            "layer_effects": [float(x) for x in means], "undecided": ev.undecided,
            "agrees_with_kl": None if ev.estimate is None or kl_argmax is None else int(ev.estimate) == kl_argmax}


def accuracy_figures(a: Atlas) -> dict[str, Any]:
    """Per family the share of prompts whose clean top-1 at the answer is the target's first token (the model
    answers), overall, and how many; empty where the atlas has no correctness data."""
    if a.correct is None:
        return {}
    correct, groups = np.asarray(a.correct, dtype=bool), np.asarray(a.example_families)
    return {"family_accuracy": {f: float(correct[groups == f].mean()) for f in a.families},
            "accuracy": float(correct.mean()) if len(correct) else None, "n_correct": int(correct.sum())}


def logit_profile(a: Atlas) -> np.ndarray | None:
    """[n_layers] the mean over families of the centred answer-logit drop (None: not measured)."""
    if a.logit_effect is None:
        return None
    from engine import stats

    m = np.asarray(stats.mean_over_families(a.logit_effect, a.example_families))
    return m if m.ndim == 1 else m.max(-1)


def robustness(a: Atlas, methods: Mapping[str, Atlas] | None = None) -> dict[str, Any]:
    """The catalogue's robustness figures of one rigorous atlas (figures beside the verdict, never deciding it):

    * ``logit_metric``: the argmax rule on the drop of the answer token's centred logit (logit-linear) beside KL;
    * ``family_accuracy``: per family, the share of prompts whose clean top-1 is the target's first token;
    * ``hub_on_correct``: the argmax rule on the correctly answered prompts only;
    * ``ablation_methods``: the argmax rule under ``methods`` (mean / resample of the contribution, same prompts);
    * ``template``: the prompt template the atlas used.
    Each reading says whether its argmax layer is the KL atlas's (``agrees_with_kl``).
    """
    kl = argmax_evidence(a, label="argmax layer (KL)")
    kl_argmax = None if kl.estimate is None else int(kl.estimate)
    out: dict[str, Any] = {"template": a.template, "metric": "kl_clean_vs_ablated_nats", "kl_argmax": kl_argmax,
                           "kl_outcome": kl.outcome.value}
    groups = np.asarray(a.example_families)
    if a.logit_effect is not None and a.correct is not None:
        out["logit_metric"] = {"metric": "centred_answer_logit_drop",
                               **_argmax_figure(a.logit_effect, groups, a, kl_argmax, "argmax layer (logit drop)")}
        correct = np.asarray(a.correct, dtype=bool)
        out.update(accuracy_figures(a))
        out["hub_on_correct"] = _argmax_figure(a.per_example[correct], groups[correct], a, kl_argmax,
                                               "argmax layer (correct prompts)")
    else:
        out["logit_metric"] = out["hub_on_correct"] = {"undecided": "not measured (atlas without logit data)"}
    out["ablation_methods"] = {}
    for method, other in (methods or {}).items():
        index = {ex: i for i, ex in enumerate(a.example_ids)}
        if any(ex not in index for ex in other.example_ids):
            raise ValueError(f"robustness: the {method} atlas was measured on other prompts")
        rows = [index[ex] for ex in other.example_ids]
        same = a if rows == list(range(a.n_examples)) else restrict_rows(a, rows)  # zero on the same prompts
        zero = argmax_evidence(same, label="argmax layer (KL, the same prompts)")
        reading = _argmax_figure(other.per_example, list(other.example_families), same,
                                 None if zero.estimate is None else int(zero.estimate),
                                 f"argmax layer ({method} ablation)")
        out["ablation_methods"][method] = {**reading, "zero_argmax_same_prompts": zero.estimate}
    return out


def restrict_rows(a: Atlas, rows: Sequence[int]) -> Atlas:
    """The atlas of the examples ``rows`` (in that order)."""
    data = a.to_json()
    data.update(example_ids=[a.example_ids[i] for i in rows], example_families=[a.example_families[i] for i in rows],
                per_example=a.per_example[list(rows)].tolist(),
                logit_effect=None if a.logit_effect is None else a.logit_effect[list(rows)].tolist(),
                correct=None if a.correct is None else [a.correct[i] for i in rows])
    return Atlas.from_json(data)


def reported_atlas(lm, sizes: Sizes, method: str = "zero", component: str = "layer", positions: Any = "all") -> Atlas:
    """:func:`reported_spec` on a loaded model."""
    return reported_spec(lm.key, sizes, method, component, positions).compute(lm)


def robustness_specs(model: str, sizes: Sizes) -> dict[str, AtlasSpec]:
    """The sweeps beside the default rigorous atlas (seed ``SEEDS[0]``'s sample): mean and resample ablation of the
    contribution on its first ``sizes.reported_per_family`` prompts per family (every claim reading that atlas
    names the same two specs: computed once)."""
    return {f"robustness {m}": reported_spec(model, sizes, m) for m in ROBUSTNESS_METHODS}


def robustness_figures(atlases: Mapping[str, Atlas], measured: Mapping[str, Any],
                       default: str | None = None) -> dict[str, dict[str, Any]]:
    """:func:`robustness` of each rigorous atlas; the one named ``default`` (measured on seed ``SEEDS[0]``'s
    default sample) also under the ablation methods of :func:`robustness_specs` (read from ``measured``). Other
    atlases report the KL-side figures only."""
    methods = {m: measured[f"robustness {m}"] for m in ROBUSTNESS_METHODS} if default is not None else {}
    return {name: robustness(a, methods if name == default else None) for name, a in atlases.items()}
