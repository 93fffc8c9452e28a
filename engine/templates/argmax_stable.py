"""``argmax_stable``: "the hub does not move across seeds that resample the prompts" (HUB-SEEDS).

Measures what ``argmax_is`` measures (the same specs: computed once). Rule (:func:`~engine.studies.atlas.hubs.
decide_hub_seeds`): every seed has an argmax layer and it is the same: CONFIRMED; two seeds decided for different
layers, or an exact tie: FAILED; else INCONCLUSIVE; seeds that do not resample (the seed protocol's) are a failed
precondition.
"""

from __future__ import annotations

from engine.studies.atlas import hubs
from engine.studies.atlas.common import SEEDS, sizes_for
from engine.templates import Param, Template, register


@register
class ArgmaxStable(Template):
    name = "argmax_stable"
    block = "atlas"
    staged = True
    parameters = {"seeds": Param((list,), "seeds that resample the prompts", default=list(SEEDS))}
    measures = "as argmax_is (shared)"
    rule = "one argmax layer in every seed and the same one; seeds must resample the prompts"

    def specs(self, ctx):
        sizes = sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model)
        return hubs.hub_specs(ctx.model, sizes, tuple(ctx.arg("seeds", self)), seed_protocol="seed" in ctx.protocols)

    def decide(self, ctx, m):
        sizes = sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model)
        return hubs.hub_seeds_findings(m, sizes, tuple(ctx.arg("seeds", self)))
