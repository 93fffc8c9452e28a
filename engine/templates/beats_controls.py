"""``beats_controls``: "the direction beats random and off-target directions of equal norm" (STEER-RANDOM).

Measures the model's steering study (shared with ``beats``). Rule (:func:`engine.studies.steer.control_rule`):
the direction's per-prompt effect CI is above the controls' ``random_percentile`` (random vectors; the other
families' directions) by ``control_delta``: CONFIRMED; below: FAILED; else INCONCLUSIVE. The seed never ran it.
"""

from __future__ import annotations

from engine.studies import steer
from engine.templates import Template, register


@register
class BeatsControls(Template):
    name = "beats_controls"
    block = "steer"
    measures = "the steering study (shared with beats): direction vs random and off-target controls"
    rule = "direction effect CI above the controls' percentile; below: FAILED"

    def specs(self, ctx):
        return {"study": steer.steer_spec(ctx.model, ctx.tier, ctx.params, ctx.plan, ctx.seed_figures)}

    def decide(self, ctx, m):
        return steer.steer_random_findings(m["study"], self.specs(ctx)["study"].sizes, ctx.params)
