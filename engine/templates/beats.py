"""``beats``: "steering at the best layer beats steering at the hub-only guess" (STEER-ALL).

Measures the model's steering study (every layer x scale, a difference-of-means direction, select and held-out
prompts; the seed's own procedure beside it). Rule (:func:`engine.studies.steer.gap_rule`): on held-out prompts
the per-prompt gap best - guess has CI > 0: CONFIRMED; equivalent within ``delta``: FAILED; else INCONCLUSIVE.
The sweep's heatmaps go to ``<results>/steer``.
"""

from __future__ import annotations

from engine.studies import steer
from engine.templates import Template, register


@register
class Beats(Template):
    name = "beats"
    block = "steer"
    measures = "the steering study (every layer x scale; select / held-out prompts)"
    rule = "held-out gap best layer - guess layer CI > 0; within delta: FAILED"

    def specs(self, ctx):
        return {"study": steer.steer_spec(ctx.model, ctx.tier, ctx.params, ctx.plan, ctx.seed_figures)}

    def decide(self, ctx, m):
        spec = self.specs(ctx)["study"]
        return steer.steer_all_findings(m["study"], spec.sizes, ctx.settings.output("steer"), ctx.params, ctx.model)
