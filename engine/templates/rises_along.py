"""``rises_along``: "the hub depth rises along the models in scale order" (HUB-MIGRATE).

Measures each model's seed sweep and seed-42 contribution-ablation atlas (one model in memory at a time). Rule
(:func:`~engine.studies.atlas.hubs.decide_migration`): every model's hub decided and the depths rise by more than
``depth_delta`` at every step: CONFIRMED; every hub decided and some step does not: FAILED; a hub not decided:
INCONCLUSIVE. ``untested`` (a reason) on tiers with one model per family.
"""

from __future__ import annotations

from engine.studies.atlas import hubs
from engine.studies.atlas.common import sizes_for
from engine.templates import Param, Template, register


@register
class RisesAlong(Template):
    name = "rises_along"
    block = "atlas"
    parameters = {"untested": Param((dict,), "tier -> why the claim cannot run there", default={})}
    measures = "each model: seed sweep + seed-42 atlas"
    rule = "hub depths rise by > depth_delta at every step (each hub decided by argmax)"

    def specs(self, ctx):
        if ctx.tier in ctx.arg("untested", self):
            return {}
        return hubs.per_model_specs(ctx.models, lambda key: sizes_for(ctx.tier, ctx.params, ctx.plan, key))

    def decide(self, ctx, m):
        why = ctx.arg("untested", self).get(ctx.tier)
        if why:
            return hubs.untested(why)
        return hubs.migrate_findings(m, ctx.models, sizes_for(ctx.tier, ctx.params, ctx.plan), ctx.params)
