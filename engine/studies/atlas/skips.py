"""SKIP-ALL: every layer is necessary (skipping any configuration keeps 0% of the top-5 tokens)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine import decisions as D
from engine import metrics, tasks
from engine.atlas import ERASE_RATIO, erase_pairs, pair_js
from engine.cache import measured as cached_measurement
from engine.interventions import (
    Ablate,
    InterventionError,
    clean_run,
    edit_residual,
    encode,
    run_from,
)
from engine.planner import Need
from engine.studies.atlas.common import SEEDS, TEMPLATE, Sizes, by_length, first_examples, stratified_sample
from engine.studies.findings import Finding, StudyError, contrast, require  # noqa: F401 (re-exported)
from engine.studies.specs import measure_on


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
                  batch_size: int = 16) -> tuple[dict[str, list[float]], list[str], dict[str, float | None]]:
    """Per-example top-k next-token overlap with the full model (answer position) per skip configuration, the
    examples' families (rows in token-length order), and per configuration the erasure guard's ratio (the
    Jensen-Shannon divergence of unrelated prompts' skipped outputs over that of their clean outputs, summed over
    the pairs of :func:`engine.atlas.erase_pairs`; None without a pair): below ``engine.atlas.ERASE_RATIO`` the
    skipped model answers every prompt alike, so its overlaps cannot show what the skipped layers did.

    ``component="resid"``: the seed's skip (the residual after each skipped layer is zeroed; the layers still
    run). ``"layer"``: the layer's contribution is removed (output := input), i.e. the layer is skipped.
    """
    examples = by_length(lm, examples)
    values, families, ratio = cached_measurement(
        "skip-overlaps", lm, examples, lambda: _skip_overlaps(lm, examples, configs, component, k, batch_size),
        configs={n: list(v) for n, v in configs.items()}, component=component, k=k, batch_size=batch_size,
        template=TEMPLATE, returns="overlaps, families, erase ratio")
    return values, families, ratio


def _skip_overlaps(lm, examples, configs, component, k, batch_size):
    batch = encode(lm, examples, template=TEMPLATE)
    values: dict[str, list[float]] = {name: [] for name in configs}
    js_clean, js_skipped = 0.0, {name: 0.0 for name in configs}
    for chunk in batch.chunks(batch_size):
        run = clean_run(lm, chunk)
        pairs = erase_pairs(chunk)
        if pairs:
            js_clean += float(pair_js(run.logits, pairs).sum())
        for name, layers in configs.items():
            layers = sorted(layers)
            first = Ablate(component, layers[0])
            hidden, trace = edit_residual(lm, run, first)
            if not trace.changed[0]:
                raise InterventionError(f"skip {name}: the first edit changed nothing")
            rest = [Ablate(component, l) for l in layers[1:]]
            edited = run_from(lm, run, layers[0] + 1, hidden, *rest)
            values[name].extend(float(x) for x in metrics.topk_overlap(run.logits, edited, k).tolist())
            if pairs:
                js_skipped[name] += float(pair_js(edited, pairs).sum())
    ratio = {name: (js / js_clean if js_clean > 0 and math.isfinite(js / js_clean) else None)
             for name, js in js_skipped.items()}  # None: no pair of unrelated prompts (or no clean divergence)
    return values, [ex.family for ex in examples], ratio


def decide_skip(protocol: str, overlaps: Mapping[str, Sequence[float]], groups: Sequence[str],
                params: Mapping[str, Any], text: str, erase_ratio: Mapping[str, float | None] | None = None) -> Finding:
    """SKIP-ALL (catalogue v3), a threshold claim per configuration on the per-example top-5 overlaps, Holm across
    configurations (:func:`engine.decisions.for_every` on ``keep_threshold - overlap`` with ``delta = 0``; the
    overlaps are bounded in [0, 1], so all-equal overlaps take the betting interval and overlaps still have a CI): every
    configuration's overlap CI below ``keep_threshold`` -> CONFIRMED; some configuration's overlap CI wholly above
    it -> FAILED; else INCONCLUSIVE.

    Catalogue v3's precondition: a configuration whose ``erase_ratio`` is below ``engine.atlas.ERASE_RATIO``
    (unrelated prompts' skipped outputs coincide: the seed's residual zeroing) is information-erasing, and one
    without a ratio (no pair of unrelated prompts was measured) is unchecked. Either can show an overlap of ~0 for an
    erased prompt rather than needed layers, so the record is INCONCLUSIVE, unless the rule over every configuration
    already decides against the claim at a configuration that was checked and sees the prompt (it keeps the
    threshold: FAILED)."""
    keep = params["keep_threshold"]
    ratio = dict(erase_ratio or {})
    erasing = sorted(n for n in overlaps if ratio.get(n) is not None and ratio[n] < ERASE_RATIO)
    unchecked = sorted(n for n in overlaps if ratio.get(n) is None)
    members = {name: ([keep - v for v in vals], groups) for name, vals in overlaps.items()}
    common = dict(delta=0.0, rationale=params["keep_threshold_rationale"], seed=SEEDS[0], bounds=(keep - 1.0, keep))
    label = f"{keep:g} - top-5 overlap, every skip configuration"
    holds = D.for_every(members, label=label, **common)
    blind = set(erasing) | set(unchecked)
    seen_against = holds.outcome is D.Outcome.AGAINST and any(
        kept and name not in blind for name, kept in holds.details["holm_against"].items())
    if blind and not seen_against:
        why = "; ".join(part for part in (
            _listed(erasing, len(members), f"information-erasing: unrelated prompts' skipped outputs coincide "
                                           f"(Jensen-Shannon ratio < {ERASE_RATIO:g})"),
            _listed(unchecked, len(members), "erasure guard not run (no pair of unrelated prompts)")) if part)
        holds = D.for_every(members, label=label, precondition=f"{why}: their top-5 overlaps may show an erased "
                                                                f"prompt, not needed layers", **common)
    means = {name: float(np.mean(vals)) for name, vals in overlaps.items()}
    worst = max(means, key=means.get)
    figures = {"max_top5_overlap": means[worst], "max_config": worst, "overlaps": means,
               "configs_keeping_1of5": [c for c, v in means.items() if v >= keep], "n_examples": len(groups),
               "erasing_configs": erasing, "unchecked_configs": unchecked, "erase_ratio": ratio}
    notes = [(f"{text} Highest mean top-5 overlap: {means[worst]:.2f} ({worst}); configurations keeping >= "
              f"{keep:g} (1 of 5) on average: {len(figures['configs_keeping_1of5'])}/{len(means)}. "
              f"{holds.statement}.")]
    return Finding(protocol, figures, holds=holds, seeds=[SEEDS[0]], notes=notes)


def _listed(names: Sequence[str], total: int, what: str) -> str:
    if not names:
        return ""
    return f"{what} at {len(names)}/{total} configurations ({', '.join(names[:6])}{' ...' if len(names) > 6 else ''})"


@dataclass(frozen=True)
class SkipSpec:
    """SKIP-ALL's sweep under one protocol: the seed's first k per family with residual zeroing (``"seed"``), or
    seed ``SEEDS[0]``'s stratified sample with the layers' contributions removed (``"rigorous"``); every skip
    configuration of :func:`skip_configs`. ``measure`` returns ``{"overlaps", "groups", "erase_ratio", "n_configs", "n"}``."""

    model: str
    sizes: Sizes
    protocol: str

    @property
    def component(self) -> str:
        return "resid" if self.protocol == "seed" else "layer"

    def examples(self):
        s = self.sizes
        if self.protocol == "seed":
            return first_examples(s.seed_per_family, s.families)
        return stratified_sample(SEEDS[0], s.rigorous_per_family, s.families, nested=s.stages is not None)

    @property
    def need(self) -> Need:
        s = self.sizes
        families = len(s.families or tasks.FAMILIES)
        if self.protocol == "seed":
            return Need(self.model, "skip-overlaps", "seed first-k synthetic", s.seed_per_family * families,
                        self.component)
        return Need(self.model, "skip-overlaps", f"synthetic seed {SEEDS[0]}", s.rigorous_per_family * families,
                    self.component)

    def measure(self, load_model) -> dict[str, Any]:
        lm = load_model(self.model)
        sample = self.examples()
        configs = skip_configs(lm.n_layers, self.sizes.skip_single_layers)
        overlaps, groups, ratio = skip_overlaps(lm, sample, configs, self.component, batch_size=self.sizes.batch_size)
        return {"overlaps": overlaps, "groups": groups, "erase_ratio": ratio, "n_configs": len(configs),
                "n": len(sample)}


def skip_specs(model: str, sizes: Sizes) -> dict[str, SkipSpec]:
    return {p: SkipSpec(model, sizes, p) for p in ("seed", "rigorous")}


def _skip_protocol(got: Mapping[str, Any], sizes: Sizes, params: Mapping[str, Any], protocol: str) -> Finding:
    n, n_configs = got["n"], got["n_configs"]
    if protocol == "seed":
        notes = (f"Seed protocol: 'skip' zeroes the residual after each skipped layer (the layers still "
                 f"run); first {sizes.seed_per_family}/family ({n} prompts), {n_configs} configurations.")
    else:
        notes = (f"Rigorous protocol: skipping = removing the layer's contribution (output := input), "
                 f"{sizes.rigorous_per_family}/family stratified (seed {SEEDS[0]}, {n} prompts), "
                 f"{n_configs} configurations.")
    return decide_skip(protocol, got["overlaps"], got["groups"], params, notes, got.get("erase_ratio"))


def skip_contrast(seed: Finding, rigorous: Finding) -> None:
    contrast(seed, rigorous,
             f"zeroing the residual (seed) destroys the prompt, so no configuration can keep a top-5 token "
             f"(max overlap {seed.figures['max_top5_overlap']:.2f}); actually skipping the layers keeps up to "
             f"{rigorous.figures['max_top5_overlap']:.2f} ({rigorous.figures['max_config']})")


def skip_findings(m: Mapping[str, Any], sizes: Sizes, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """SKIP-ALL on :func:`skip_specs`' measurements: no skip configuration keeps ``params["keep_threshold"]`` of
    the full model's top-5 tokens."""
    seed = _skip_protocol(m["seed"], sizes, params, "seed")
    rigorous = _skip_protocol(m["rigorous"], sizes, params, "rigorous")
    skip_contrast(seed, rigorous)
    return seed, rigorous


def skip_all(lm, sizes: Sizes, params: Mapping[str, Any]) -> tuple[Finding, Finding]:
    """:func:`skip_findings` on a model in hand (unit tests; a catalogue row runs through its template)."""
    return skip_findings(measure_on(lm, skip_specs(lm.key, sizes)), sizes, params)
