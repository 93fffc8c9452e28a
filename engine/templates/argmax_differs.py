"""``argmax_differs``: "the hub of one measurement differs from another's" (HUB-BREADTH: the 4-family suite vs
the 12-family suite; HUB-CODER: a code-trained model vs its base model).

``between = "suites"``: one sweep per protocol, the narrow suite read as its families' rows; ``between =
"models"``: the target's first model (the coder) against its second (the base), one at a time. Rule
(:func:`~engine.studies.atlas.hubs.decide_differ`): both argmax layers exist and differ: CONFIRMED; the same
layer: FAILED; an argmax not decided (or a tie): INCONCLUSIVE. ``untested`` (a reason) on tiers without a pair.

``stand_in`` (``between = "models"``): a target that is a stand-in for the seed's first model (a registry model
with other weights, e.g. the cpu tier's instruct coder for the seed's Qwen2.5-Coder-0.5B) is measured alone
(:func:`~engine.studies.atlas.hubs.decide_stand_in`): its own argmax, whether the seed's layer is decided its
argmax and the gap to the layer the seed's margin was over, under both protocols; never CONFIRMED or FAILED
against the seed's figure (INCONCLUSIVE, with the row's reason).
"""

from __future__ import annotations

from dataclasses import replace

from engine.planner import Dynamic
from engine.studies.atlas import hubs
from engine.studies.atlas.common import sizes_for
from engine.templates import ClaimContext, Param, Template, TemplateError, register

STAND_IN_FIELDS = {  # field -> (types, required, what it means)
    "of": ((str,), True, "the registry key of the seed model it stands in for (its stand_in_for)"),
    "layer": ((int,), True, "the seed's figure on that model: its hub layer"),
    "versus": ((int,), True, "the layer the seed's margin was over (the gap reported is layer - versus)"),
    "withheld": ((str,), True, "why the seed's figure is not compared (other weights: how)"),
    "seed_figure": ((str,), False, "the seed's figure in its own words, shown beside the stand-in's"),
}


@register
class ArgmaxDiffers(Template):
    name = "argmax_differs"
    block = "atlas"
    staged = True
    parameters = {
        "between": Param((str,), '"suites" (4 vs 12 families, one sweep) or "models" (first vs second model)',
                         required=True),
        "untested": Param((dict,), "tier -> why the claim cannot run there (e.g. no coder/base pair)", default={}),
        "stand_in": Param((dict,), "model -> { of, layer, versus, withheld, seed_figure }: a target measured in "
                                   "place of the seed's model `of` (other weights): its own figures beside the "
                                   "seed's layer, never compared (INCONCLUSIVE)", default={}),
    }
    measures = ("suites: seed sweep + seed-42 atlas; models: each model's seed sweep and seed-42 atlas; a stand-in: "
                "its seed sweep (4 families x 10) and seed-42 atlas")
    rule = ("both argmax layers exist and differ; the same layer: FAILED; a stand-in: its figures beside the seed's, "
            "INCONCLUSIVE")

    def check(self, claim, where):
        super().check(claim, where)
        from engine import models

        for key, row in claim.args.get("stand_in", {}).items():
            at = f"{where}: claim {claim.id}: stand_in.{key}"
            if claim.args.get("between") != "models":
                raise TemplateError(f"{at}: a stand-in replaces a model: only with between = \"models\"")
            if not isinstance(row, dict):
                raise TemplateError(f"{at} = {row!r}: expected a table ({', '.join(STAND_IN_FIELDS)})")
            for name, value in row.items():
                if name not in STAND_IN_FIELDS:
                    raise TemplateError(f"{at}.{name}: unknown field (fields: {', '.join(STAND_IN_FIELDS)})")
                kinds, _, doc = STAND_IN_FIELDS[name]
                if isinstance(value, bool) or not isinstance(value, kinds):
                    raise TemplateError(f"{at}.{name} = {value!r}: expected {kinds[0].__name__} ({doc})")
            missing = [n for n, (_, required, _) in STAND_IN_FIELDS.items() if required and n not in row]
            if missing:
                raise TemplateError(f"{at}.{missing[0]}: missing ({STAND_IN_FIELDS[missing[0]][2]})")
            spec = models.REGISTRY.get(key)
            if spec is None or spec.stand_in_for != row["of"]:
                said = "not in the model registry" if spec is None else f"its stand_in_for is {spec.stand_in_for!r}"
                raise TemplateError(f"{at}: not a registry stand-in for {row['of']!r} ({said}, "
                                    "engine/data/models.toml)")
            for name in ("layer", "versus"):
                if not 0 <= row[name] < spec.n_layers:
                    raise TemplateError(f"{at}.{name} = {row[name]}: beyond the model ({key}: layers 0-"
                                        f"{spec.n_layers - 1})")
            if key not in claim.cpu_models:
                raise TemplateError(f"{at}: not one of the row's cpu_models ({', '.join(claim.cpu_models) or 'none'}):"
                                    " a stand-in is measured as a target of its own")

    def _stand_in(self, ctx) -> hubs.StandIn | None:
        row = ctx.arg("stand_in", self).get(ctx.model)
        return None if row is None else hubs.StandIn(ctx.model, **row)

    def _breadth(self, ctx) -> tuple[ClaimContext, int | None]:
        """(the context the 12-family suite is measured at, the 4-family suite's examples per family at this look
        when it is the 4-family suite's own look past the 12-family suite's last, else None)."""
        if ctx.stage is None or not self.grows(ctx):
            return ctx, None
        last = super().stages(replace(ctx, stage=None))[-1]
        return (ctx.at(last), ctx.stage) if ctx.stage > last else (ctx, None)

    def grows(self, ctx):
        return ctx.arg("between", self) == "suites" and self._stand_in(ctx) is None

    def stages(self, ctx):
        """The plan's looks; for the suites, one more where the plan grows the 4-family suite past them
        (``breadth_per_family``; the error is spent over every look, this one included)."""
        looks = super().stages(ctx)
        if not looks or not self.grows(ctx):
            return looks
        grown = sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model).breadth_per_family
        return looks + (grown,) if grown and grown > looks[-1] else looks

    def declared(self, ctx):
        """The specs' needs at the plan's last look and, where the plan grows the 4-family suite, that look's."""
        got = super().declared(ctx)
        looks = self.stages(ctx)
        if len(looks) > len(super().stages(ctx)):
            grown = self.specs(ctx.at(looks[-1]))[hubs.BEYOND].need
            return Dynamic(got.needs + (grown,), got.why)
        return got

    def specs(self, ctx):
        ctx, grown = self._breadth(ctx)
        sizes = sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model)
        if self._stand_in(ctx) is not None:
            return hubs.stand_in_specs(ctx.model, sizes)
        if ctx.tier in ctx.arg("untested", self):
            return {}
        if ctx.arg("between", self) == "models":
            return hubs.coder_specs(ctx.models, sizes)
        specs = hubs.one_seed_specs(ctx.model, sizes)
        if grown:
            specs[hubs.BEYOND] = hubs.breadth_beyond_spec(ctx.model, sizes, grown)
        return specs

    def decide(self, ctx, m):
        ctx, _ = self._breadth(ctx)
        sizes = sizes_for(ctx.tier, ctx.params, ctx.plan, ctx.model)
        stand_in = self._stand_in(ctx)
        if stand_in is not None:
            return hubs.stand_in_findings(m, stand_in, sizes)
        why = ctx.arg("untested", self).get(ctx.tier)
        if why:
            return hubs.untested(why)
        if ctx.arg("between", self) == "models":
            return hubs.coder_findings(m, ctx.models, sizes)
        return hubs.breadth_findings(m, sizes)
