"""SKIP-ALL: every layer is necessary (skipping any configuration keeps 0% of the top-5 tokens)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from engine import metrics
from engine.interventions import (
    Ablate,
    InterventionError,
    clean_run,
    edit_residual,
    encode,
    run_from,
)
from engine.studies.atlas.common import SEEDS, TEMPLATE, Sizes, by_length, first_examples
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


def skip_all(lm, sizes: Sizes, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """SKIP-ALL: no skip configuration keeps ``params["keep_threshold"]`` of the full model's top-5 tokens."""
    keep = params["keep_threshold"]
    seed, rigorous = seed_protocol_skip(lm, sizes, keep), rigorous_skip(lm, sizes, keep)
    skip_contrast(seed, rigorous)
    return seed, rigorous
