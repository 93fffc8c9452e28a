"""``argmax_differs``: "the hub of one measurement differs from another's" (HUB-BREADTH: the 4-family suite vs
the 12-family suite; HUB-CODER: a code-trained model vs its base model).

``between = "suites"``: one sweep per protocol, the narrow suite read as its families' rows; ``between =
"models"``: the target's first model (the coder) against its second (the base), one at a time. Rule
(:func:`~engine.studies.atlas.hubs.decide_differ`): both argmax layers exist and differ: CONFIRMED; the same
layer: FAILED; an argmax not decided (or a tie): INCONCLUSIVE. ``untested`` (a reason) on tiers without a pair.
"""

from __future__ import annotations

from engine.studies.atlas import hubs
from engine.studies.atlas.common import sizes_for
from engine.templates import Param, Template, register


@register
class ArgmaxDiffers(Template):
    name = "argmax_differs"
    block = "atlas"
    staged = True
    parameters = {
        "between": Param((str,), '"suites" (4 vs 12 families, one sweep) or "models" (first vs second model)',
                         required=True),
        "untested": Param((dict,), "tier -> why the claim cannot run there (e.g. no coder/base pair)", default={}),
    }
    measures = "suites: seed sweep + seed-42 atlas; models: each model's seed sweep and seed-42 atlas"
    rule = "both argmax layers exist and differ; the same layer: FAILED"

    def specs(self, ctx):
        if ctx.tier in ctx.arg("untested", self):
            return {}
        sizes = sizes_for(ctx.tier, ctx.params, ctx.plan)
        if ctx.arg("between", self) == "models":
            return hubs.coder_specs(ctx.models, sizes)
        return hubs.one_seed_specs(ctx.model, sizes)

    def decide(self, ctx, m):
        why = ctx.arg("untested", self).get(ctx.tier)
        if why:
            return hubs.untested(why)
        sizes = sizes_for(ctx.tier, ctx.params, ctx.plan)
        if ctx.arg("between", self) == "models":
            return hubs.coder_findings(m, ctx.models, sizes)
        return hubs.breadth_findings(m, sizes)
