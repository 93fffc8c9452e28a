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
  (``output := input``); a hub exists only if its bootstrap CI of the gap to the runner-up lies above 0 (a tie
  is "no hub", never argmax's first index); stratified samples are drawn per seed (seeds change the data);
  bootstrap CIs everywhere; equal-size position sets with the measured position reported on its own and a
  real BOS where the tokenizer adds one; real mean / resample / noise ablation; skipping a layer = removing its
  contribution.

Atlases go through the engine's content-addressed cache, so an atlas shared by several claims is computed once.
Sample sizes come from ``[plans.default.<tier>.atlas]`` in ``engine/data/plans.toml`` (:func:`sizes_for`).
"""

from __future__ import annotations

from engine.studies.findings import Finding, StudyError, contrast, require

from .ablation import (
    abl_mean,
    mean_ablation_contrast,
    residual_mean_ratios,
    rigorous_mean_ablation,
    seed_mean_ablation_effects,
    seed_protocol_mean_ablation,
)
from .common import (
    SEEDS,
    SIZES,
    SPLIT,
    TEMPLATE,
    TIE_RTOL,
    HubReading,
    Loader,
    Sizes,
    by_length,
    ci_pair,
    erasing_note,
    exact_tie,
    first_examples,
    reseeded,
    restrict,
    rigorous_atlas,
    seed_atlas,
    sizes_for,
    stratified_sample,
    top_two_tie,
)
from .hubs import (
    code_moves_hub,
    hub,
    hub_breadth,
    hub_coder,
    hub_contrast,
    hub_migrate,
    hub_migration,
    hub_nl,
    hub_seeds,
    hub_seeds_contrast,
    nl_contrast,
    nl_suite_counts,
    own_atlas,
    own_atlas_finding,
    rigorous_breadth,
    rigorous_hub,
    rigorous_hub_seeds,
    rigorous_nl_agreement,
    seed_protocol_breadth,
    seed_protocol_hub,
    seed_protocol_hub_seeds,
    seed_protocol_nl_agreement,
)
from .positions import pos_answer, positions_contrast, rigorous_positions, seed_protocol_positions
from .skips import rigorous_skip, seed_protocol_skip, skip_all, skip_configs, skip_contrast, skip_overlaps

__all__ = [
    "Finding",
    "StudyError",
    "contrast",
    "require",
    "SEEDS",
    "TEMPLATE",
    "SPLIT",
    "TIE_RTOL",
    "Sizes",
    "sizes_for",
    "SIZES",
    "first_examples",
    "stratified_sample",
    "by_length",
    "seed_atlas",
    "rigorous_atlas",
    "reseeded",
    "restrict",
    "top_two_tie",
    "exact_tie",
    "HubReading",
    "ci_pair",
    "erasing_note",
    "Loader",
    "seed_protocol_hub",
    "rigorous_hub",
    "hub_contrast",
    "seed_protocol_hub_seeds",
    "rigorous_hub_seeds",
    "hub_seeds_contrast",
    "nl_suite_counts",
    "seed_protocol_nl_agreement",
    "rigorous_nl_agreement",
    "nl_contrast",
    "seed_protocol_breadth",
    "rigorous_breadth",
    "own_atlas_finding",
    "hub_migration",
    "code_moves_hub",
    "hub",
    "hub_coder",
    "hub_migrate",
    "hub_seeds",
    "hub_nl",
    "hub_breadth",
    "own_atlas",
    "seed_protocol_positions",
    "rigorous_positions",
    "positions_contrast",
    "pos_answer",
    "residual_mean_ratios",
    "seed_mean_ablation_effects",
    "seed_protocol_mean_ablation",
    "rigorous_mean_ablation",
    "mean_ablation_contrast",
    "abl_mean",
    "skip_configs",
    "skip_overlaps",
    "seed_protocol_skip",
    "rigorous_skip",
    "skip_contrast",
    "skip_all",
]
