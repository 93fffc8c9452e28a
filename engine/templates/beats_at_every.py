"""``beats_at_every``: "ablating set A beats ablating set B at every layer" (POS-ANSWER: the answer positions
vs BOS).

Measures residual zeroing at each position set on the same prompts: the seed's classes (the last 3 prompt
positions vs position 0, first k per family) and the rigorous equal-size sets (the token before the measured
position vs BOS, seed 42's sample), the measured position alone reported. Rule
(:func:`engine.decisions.for_every`, Holm over layers): the paired CI of A - B is above 0 at every layer:
CONFIRMED; at some layer decided below ``delta``: FAILED; else INCONCLUSIVE.
"""

from __future__ import annotations

from engine.studies.atlas import positions
from engine.studies.atlas.common import sizes_for
from engine.templates import Template, register


@register
class BeatsAtEvery(Template):
    name = "beats_at_every"
    block = "atlas"
    staged = True
    measures = "residual zeroing at the answer-side and BOS position sets, both protocols"
    rule = "A - B CI > 0 at every layer (Holm); some layer below delta: FAILED"

    def specs(self, ctx):
        return positions.positions_specs(ctx.model, sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model))

    def decide(self, ctx, m):
        sizes = sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model)
        return positions.positions_findings(m, ctx.model, sizes, ctx.params)
