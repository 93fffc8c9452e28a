"""What every rule template is made of: its parameters, the measurements it needs (specs), its decision.

A template turns a ``[[claim]]`` row into verdicts in two steps that the planner and the run share:

1. ``specs(ctx) -> {name: Spec}``: every measurement the rule reads, named, for the row's models and plan (a
   :class:`Spec` is one atlas sweep, one skip sweep, one steering or quantisation study: ``spec.need`` is what
   the planner (:mod:`engine.planner`) shows and shares, ``spec.measure(load_model)`` computes it through the
   content-addressed cache). There is no other description of what a claim measures.
2. ``decide(ctx, measured) -> (seed, rigorous)``: the rule on those measurements, through the
   :mod:`engine.decisions` primitives, as two :class:`~engine.studies.findings.Finding` objects.

:func:`measure` runs the specs model by model (a gpu-tier model of a multi-model claim is released before the
next is loaded). A row whose rule is a procedure by nature names ``procedure = "module:function"`` instead
(:class:`Procedure`): ``function(ctx, load_model) -> (seed, rigorous)``, optionally with a ``specs`` attribute
(``ctx -> {name: Spec}``) for the planner.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine import decisions as D
from engine import progress
from engine.planner import Dynamic
from engine.settings import RunSettings
from engine.studies.findings import Finding
from engine.studies.specs import Loader, Measured, Spec, measure
from engine.verdicts import GROUP_SEP, Claim, ClaimError


class TemplateError(ClaimError):
    """A row names an unknown template or procedure, or a parameter is missing, unknown or of the wrong type; one
    line naming the file, the claim and the field."""


@dataclass(frozen=True)
class Param:
    """One template parameter of a ``[[claim]]`` row: its type(s), whether the row must set it, its default and
    what it means (the README's templates table is made from these)."""

    kinds: tuple[type, ...]
    doc: str
    required: bool = False
    default: Any = None

    def check(self, value: Any, at: str) -> None:
        if isinstance(value, bool) and bool not in self.kinds:
            ok = False
        else:
            ok = isinstance(value, self.kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in self.kinds)
            raise TemplateError(f"{at} = {value!r}: expected {names} ({self.doc})")


@dataclass(frozen=True)
class ClaimContext:
    """One claim row on one target under one run: what a template's ``specs`` and ``decide`` read."""

    claim: Claim
    models: tuple[str, ...]
    tier: str
    settings: RunSettings = field(default_factory=RunSettings)

    stage: int | None = None  # a sequential look: the rigorous sample's examples per family at this look

    @property
    def params(self) -> Mapping[str, Any]:
        """The row's ``[claim.params]``: rule thresholds and size overrides (never the plan of the run); at a
        sequential look, the look's sample size too."""
        if self.stage is None:
            return self.claim.params
        return {**self.claim.params, "rigorous_per_family": self.stage}

    def at(self, stage: int) -> ClaimContext:
        """The same claim at the sequential look whose rigorous sample has ``stage`` examples per family."""
        return dataclasses.replace(self, stage=stage)

    @property
    def plan(self) -> str:
        return self.settings.plan_for(self.claim.params)

    @property
    def model(self) -> str:
        return GROUP_SEP.join(self.models)

    @property
    def protocols(self) -> tuple[str, ...]:
        """The protocols the row is measured under (a user's claim: rigorous only, so no seed-protocol sweep)."""
        return self.claim.protocols or ("seed", "rigorous")

    @property
    def seed_figures(self) -> Mapping[str, Any]:
        """The seed's figures for this target (empty on the cpu tier: the seed measured other models)."""
        return self.claim.seed.get(self.model, {}) if self.tier == "gpu" else {}

    def arg(self, name: str, template: Template) -> Any:
        """The row's value of template parameter ``name`` (its default when the row leaves it out)."""
        return self.claim.args.get(name, template.parameters[name].default)


class Template:
    """A registered rule template (one module of :mod:`engine.templates` each). Subclasses set ``name``,
    ``block``, ``parameters``, ``measures`` and ``rule`` (one line each for the README's table) and implement
    :meth:`specs` and :meth:`decide`."""

    name: ClassVar[str] = ""
    block: ClassVar[str] = "atlas"
    parameters: ClassVar[dict[str, Param]] = {}
    measures: ClassVar[str] = ""
    rule: ClassVar[str] = ""
    staged: ClassVar[bool] = False  # its rigorous sample grows in sequential looks when the plan has stages
    reads_rigorous_sample: ClassVar[bool] = False  # unstaged, but reads the atlas block's rigorous sample, which a
    # plan's budget may cut on a model (its record says so, as a staged one does)

    def check(self, claim: Claim, where: str) -> None:
        """Every parameter the row sets is one of the template's, of the right type; every required one is set."""
        for key, value in claim.args.items():
            if key not in self.parameters:
                known = ", ".join(self.parameters) or "none"
                raise TemplateError(f"{where}: claim {claim.id}: {key}: not a parameter of template {self.name!r} "
                                    f"(its parameters: {known})")
            self.parameters[key].check(value, f"{where}: claim {claim.id}: {key}")
        for key, p in self.parameters.items():
            if p.required and key not in claim.args:
                raise TemplateError(f"{where}: claim {claim.id}: {key}: missing (template {self.name!r} needs it: "
                                    f"{p.doc})")

    def check_models(self, claim: Claim, specs: list, where: str) -> None:
        """A user's row against the models it names (``engine.models.ModelSpec``), e.g. a layer beyond the model;
        nothing to check by default."""

    def specs(self, ctx: ClaimContext) -> dict[str, Spec]:
        raise NotImplementedError

    def decide(self, ctx: ClaimContext, m: Measured) -> tuple[Finding, Finding]:
        raise NotImplementedError

    def declared(self, ctx: ClaimContext) -> Dynamic:
        """What the planner shows for this claim: its specs' needs."""
        return Dynamic(tuple(spec.need for spec in self.specs(ctx).values()), "")

    def grows(self, ctx: ClaimContext) -> bool:
        """Whether this row takes HUB-BREADTH's 4-family look where a plan sizes one (``Sizes.breadth_per_family``):
        only then does a budget that leaves that look unbought cut this row's looks."""
        return False

    def stages(self, ctx: ClaimContext) -> tuple[int, ...]:
        """The sequential looks of this row under its plan (the atlas block's ``stages``: examples per family of
        the rigorous sample at each look); () for a template whose sample does not grow."""
        if not self.staged:
            return ()
        from engine.studies.atlas.common import sizes_for

        each = [sizes_for(ctx.tier, ctx.params, ctx.plan, m) for m in ctx.models]  # a budget may cut a model's
        return min((s.looks if s.stages else () for s in each), key=len)  # looks: a group runs those all have

    def run(self, ctx: ClaimContext, load_model: Loader) -> tuple[Finding, Finding]:
        """Measure the specs and decide; with stages, group-sequential looks (:func:`engine.decisions.sequential`:
        the error spent evenly over the looks, nested samples computed stage by stage), stopping at the first look
        whose rigorous finding is decided. The seed protocol's sample does not grow: it is decided once, at the
        nominal level, on the last look's measurements."""
        stages = self.stages(ctx)
        if len(stages) <= 1:  # one look (a budget may leave one): every model sized at it, as a group must be
            at = ctx.at(stages[0]) if stages else ctx
            seed, rigorous = self.decide(at, measure(self.specs(at), load_model))
            return seed, _budget_noted(ctx, self.staged or self.reads_rigorous_sample, rigorous, self.grows(ctx))

        def look(n: int):
            at = ctx.at(n)
            with progress.stage(stages.index(n) + 1, len(stages)):
                measured = measure(self.specs(at), load_model)
            return at, measured, self.decide(at, measured)

        index, (at, measured, (_, rigorous)), history = D.sequential(stages, look, lambda r: _stop_outcome(r[2][1]))
        seed, _ = self.decide(at, measured)
        with D.looks(len(stages)):
            level = D.looked_level()
        rigorous.figures["looks"] = {"stages_per_family": list(stages), "stopped_at_look": index + 1,
                                     "n_looks": len(stages), "history": [list(h) for h in history],
                                     "level_per_look": level}
        rigorous.notes.append(
            f"Sequential looks at {list(stages)} examples/family (nested samples), each at the {level:.4g} level "
            f"(Bonferroni over {len(stages)} looks): stopped at look {index + 1} "
            f"({'decided' if D.decided(_stop_outcome(rigorous)) else 'the last look, undecided'}).")
        return seed, _budget_noted(ctx, True, rigorous, self.grows(ctx))


def _budget_noted(ctx: ClaimContext, staged: bool, rigorous: Finding, grown: bool = False) -> Finding:
    """A record of a staged template (or one reading the rigorous sample) whose looks the plan's budget cut says so, with what the next look would cost and buy
    (``engine.budget.atlas_note``); its projection, where the rule makes one, is in its own text."""
    if staged and ctx.tier != "gpu":
        from engine import budget

        for m in ctx.models:
            note = budget.atlas_note(ctx.plan, m, grown)
            if note:
                rigorous.notes.append(f"Looks cut by the budget: {note}.")
                rigorous.figures.setdefault("budget", {})[m] = note
    return rigorous


def _stop_outcome(finding: Finding):
    """A look stops when its rigorous finding is decided (for, against, or parts decided both ways)."""
    from engine.decisions import Outcome
    from engine.studies.findings import outcome

    got = outcome(finding)
    return Outcome.FOR if got is None else got


# ------------------------------------------------------------------------------------------------ procedures


class Procedure(Template):
    """A row's ``procedure = "module:function"``: a rule that no template fits (training runs, a cross-model map,
    a benchmark). ``function(ctx, load_model) -> (seed, rigorous)``; its ``specs`` attribute, when it has one,
    tells the planner what it measures, else the planner says the procedure decides at run time."""

    name = "procedure"
    measures = "whatever the procedure measures (its docstring)"
    rule = "the procedure's own (its docstring)"

    def __init__(self, target: str, function: Callable[..., tuple[Finding, Finding]]):
        self.target = target
        self.function = function

    @classmethod
    def load(cls, target: str, where: str) -> Procedure:
        module, _, attr = target.partition(":")
        if not module or not attr:
            raise TemplateError(f"{where}: procedure = {target!r}: expected 'package.module:function'")
        try:
            function = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise TemplateError(f"{where}: procedure = {target!r}: cannot import it ({exc})") from exc
        if not callable(function):
            raise TemplateError(f"{where}: procedure = {target!r}: not a function")
        return cls(target, function)

    def specs(self, ctx: ClaimContext) -> dict[str, Spec]:
        declare = getattr(self.function, "specs", None)
        return dict(declare(ctx)) if declare is not None else {}

    def declared(self, ctx: ClaimContext) -> Dynamic:
        declare = getattr(self.function, "specs", None)
        if declare is None:
            why = getattr(self.function, "dynamic", "") or f"the procedure {self.target} decides what it measures"
            return Dynamic((), why)
        return Dynamic(tuple(spec.need for spec in declare(ctx).values()), getattr(self.function, "dynamic", ""))

    def run(self, ctx: ClaimContext, load_model: Loader) -> tuple[Finding, Finding]:
        return self.function(ctx, load_model)


def procedure(*, specs: Callable[[ClaimContext], Mapping[str, Spec]] | None = None, dynamic: str = ""):
    """Mark a function as a row's procedure: ``specs`` (what it measures, for the planner) and ``dynamic`` (what
    it decides at run time, and why) are attached to it."""
    def mark(fn):
        fn.specs = specs
        fn.dynamic = dynamic
        if specs is None:
            del fn.specs
        return fn
    return mark
