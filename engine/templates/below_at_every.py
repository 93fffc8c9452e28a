"""``below_at_every``: "no skip configuration keeps ``keep_threshold`` of the full model's top-5 tokens"
(SKIP-ALL).

Measures the per-prompt top-5 overlap with the full model under every skip configuration (single layers, thirds,
the middle 5, every other layer): the seed's skip (residual zeroing, first k per family) and the rigorous one
(contribution removal, seed 42's sample). Rule (:func:`engine.decisions.for_every` on ``keep_threshold -
overlap``, bounded values: the betting interval where they do not vary, Holm): every configuration's CI below the
threshold: CONFIRMED; some configuration's CI wholly above it: FAILED; else INCONCLUSIVE. An information-erasing
configuration (unrelated prompts' skipped outputs coincide: the seed's residual zeroing) is a failed precondition:
INCONCLUSIVE unless the configurations that see the prompt decide FAILED.
"""

from __future__ import annotations

from engine.studies.atlas import skips
from engine.studies.atlas.common import sizes_for
from engine.templates import Template, register


@register
class BelowAtEvery(Template):
    name = "below_at_every"
    block = "atlas"
    staged = True
    measures = "top-5 overlap under every skip configuration, both protocols"
    rule = "every configuration's overlap CI below keep_threshold (Holm); one wholly above: FAILED"

    def specs(self, ctx):
        return skips.skip_specs(ctx.model, sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model))

    def decide(self, ctx, m):
        return skips.skip_findings(m, sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model), ctx.params)
