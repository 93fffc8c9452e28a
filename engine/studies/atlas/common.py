"""What the atlas claims share: sizes (plans data), samples, the protocols' atlases, ties and hub readings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from engine import plans, stats, tasks
from engine.atlas import Atlas, atlas
from engine.studies.findings import Finding, StudyError, contrast, require  # noqa: F401 (re-exported)

SEEDS: tuple[int, ...] = (42, 137, 256)


TEMPLATE = "none"


SPLIT = "short"  # the seed's hub runs used short templated prompts


TIE_RTOL = 1e-6  # top-two effects equal to this relative precision are an exact tie (argmax = first index)


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
    name: str = plans.DEFAULT_PLAN  # the plan these sizes come from (engine/data/plans.toml)


def sizes_for(tier: str, params: Mapping[str, Any] | None = None) -> Sizes:
    """The tier's sizes (any tier but ``gpu`` reads the cpu plan) from ``engine/data/plans.toml``, with a claim's
    ``[claim.params]`` size overrides (:func:`engine.plans.override`)."""
    return plans.load("atlas", Sizes, "gpu" if tier == "gpu" else "cpu", params)


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
                      split: str | None = SPLIT) -> list[tasks.Example]:
    """The rigorous protocol's sample for one seed: ``per_family`` examples drawn per family with that seed."""
    if isinstance(suite, str) and suite == "nl":
        split = None  # the NL suite has its own split
    return tasks.sample(families=families, per_family=per_family, seed=seed, suite=suite, split=split)


def by_length(lm, examples: Sequence[tasks.Example]) -> list[tasks.Example]:
    """Examples sorted by rendered token length (stable), so consecutive batches carry little padding."""
    lengths = [len(tasks.render(lm.tokenizer, ex, TEMPLATE).input_ids) for ex in examples]
    return [ex for _, _, ex in sorted(zip(lengths, range(len(examples)), examples), key=lambda t: t[:2])]


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


def top_two_tie(values) -> bool:
    """The two largest of ``values`` are equal (to ``TIE_RTOL``): an argmax over them is an artefact of index
    order."""
    top = np.sort(np.asarray(values, dtype=float).reshape(-1))[::-1]
    return bool(len(top) > 1 and abs(top[0] - top[1]) <= TIE_RTOL * max(abs(top[0]), 1e-12))


def exact_tie(a: Atlas, family: str | None = None) -> bool:
    """Top-two layer effects of the atlas (or of one ``family``'s profile) are an exact tie."""
    return top_two_tie(a.layer_effect if family is None else a.effects[family])


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


def ci_pair(interval: stats.Interval) -> tuple[float, float]:
    return (float(interval.low), float(interval.high))


def erasing_note(a: Atlas) -> str:
    if not a.information_erasing:
        return ""
    flat = np.asarray(a.layer_effect)
    return (f"Residual zeroing is information-erasing here: ablated outputs of unrelated prompts coincide at "
            f"{len(a.erasing_layers)}/{len(a.layers)} layers, and the layer effects span only "
            f"[{flat.min():.4g}, {flat.max():.4g}] nats (a bias-free model's zeroed residual stays zero, so the "
            f"logits become uniform and every layer gives the same KL).")


Loader = Callable[[str], Any]
