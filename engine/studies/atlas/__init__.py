"""Measurement procedures of the atlas claims (block ``atlas``), each under the two protocols.

One module per group of claims: :mod:`.hubs` (HUB-*, OWN-ATLAS), :mod:`.positions` (POS-ANSWER),
:mod:`.ablation` (ABL-MEAN), :mod:`.skips` (SKIP-ALL); what they share (sizes, samples, the protocols' atlases,
ties, hub readings) is :mod:`.common`. Each claim's procedure returns ``(seed, rigorous)``
:class:`~engine.studies.findings.Finding` objects; the claim test records them with ``claims.plugin.record_both``.

Every claim of the block is measured twice:

* **seed protocol** - the seed research's own method, faithfully: the decoder layer's *output* (the whole
  residual stream after layer l) is zeroed; KL(clean || ablated) of the next-token distribution at the last
  prompt position; family effect = mean over the *first k examples* of the family in file order (the seed: 5);
  hub = argmax over layers of the mean over families; "seeds" only change random state, never the examples;
  position classes "bos" = the first prompt token and "answer" = the last three prompt positions; "mean
  ablation" as the seed ran it (no means were passed, so the hook returned its input); "skip" = residual
  zeroing of the skipped layers.
* **rigorous protocol** - the same question measured carefully: the layer's *contribution* is removed
  (``output := input``); stratified samples are drawn per seed (seeds change the data); equal-size position
  sets with the measured position reported on its own and a real BOS where the tokenizer adds one; real mean /
  resample / noise ablation; skipping a layer = removing its contribution.

Both protocols are decided by the same catalogue v2 rule through :mod:`engine.decisions` (``Finding.holds`` is an
``Evidence`` or a ``{part: Evidence}`` mapping, with the per-example data): "the argmax is layer L" re-selects the
argmax in every stratified resample (an exact tie is decisive: no single argmax, never argmax's first index);
"A > B" and "at every layer" are paired bootstrap CIs with Holm. A part the seed's method cannot test (stability
across seeds that never resample; a no-op mean hook) is named as not decided; below the rules' minimum n (10 per
family) every record is INCONCLUSIVE "below the rule's minimum n".

Robustness figures (catalogue v2, beside every rigorous atlas record, never deciding it: ``common.robustness``):
the argmax rule on the centred answer-logit drop beside KL, on the correctly answered prompts only, and under mean
and resample ablation of the contribution (seed 42's sample, or its first ``reported_per_family`` per family,
compared with zero on the same prompts), with the family accuracy and the template.

Every sweep a claim reads is an :class:`~.common.AtlasSpec` (or :class:`~.skips.SkipSpec`) named by the claim's
``*_specs`` function; its ``*_findings`` function decides on the measured results (``engine.templates`` runs them:
the planner reads the same specs). Atlases go through the engine's content-addressed cache, so an atlas shared by
several claims is computed once.
Sample sizes come from ``[plans.default.<tier>.atlas]`` in ``engine/data/plans.toml`` (:func:`sizes_for`).
"""

from __future__ import annotations

from engine.studies.findings import Finding, StudyError, contrast, require

from . import ablation, common, hubs, positions, skips
from .common import (
    SEEDS,
    SIZES,
    TEMPLATE,
    AtlasSpec,
    Sizes,
    argmax_evidence,
    argmax_of,
    by_length,
    exact_tie,
    first_examples,
    negate,
    reported_spec,
    reseeded,
    restrict,
    rigorous_spec,
    robustness,
    seed_spec,
    sizes_for,
    stratified_sample,
)
from .hubs import hub, hub_breadth, hub_nl, hub_seeds
from .skips import SkipSpec, skip_configs, skip_overlaps

__all__ = ["SEEDS", "SIZES", "TEMPLATE", "AtlasSpec", "Finding", "Sizes", "SkipSpec", "StudyError", "ablation",
           "argmax_evidence", "argmax_of", "by_length", "common", "contrast", "exact_tie", "first_examples", "hub", "hub_breadth", "hub_nl", "hub_seeds", "hubs",
           "negate", "positions", "reported_spec", "require", "reseeded", "restrict", "rigorous_spec", "robustness",
           "seed_spec", "sizes_for", "skip_configs", "skip_overlaps", "skips", "stratified_sample"]
