"""``argmax_same``: "natural-language prompts give the same hub as the synthetic suite" (HUB-NL).

Measures both suites under both protocols (seed 42's samples) and the robustness sweeps. Rule
(:func:`~engine.studies.atlas.hubs.decide_nl`): both suites have an argmax layer and it is the same: CONFIRMED;
both exist and differ: FAILED; else INCONCLUSIVE. The per-family agreement is a figure.
"""

from __future__ import annotations

from engine.studies.atlas import hubs
from engine.studies.atlas.common import sizes_for
from engine.templates import Template, register


@register
class ArgmaxSame(Template):
    name = "argmax_same"
    block = "atlas"
    measures = "synthetic and NL suites, seed sweep + contribution ablation (seed 42)"
    rule = "both suites' argmax layers exist and are equal; both exist and differ: FAILED"
    reads_rigorous_sample = True  # the synthetic suite is seed 42's stratified sample (a budget may cut it)

    def specs(self, ctx):
        return hubs.nl_specs(ctx.model, sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model))

    def decide(self, ctx, m):
        return hubs.nl_findings(m, sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model))
