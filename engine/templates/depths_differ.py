"""``depths_differ``: "each model needs its own atlas: the hub depths are not all equal" (OWN-ATLAS).

Measures each model's seed sweep and seed-42 contribution-ablation atlas with its own tier's sizes (the very
atlas the hub claims read). Rule (:func:`~engine.studies.atlas.hubs.decide_own_atlas`, catalogue v3
``differs``): for some pair of models the paired per-prompt argmax depth difference is two-sided decided
(Holm across pairs): CONFIRMED; every pair equivalent within ``depth_tolerance``: FAILED; else INCONCLUSIVE.
"""

from __future__ import annotations

from engine import models
from engine.studies.atlas import hubs
from engine.studies.atlas.common import sizes_for
from engine.templates import Template, register


@register
class DepthsDiffer(Template):
    name = "depths_differ"
    block = "atlas"
    staged = True
    measures = "each model: seed sweep + seed-42 atlas (its own tier's sizes)"
    rule = "some pair's per-prompt argmax depth difference decided (Holm); all within depth_tolerance: FAILED"

    def _sizes(self, ctx):
        return lambda key: sizes_for(models.spec_for(key).tier, ctx.params, ctx.plan, key)

    def specs(self, ctx):
        return hubs.per_model_specs(ctx.models, self._sizes(ctx))

    def decide(self, ctx, m):
        return hubs.own_atlas_findings(m, ctx.models, sizes_for(ctx.tier, ctx.params, ctx.plan), ctx.params)
