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

from engine.atlas import LAYER_COMPONENTS
from engine.studies.atlas import hubs
from engine.studies.atlas.common import SEEDS, sizes_for
from engine.templates import ClaimContext, Param, Template, TemplateError, register


def claimed_layer(ctx: ClaimContext, template: Template) -> int | None:
    """The layer the row claims: an integer, or "seed" = the seed's ``hub_layer`` for this model (gpu tier only)."""
    layer = ctx.arg("layer", template)
    if layer == "seed":
        seed = ctx.seed_figures.get("hub_layer")
        return None if seed is None else int(seed)
    return int(layer)


def seeds_of(ctx: ClaimContext, template: Template) -> tuple[int, ...]:
    return tuple(ctx.arg("seeds", template))


MEASURE_KEYS = {"kind": ("atlas",), "method": None, "component": LAYER_COMPONENTS}  # a hub is per layer


def check_measure(claim, template: Template, where: str) -> None:
    """``measure = { kind = "atlas", method = "<a registered ablation method>", component = "layer" | ... }``."""
    from engine.interventions import methods

    measure = claim.args.get("measure", {})
    for key, value in measure.items():
        allowed = MEASURE_KEYS.get(key, ())
        allowed = tuple(methods.names()) if key == "method" else allowed
        if value not in allowed:
            raise TemplateError(f"{where}: claim {claim.id}: measure.{key} = {value!r}: expected one of "
                                f"{', '.join(map(str, allowed)) or '(no such key: kind, method, component)'}")


def atlas_options(ctx: ClaimContext, template: Template) -> dict:
    """The rigorous atlas's suite, method and component from the row (``prompts.file``, ``measure``)."""
    measure = ctx.arg("measure", template)
    return {"suite": ctx.arg("prompts_file", template) or "synthetic", "method": measure.get("method", "zero"),
            "component": measure.get("component", "layer"), "seed_protocol": "seed" in ctx.protocols}


@register
class ArgmaxIs(Template):
    name = "argmax_is"
    block = "atlas"
    staged = True
    parameters = {
        "layer": Param((int, str), 'the claimed hub layer, or "seed": the seed\'s figure (none on the cpu tier: '
                                   '"an argmax exists")', default="seed"),
        "seeds": Param((list,), "seeds that resample the prompts (one rigorous atlas each)", default=list(SEEDS)),
        "measure": Param((dict,), "{ kind = \"atlas\", method = <ablation method>, component = \"layer\" | "
                                  "\"resid\" | ... } of the rigorous atlas", default={}),
        "prompts_file": Param((str,), "a user's prompts (JSONL; a claims file's prompts.file)", default=None),
    }
    measures = "seed sweep (residual zeroing, first k/family) + one contribution-ablation atlas per seed"
    rule = "L beats every other layer in every seed (IUT, Holm for against; hub_delta); no layer: one argmax, same in every seed"

    def check(self, claim, where):
        super().check(claim, where)
        check_measure(claim, self, where)
        layer = claim.args.get("layer", "seed")
        if isinstance(layer, str) and layer != "seed":
            raise TemplateError(f"{where}: claim {claim.id}: layer = {layer!r}: expected a layer index or \"seed\" "
                                "(the seed's own figure)")
        seeds = claim.args.get("seeds", [])
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
            raise TemplateError(f"{where}: claim {claim.id}: seeds = {seeds!r}: expected a list of integers")

    def check_models(self, claim, specs, where):
        layer = claim.args.get("layer", "seed")
        if layer != "seed" and not (isinstance(layer, int) and all(0 <= layer < s.n_layers for s in specs)):
            raise TemplateError(f"{where}: claim {claim.id}: layer = {layer!r}: beyond the model "
                                f"({', '.join(f'{s.key}: layers 0-{s.n_layers - 1}' for s in specs)})")

    def specs(self, ctx):
        return hubs.hub_specs(ctx.model, sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model), seeds_of(ctx, self),
                              **atlas_options(ctx, self))

    def decide(self, ctx, m):
        return hubs.hub_findings(m, sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model), claimed_layer(ctx, self),
                                 seeds_of(ctx, self))
