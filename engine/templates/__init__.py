"""Rule templates: a catalogue claim is a ``[[claim]]`` row run by a registered template.

One module per template in this package, registered by name at import (:func:`register`, as the ablation methods
are); every module here is imported when the package is, so adding a template is adding a file. A row names its
template and the template's parameters; the same row, on one model, is what the planner plans and what the
generic claim test (``claims/test_claims.py``) runs::

    [[claim]]
    id = "HUB-Q05"
    template = "argmax_is"
    layer = "seed"          # the seed's hub layer on the gpu tier; "an argmax exists" on the cpu tier
    ...

A row whose rule is a procedure by nature says ``procedure = "module:function"`` instead (:class:`Procedure`).
:func:`template_of` resolves either; :func:`check` validates every row of a catalogue at collection.
"""

from __future__ import annotations

import importlib
import pkgutil

from engine import lora as _lora  # noqa: F401 (its rows are procedures; its sizes register with engine.plans)
from engine.planner import Dynamic
from engine.plans import PlanError
from engine.templates.base import (
    ClaimContext,
    Measured,
    Param,
    Procedure,
    Spec,
    Template,
    TemplateError,
    measure,
    procedure,
)
from engine.verdicts import Catalogue, Claim

_REGISTRY: dict[str, Template] = {}


def register(cls: type[Template]) -> type[Template]:
    """Register a template class under its ``name`` (a decorator on the class, in its own module)."""
    if not cls.name:
        raise ValueError(f"template {cls.__name__} has no name")
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(f"template {cls.name!r} registered twice ({type(_REGISTRY[cls.name]).__module__} and "
                         f"{cls.__module__})")
    _REGISTRY[cls.name] = cls()
    return cls


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> Template:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TemplateError(f"unknown template {name!r} (templates: {', '.join(names())})") from None


def template_of(claim: Claim, where: str = "") -> Template:
    """The template (or procedure) that runs ``claim``'s row."""
    where = where or "catalogue"
    if claim.template and claim.procedure:
        raise TemplateError(f"{where}: claim {claim.id}: names both template and procedure (one of them)")
    if claim.template:
        if claim.template not in _REGISTRY:
            raise TemplateError(f"{where}: claim {claim.id}: template: unknown template {claim.template!r} "
                                f"(templates: {', '.join(names())})")
        return _REGISTRY[claim.template]
    if claim.procedure:
        return Procedure.load(claim.procedure, f"{where}: claim {claim.id}")
    raise TemplateError(f"{where}: claim {claim.id}: names neither template nor procedure")


def check(catalogue: Catalogue) -> None:
    """Every row of ``catalogue`` that names a template names a known one (with valid parameters), every row that
    names a procedure an importable one. A row naming neither is measured by a claim test of its own
    (``@pytest.mark.claim``); the generic claim test does not collect it."""
    for claim in catalogue:
        if not (claim.template or claim.procedure):
            continue
        template = template_of(claim, catalogue.path)
        template.check(claim, catalogue.path)


def declared(ctx: ClaimContext) -> Dynamic:
    """What the planner shows for one claim test: its template's specs' needs, or why they are known only at run
    time (a procedure; a plan without sizes for this tier, e.g. ``--plan smoke`` without ``-m cpu``)."""
    try:
        return template_of(ctx.claim).declared(ctx)
    except PlanError as exc:
        return Dynamic((), f"the plan has no sizes for this tier ({exc})")


def table(catalogue: Catalogue) -> str:
    """The README's templates table (markdown rows): name, parameters, what it measures, its rule, its rows."""
    rows = ["| template | parameters | measures | rule | rows |", "|---|---|---|---|---|"]
    for name in names():
        t = _REGISTRY[name]
        params = ", ".join(f"`{k}`" + (" (required)" if p.required else f" = {p.default!r}")
                           for k, p in t.parameters.items()) or "thresholds in `[claim.params]`"
        rows.append(f"| `{name}` | {params} | {t.measures} | {t.rule} | "
                    f"{', '.join(c.id for c in catalogue if c.template == name)} |")
    return "\n".join(rows)


def run(ctx: ClaimContext, load_model) -> tuple:
    """``(seed, rigorous)`` findings of one claim row on one target."""
    return template_of(ctx.claim).run(ctx, load_model)


def _import_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()

__all__ = ["ClaimContext", "Measured", "Param", "Procedure", "Spec", "Template", "TemplateError", "check", "declared", "get",
           "measure", "names", "procedure", "register", "run", "table", "template_of"]
