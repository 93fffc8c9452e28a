"""``amplified_by``: "quantisation amplifies the steering KL" (QUANT-KL: NF4 vs bf16).

Measures one steering procedure at every precision of the plan (one set of loads, shared with QUANT-SPEED's
benchmark). Rule (:func:`engine.studies.quant.amplification_rule`): the per-prompt log ratio NF4 / bf16 at a
scale where bf16's KL is above its noise floor has CI above log(1 + ``delta``): CONFIRMED; below: FAILED; else
INCONCLUSIVE.
"""

from __future__ import annotations

from engine.studies import quant
from engine.templates import Template, register


@register
class AmplifiedBy(Template):
    name = "amplified_by"
    block = "quant"
    measures = "one steering procedure at every precision (fp32, bf16, fp16, NF4, int8)"
    rule = "per-prompt log KL ratio NF4/bf16 CI above log(1 + delta); below: FAILED"

    def specs(self, ctx):
        return {"study": quant.quant_spec(ctx.model, ctx.tier, ctx.params, ctx.plan)}

    def decide(self, ctx, m):
        return quant.quant_kl_findings(m["study"], ctx.params)
