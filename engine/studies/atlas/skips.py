"""SKIP-ALL: every layer is necessary (skipping any configuration keeps 0% of the top-5 tokens)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from engine import decisions as D
from engine import metrics
from engine.cache import measured as cached_measurement
from engine.interventions import (
    Ablate,
    InterventionError,
    clean_run,
    edit_residual,
    encode,
    run_from,
)
from engine.studies.atlas.common import SEEDS, TEMPLATE, Sizes, by_length, first_examples, stratified_sample
from engine.studies.findings import Finding, StudyError, contrast, require  # noqa: F401 (re-exported)


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
        "skip_early_third": list(range(third)),
        "skip_mid_third": list(range(third, 2 * third)),
        "skip_late_third": list(range(n_layers - third, n_layers)),
        "skip_mid_5": list(range(max(0, mid - 2), min(n_layers, mid + 3))),
        "skip_every_other": list(range(1, n_layers, 2)),
    })
    return configs


@torch.no_grad()
def skip_overlaps(lm, examples, configs: Mapping[str, Sequence[int]], component: str, k: int = 5,
                  batch_size: int = 16) -> tuple[dict[str, list[float]], list[str]]:
    """Per-example top-k next-token overlap with the full model (answer position) per skip configuration, and
    the examples' families (rows in token-length order).

    ``component="resid"``: the seed's skip (the residual after each skipped layer is zeroed; the layers still
    run). ``"layer"``: the layer's contribution is removed (output := input), i.e. the layer is skipped.
    """
    examples = by_length(lm, examples)
    return tuple(cached_measurement("skip-overlaps", lm, examples,
                                    lambda: _skip_overlaps(lm, examples, configs, component, k, batch_size),
                                    configs={n: list(v) for n, v in configs.items()}, component=component, k=k,
                                    batch_size=batch_size, template=TEMPLATE))


def _skip_overlaps(lm, examples, configs, component, k, batch_size) -> tuple[dict[str, list[float]], list[str]]:
    batch = encode(lm, examples, template=TEMPLATE)
    values: dict[str, list[float]] = {name: [] for name in configs}
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
            values[name].extend(float(x) for x in metrics.topk_overlap(run.logits, edited, k).tolist())
    return values, [ex.family for ex in examples]


def decide_skip(protocol: str, overlaps: Mapping[str, Sequence[float]], groups: Sequence[str],
                params: Mapping[str, Any], text: str) -> Finding:
    """SKIP-ALL (catalogue v3), a threshold claim per configuration on the per-example top-5 overlaps, Holm across
    configurations (:func:`engine.decisions.for_every` on ``keep_threshold - overlap`` with ``delta = 0``; the
    overlaps are bounded in [0, 1], so the interval is Hoeffding's and all-equal overlaps still have a CI): every
    configuration's overlap CI below ``keep_threshold`` -> CONFIRMED; some configuration's overlap CI wholly above
    it -> FAILED; else INCONCLUSIVE."""
    keep = params["keep_threshold"]
    members = {name: ([keep - v for v in vals], groups) for name, vals in overlaps.items()}
    holds = D.for_every(members, delta=0.0, rationale=params["keep_threshold_rationale"],
                        label=f"{keep:g} - top-5 overlap, every skip configuration", seed=SEEDS[0],
                        bounds=(keep - 1.0, keep))
    means = {name: float(np.mean(vals)) for name, vals in overlaps.items()}
    worst = max(means, key=means.get)
    figures = {"max_top5_overlap": means[worst], "max_config": worst, "overlaps": means,
               "configs_keeping_1of5": [c for c, v in means.items() if v >= keep], "n_examples": len(groups)}
    notes = [(f"{text} Highest mean top-5 overlap: {means[worst]:.2f} ({worst}); configurations keeping >= "
              f"{keep:g} (1 of 5) on average: {len(figures['configs_keeping_1of5'])}/{len(means)}. "
              f"{holds.statement}.")]
    return Finding(protocol, figures, holds=holds, seeds=[SEEDS[0]], notes=notes)


def _skip_protocol(lm, sizes: Sizes, params: Mapping[str, Any], protocol: str, component: str) -> Finding:
    """SKIP-ALL under one protocol: the seed's first k per family with residual zeroing, or the stratified sample
    with the layers' contributions removed."""
    if protocol == "seed":
        sample = first_examples(sizes.seed_per_family, sizes.families)
    else:
        sample = stratified_sample(SEEDS[0], sizes.rigorous_per_family, sizes.families)
    configs = skip_configs(lm.n_layers, sizes.skip_single_layers)
    overlaps, groups = skip_overlaps(lm, sample, configs, component, batch_size=sizes.batch_size)
    if protocol == "seed":
        notes = (f"Seed protocol: 'skip' zeroes the residual after each skipped layer (the layers still "
                 f"run); first {sizes.seed_per_family}/family ({len(sample)} prompts), {len(configs)} "
                 "configurations.")
    else:
        notes = (f"Rigorous protocol: skipping = removing the layer's contribution (output := input), "
                 f"{sizes.rigorous_per_family}/family stratified (seed {SEEDS[0]}, {len(sample)} prompts), "
                 f"{len(configs)} configurations.")
    return decide_skip(protocol, overlaps, groups, params, notes)


def seed_protocol_skip(lm, sizes: Sizes, params: Mapping[str, Any]) -> Finding:
    return _skip_protocol(lm, sizes, params, "seed", "resid")


def rigorous_skip(lm, sizes: Sizes, params: Mapping[str, Any]) -> Finding:
    return _skip_protocol(lm, sizes, params, "rigorous", "layer")


def skip_contrast(seed: Finding, rigorous: Finding) -> None:
    contrast(seed, rigorous,
             f"zeroing the residual (seed) destroys the prompt, so no configuration can keep a top-5 token "
             f"(max overlap {seed.figures['max_top5_overlap']:.2f}); actually skipping the layers keeps up to "
             f"{rigorous.figures['max_top5_overlap']:.2f} ({rigorous.figures['max_config']})")


def skip_all(lm, sizes: Sizes, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """SKIP-ALL: no skip configuration keeps ``params["keep_threshold"]`` of the full model's top-5 tokens."""
    seed, rigorous = seed_protocol_skip(lm, sizes, params), rigorous_skip(lm, sizes, params)
    skip_contrast(seed, rigorous)
    return seed, rigorous
