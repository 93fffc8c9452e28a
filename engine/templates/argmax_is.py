"""``argmax_is``: "the processing hub of the model is layer L, in every seed" (HUB-Q05/Q15/Q3/SMOL).

Measures, on each model: the seed protocol's residual-zeroing sweep (first k per family) and one rigorous
layer-contribution atlas per seed (fresh stratified samples), with the robustness sweeps beside seed 42's.
Rule (catalogue v3, :func:`engine.studies.atlas.hubs.decide_hub`): L beats every other layer in its paired
one-sided test in every seed (intersection-union): CONFIRMED; another layer leads, L's lead is decided below
``hub_delta`` or an exact tie (of a measurement that can see layers): FAILED; else INCONCLUSIVE. Without a layer
(``layer = "seed"`` on the cpu tier, where the seed measured other models) the rule is "an argmax layer exists,
the same in every seed".
"""

from __future__ import annotations

from engine.studies.atlas import hubs
from engine.studies.atlas.common import SEEDS, sizes_for
from engine.templates import ClaimContext, Param, Template, register


def claimed_layer(ctx: ClaimContext, template: Template) -> int | None:
    """The layer the row claims: an integer, or "seed" = the seed's ``hub_layer`` for this model (gpu tier only)."""
    layer = ctx.arg("layer", template)
    if layer == "seed":
        seed = ctx.seed_figures.get("hub_layer")
        return None if seed is None else int(seed)
    return int(layer)


def seeds_of(ctx: ClaimContext, template: Template) -> tuple[int, ...]:
    return tuple(ctx.arg("seeds", template))


@register
class ArgmaxIs(Template):
    name = "argmax_is"
    block = "atlas"
    parameters = {
        "layer": Param((int, str), 'the claimed hub layer, or "seed": the seed\'s figure (none on the cpu tier: '
                                   '"an argmax exists")', default="seed"),
        "seeds": Param((list,), "seeds that resample the prompts (one rigorous atlas each)", default=list(SEEDS)),
    }
    measures = "seed sweep (residual zeroing, first k/family) + one contribution-ablation atlas per seed"
    rule = "L beats every other layer in every seed (IUT, Holm for against; hub_delta); no layer: one argmax, same in every seed"

    def specs(self, ctx):
        return hubs.hub_specs(ctx.model, sizes_for(ctx.tier, ctx.params, ctx.plan), seeds_of(ctx, self))

    def decide(self, ctx, m):
        return hubs.hub_findings(m, sizes_for(ctx.tier, ctx.params, ctx.plan), claimed_layer(ctx, self),
                                 seeds_of(ctx, self))
