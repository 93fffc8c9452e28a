"""Claims: the catalogue as typed data, and the one place where a measurement becomes a verdict.

A claim test measures something and hands it to a :class:`Recorder` (in pytest: the ``claim`` fixture)::

    claim.record(protocol="seed", figures={"hub_layer": 2, "hub_std": 0.0}, holds=std == 0, seeds=[42, 137, 256])

:func:`decide` turns that into a verdict, exactly as the catalogue defines them:

* FAILED    - the rule's falsifier fired (``holds`` is False);
* REVISED   - the rule holds but the key figure is outside the claim's tolerance of the seed's figure for this
              model (the record states the revised figure), or the test reports a documented revision
              (``revised=True, reason=...``);
* CONFIRMED - the rule holds and, where the seed gives a numeric figure for this model, the measurement is within
              tolerance of it (on the cpu tier the seed gives none, so the rule alone decides);
* INCONCLUSIVE - the data cannot decide at this sample size (a CI straddles the decision boundary, a
              precondition did not hold, a part of the rule the protocol cannot test): the record names what
              could not be decided and the sample size a power projection expects to decide. Never a pass.
* UNTESTED  - the claim cannot run here (no weights, no GPU, budget), with the reason. Never a pass.

``holds`` is either a bool (the rule's falsifier fired or not) or what :mod:`engine.decisions` decided: one
:class:`~engine.decisions.Evidence` (for / against / undecided), or a mapping of named parts to evidence for a
claim with several parts (all for: CONFIRMED; some for and some against: REVISED; all against: FAILED; any
undecided: INCONCLUSIVE). Evidence keeps its per-example data, so a verdict can be recomputed offline.

Nothing here imports pytest: the plugin (``claims/plugin.py``) maps verdicts to test outcomes.
"""

from __future__ import annotations

import hashlib
import math
import time
import tomllib
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from engine import ENGINE_VERSION

PROTOCOLS = ("seed", "rigorous")
TIERS = ("gpu", "cpu")
GROUP_SEP = "+"  # a claim about several models names them "a+b+c"


class ClaimError(ValueError):
    """A claim is misused or the catalogue is malformed; the message names the claim, field or file."""


class CatalogueError(ClaimError):
    """The catalogue's data is out of bounds (a rule parameter of the wrong type, out of range, not finite, or
    unknown); one line naming the file, the claim's table and the key."""


class ClaimRevisedWarning(UserWarning):
    """Emitted for every REVISED verdict, so it shows in pytest's warnings summary."""


class Verdict(str, Enum):
    CONFIRMED = "CONFIRMED"
    REVISED = "REVISED"
    FAILED = "FAILED"
    INCONCLUSIVE = "INCONCLUSIVE"
    UNTESTED = "UNTESTED"


# ------------------------------------------------------------------------------------------------ catalogue


@dataclass(frozen=True)
class Tolerance:
    """``|measured - expected| <= max(abs, rel * |expected|)``, elementwise for sequences of equal length."""

    abs: float = 0.0
    rel: float = 0.0

    def within(self, measured: Any, expected: Any) -> bool:
        if is_number_list(measured) and is_number_list(expected):
            return len(measured) == len(expected) and all(map(self.within, measured, expected))
        if not (is_number(measured) and is_number(expected)):
            return measured == expected
        return abs(measured - expected) <= max(self.abs, self.rel * abs(expected))

    def describe(self) -> str:
        parts = [f"±{self.abs:g}"] if self.abs or not self.rel else []
        if self.rel:
            parts.append(f"±{self.rel:.0%}")
        return " or ".join(parts)

    def to_dict(self) -> dict[str, float]:
        return {"abs": self.abs, "rel": self.rel}


@dataclass(frozen=True)
class Claim:
    """One catalogue row: what the seed claims, the rule that tests it, the seed's figures per model."""

    id: str
    block: str
    statement: str
    rule: str
    source: str
    tiers: tuple[str, ...]
    models: tuple[str, ...]  # gpu-tier targets: registry keys or "+"-joined groups
    scales: tuple[str, ...]
    key: str  # the figure compared with the seed's figure; "" = the rule alone decides
    tolerance: Tolerance
    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # model -> figure -> value
    notes: str = ""
    catalogue_sha256: str = ""  # of the catalogue file this row was read from (stored in every record)
    template: str = ""  # the rule template that runs the row (engine.templates), or
    procedure: str = ""  # "module:function": a procedure for a rule no template fits
    args: Mapping[str, Any] = field(default_factory=dict)  # the row's template parameters (checked by the template)
    marks: tuple[str, ...] = ()  # extra pytest markers of the row's test (e.g. "slow")
    targets: tuple[str, ...] = ()  # a user's claim (engine.claims_file): the models it names, whatever the tier
    protocols: tuple[str, ...] = ()  # the protocols it is measured under (empty: the catalogue's)
    cpu_models: tuple[str, ...] = ()  # cpu-tier targets as the row names them (keys or "+"-joined groups); empty:
    # each cpu model alone, or all of them as one group for a multi-model claim (Catalogue.cpu_targets)

    def seed_figure(self, model: str, figure: str) -> Any:
        """The seed's figure for ``model`` (None where the seed gives none, e.g. every cpu-tier model)."""
        return self.seed.get(model, {}).get(figure) if figure else None

    def tolerance_for(self, figure: str, default: Tolerance | None = None) -> Tolerance:
        """The figure's own tolerance, else the claim's (for its key figure), else ``default`` (exact)."""
        if figure in self.tolerances:
            return self.tolerances[figure]
        if figure == self.key or default is None:
            return self.tolerance
        return default


@dataclass(frozen=True)
class Catalogue:
    """All claims by id, plus the catalogue-wide settings (cpu-tier models, scale markers)."""

    path: str
    claims: Mapping[str, Claim]
    blocks: tuple[str, ...]
    protocols: tuple[str, ...]
    cpu_models: tuple[str, ...]
    scales: Mapping[str, str]  # scale marker -> description
    default_tolerance: Tolerance

    def __getitem__(self, claim_id: str) -> Claim:
        try:
            return self.claims[claim_id]
        except KeyError:
            raise ClaimError(f"unknown claim id {claim_id!r}: not in {self.path} "
                             f"(known: {', '.join(self.claims)})") from None

    def __contains__(self, claim_id: object) -> bool:
        return claim_id in self.claims

    def __iter__(self):
        return iter(self.claims.values())

    def __len__(self) -> int:
        return len(self.claims)

    def tolerance_for(self, claim_id: str, figure: str) -> Tolerance:
        """Tolerance used when a figure is compared with a baseline or another run."""
        claim = self.claims.get(claim_id)
        return claim.tolerance_for(figure, self.default_tolerance) if claim else self.default_tolerance

    def targets(self, claim: Claim, plan: str | None = None, tier: str | None = None) -> list[str]:
        """The models (or "+"-joined groups) a claim is measured on: a user's claim, the models its row names; a
        catalogue claim, its gpu-tier models, then its cpu-tier targets (:meth:`cpu_targets`). ``tier``: that
        tier's only."""
        if claim.targets:
            return list(claim.targets) if tier is None or tier in claim.tiers else []
        gpu = list(claim.models) if "gpu" in claim.tiers and tier in (None, "gpu") else []
        cpu = self.cpu_targets(claim, plan) if "cpu" in claim.tiers and tier in (None, "cpu") else []
        return gpu + cpu

    def protocols_of(self, claim: Claim) -> tuple[str, ...]:
        """The protocols a claim is recorded under (a user's claim: rigorous only)."""
        return claim.protocols or self.protocols

    def cpu_targets(self, claim: Claim, plan: str | None = None) -> list[str]:
        """Default cpu-tier targets: the row's own (``cpu_models``: keys or "+"-joined groups, in the row's order),
        else each cpu model alone, or all of them as one group for a multi-model claim. Only the cpu models that
        ``plan`` runs in the claim's block count (``[plans.<plan>.cpu.<block>] models``, else ``[plans.<plan>.cpu]
        models``: engine.plans.cpu_models); None: every cpu model of the catalogue. A group keeps the members the
        plan runs; one left with fewer than two (of two or more) is not a target: a comparison needs both sides."""
        from engine import plans

        models = self.cpu_models if plan is None else plans.cpu_models(plan, self.cpu_models, claim.block)
        if claim.cpu_models:
            targets = []
            for target in claim.cpu_models:
                members = [m for m in target.split(GROUP_SEP) if m in models]
                if len(members) == len(target.split(GROUP_SEP)) or len(members) >= 2:
                    targets.append(GROUP_SEP.join(members))
            return targets
        if any(GROUP_SEP in model for model in claim.models):
            return [GROUP_SEP.join(models)]
        return list(models)


DEFAULT_CATALOGUE = "engine/data/claims.toml"


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Read and validate a claims catalogue (default: the packaged ``engine/data/claims.toml``), every claim's rule
    parameters included (:func:`check_catalogue`)."""
    if path is None:
        return _default_catalogue()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClaimError(f"claims catalogue {path}: cannot read it ({exc})") from exc
    return check_catalogue(parse_catalogue(text, str(path)))


@lru_cache(maxsize=1)
def _default_catalogue() -> Catalogue:
    text = resources.files("engine").joinpath("data/claims.toml").read_text(encoding="utf-8")
    return check_catalogue(parse_catalogue(text, DEFAULT_CATALOGUE))


# [claim.params]: every rule parameter a procedure reads, name -> (kind, low, high); kind "number" (a finite int or
# float) or "int". A key "min_<what>" is a rule's minimum n (an int >= 1), "<what>_delta" / "<what>_tolerance" a
# finite number >= 0; "<name>_rationale" (a non-empty string) may go with any parameter the claim sets. Other
# keys: "plan" (a plan of engine/data/plans.toml), a field of the claim's block's sizes (a size override, checked
# by engine.plans; the fields the plans file lists), "cpu" / "gpu" (tables of size overrides). A new rule parameter
# of another kind is declared here.
RULE_PARAMS: dict[str, tuple[str, float, float]] = {
    **{name: ("number", 0, math.inf) for name in (
        "delta", "seed_delta", "control_delta", "depth_delta", "near_zero_mean_delta", "zero_effect_delta",
        "rank_rho_delta", "depth_tolerance", "zero_effect_tolerance", "match_tolerance", "near_zero_mean_ratio",
        "destructive_ratio", "noise_multiple")},
    "rank_rho_threshold": ("number", -1, 1),
    "keep_threshold": ("number", 0, 1),
    "lock_in_fraction": ("number", 0, 1),
    "random_percentile": ("number", 0, 100),
    "steering_scale": ("number", -math.inf, math.inf),
    "top_k": ("int", 1, 10_000),
    "last_decile": ("int", 0, 9),
}
MIN_N_RANGE = ("int", 1, 1_000_000)


def _rule_param(key: str) -> tuple[str, float, float] | None:
    if key in RULE_PARAMS:
        return RULE_PARAMS[key]
    if key.startswith("min_"):
        return MIN_N_RANGE
    if key.endswith(("_delta", "_tolerance")):
        return ("number", 0, math.inf)
    return None


def check_catalogue(catalogue: Catalogue) -> Catalogue:
    """``catalogue`` once every claim's ``[claim.params]`` is valid (known keys, types, ranges, finite numbers; size
    overrides as engine.plans checks them) and every tolerance is finite; else a :class:`CatalogueError` naming the
    file, the claim's table and the key."""
    from engine import plans

    _, plan_tables = plans.read()  # a fault there is its own PlanError (a ValueError), naming the plans file
    # each plan's cpu model lists name cpu models (a PlanError): this catalogue's, or the registry's cpu models (a
    # plan for a model this catalogue lacks, e.g. full-coder beside a claims file of its own, is an error only when
    # it is run: plans.cpu_models)
    from engine.models.registry import REGISTRY

    known = tuple(dict.fromkeys((*catalogue.cpu_models, *(k for k, s in REGISTRY.items() if s.tier == "cpu"))))
    for name in plan_tables:
        plans.check_models(name, known)
    size_fields: dict[str, set[str]] = {}
    for tiers in plan_tables.values():
        for blocks in tiers.values():
            for block, table in blocks.items():
                size_fields.setdefault(block, set()).update(set(table) - set(plans.SET_BY_LOADER))
    tolerances = [("[catalogue] default_tolerance", catalogue.default_tolerance)]
    for claim in catalogue:
        where = f"{catalogue.path}: claim {claim.id}"
        for target in claim.cpu_models:
            strays = [m for m in target.split(GROUP_SEP) if m not in catalogue.cpu_models]
            if strays or "cpu" not in claim.tiers:
                raise CatalogueError(f"{where}: cpu_models {target!r}: " + (
                    f"{strays[0]!r} is not a cpu model of the catalogue (cpu_models: "
                    f"{', '.join(catalogue.cpu_models)})" if strays else "the claim has no cpu tier"))
        tolerances += [(f"claim {claim.id}: tolerance", claim.tolerance)] + [
            (f"claim {claim.id}: tolerances.{name}", t) for name, t in claim.tolerances.items()]
        sizes = size_fields.get(claim.block, set())
        for key, value in claim.params.items():
            at = f"{where}: [claim.params] {key}"
            if key.endswith("_rationale") and key[:-len("_rationale")] in claim.params:
                if not isinstance(value, str) or not value.strip():
                    raise CatalogueError(f"{at} = {_short(value)}: expected a non-empty string (why the threshold)")
            elif _rule_param(key) is not None:
                _check_param(_rule_param(key), value, at)
            elif key == "plan":
                if not isinstance(value, str) or value not in plan_tables:
                    raise CatalogueError(f"{at} = {_short(value)}: not a plan of the plans file (plans: "
                                         f"{', '.join(plan_tables)})")
            elif key in ("cpu", "gpu"):
                if not isinstance(value, dict):
                    raise CatalogueError(f"{at} = {_short(value)}: expected a table of {claim.block} size overrides")
                for field_name, size in value.items():
                    _check_size(field_name, size, sizes, f"{where}: [claim.params.{key}] {field_name}", claim.block)
            else:
                _check_size(key, value, sizes, at, claim.block)
    for name, tolerance in tolerances:
        if not (math.isfinite(tolerance.abs) and math.isfinite(tolerance.rel)):
            raise CatalogueError(f"{catalogue.path}: {name} = {tolerance.to_dict()}: not finite (an infinite "
                                 "tolerance accepts any figure; write a number)")
    return catalogue


def _check_param(rule: tuple[str, float, float], value: Any, at: str) -> None:
    kind, low, high = rule
    if kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
        raise CatalogueError(f"{at} = {_short(value)}: expected an integer in [{low:g}, {high:g}]")
    if not is_number(value):
        raise CatalogueError(f"{at} = {_short(value)}: expected a number in [{low:g}, {high:g}]")
    if not math.isfinite(value):
        raise CatalogueError(f"{at} = {value}: not a finite number (NaN and inf are refused; write a number)")
    if not low <= value <= high:
        raise CatalogueError(f"{at} = {_short(value)}: out of range, expected a number in [{low:g}, {high:g}]")


def _check_size(key: str, value: Any, sizes: set[str], at: str, block: str) -> None:
    from engine import plans

    if key not in sizes:
        raise CatalogueError(f"{at}: unknown key: not a rule parameter (engine/verdicts.py RULE_PARAMS, min_*, "
                             f"*_delta, *_tolerance, <name>_rationale) nor a size of the {block} block "
                             f"({', '.join(sorted(sizes))})")
    try:
        plans.check_value(key, value, at)
    except plans.PlanError as exc:
        raise CatalogueError(str(exc)) from exc


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_catalogue(text: str, where: str = "<catalogue>") -> Catalogue:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClaimError(f"{where}: not valid TOML ({exc})") from exc
    head = data.get("catalogue", {})
    blocks = tuple(head.get("blocks", ("atlas", "lora", "steer", "quant")))
    protocols = tuple(head.get("protocols", PROTOCOLS))
    default_tolerance = _tolerance(head.get("default_tolerance", {"abs": 0.0}),
                                   f"{where}: [catalogue] default_tolerance")
    claims: dict[str, Claim] = {}
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    for index, row in enumerate(data.get("claim", []), start=1):
        claim = replace(_claim(row, f"{where}: claim #{index} ({row.get('id', 'no id')})", blocks),
                        catalogue_sha256=digest)
        if claim.id in claims:
            raise ClaimError(f"{where}: claim id {claim.id!r} appears twice")
        claims[claim.id] = claim
    if not claims:
        raise ClaimError(f"{where}: no [[claim]] entries")
    return Catalogue(path=where, claims=claims, blocks=blocks, protocols=protocols,
                     cpu_models=tuple(head.get("cpu_models", ())), scales=dict(data.get("scales", {})),
                     default_tolerance=default_tolerance)


_REQUIRED = ("id", "block", "statement", "rule", "tiers", "models", "tolerance")
_KNOWN = set(_REQUIRED) | {"source", "scales", "key", "tolerances", "params", "seed", "notes", "template", "procedure",
                           "marks", "cpu_models"}


def _claim(row: dict, where: str, blocks: tuple[str, ...]) -> Claim:
    missing = [name for name in _REQUIRED if name not in row]
    if missing:
        raise ClaimError(f"{where}: missing field(s) {', '.join(missing)}")
    args = {k: v for k, v in row.items() if k not in _KNOWN}
    if args and not row.get("template"):  # a template's parameters are checked by the template (engine.templates)
        raise ClaimError(f"{where}: unknown field(s) {', '.join(sorted(args))}")
    for name in ("template", "procedure"):
        if not isinstance(row.get(name, ""), str):
            raise ClaimError(f"{where}: field {name!r} must be a string, got {row[name]!r}")
    cpu_models = row.get("cpu_models", [])
    if not isinstance(cpu_models, list) or not all(isinstance(m, str) and m for m in cpu_models) \
            or len(set(cpu_models)) != len(cpu_models):
        raise ClaimError(f"{where}: field 'cpu_models' must be a list of distinct registry keys or '+'-joined "
                         f"groups, got {cpu_models!r}")
    marks = row.get("marks", [])
    if not isinstance(marks, list) or not all(isinstance(m, str) and m.isidentifier() for m in marks):
        raise ClaimError(f"{where}: field 'marks' must be a list of marker names, got {marks!r}")
    if row["block"] not in blocks:
        raise ClaimError(f"{where}: field 'block' is {row['block']!r}, expected one of {', '.join(blocks)}")
    bad_tiers = [tier for tier in row["tiers"] if tier not in TIERS]
    if bad_tiers or not row["tiers"]:
        raise ClaimError(f"{where}: field 'tiers' must list some of {', '.join(TIERS)}, got {row['tiers']!r}")
    seed = {model: dict(figures) for model, figures in row.get("seed", {}).items()}
    strays = [model for model in seed if model not in row["models"]]
    if strays:
        raise ClaimError(f"{where}: seed figures for {strays} but 'models' lists only {row['models']}")
    key = row.get("key", "")
    for model, figures in seed.items():
        if key and key not in figures:
            raise ClaimError(f"{where}: seed figures of {model!r} lack the key figure {key!r}")
    return Claim(
        id=row["id"], block=row["block"], statement=row["statement"], rule=row["rule"],
        source=row.get("source", ""), tiers=tuple(row["tiers"]), models=tuple(row["models"]),
        scales=tuple(row.get("scales", ())), key=key,
        tolerance=_tolerance(row["tolerance"], f"{where}: field 'tolerance'"),
        tolerances={name: _tolerance(value, f"{where}: tolerances.{name}")
                    for name, value in row.get("tolerances", {}).items()},
        params=dict(row.get("params", {})), seed=seed, notes=row.get("notes", ""),
        template=row.get("template", ""), procedure=row.get("procedure", ""), args=args, marks=tuple(marks),
        cpu_models=tuple(cpu_models),
    )


def _tolerance(value: Any, where: str) -> Tolerance:
    if not isinstance(value, dict) or not value or set(value) - {"abs", "rel"}:
        raise ClaimError(f"{where}: expected a table like {{ abs = 0.05 }} or {{ rel = 0.1 }}, got {value!r}")
    if not all(is_number(v) and v >= 0 for v in value.values()):
        raise ClaimError(f"{where}: abs and rel must be non-negative numbers, got {value!r}")
    return Tolerance(abs=float(value.get("abs", 0.0)), rel=float(value.get("rel", 0.0)))


# ------------------------------------------------------------------------------------------------ measurements


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_number_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(is_number(v) for v in value)


def plain(value: Any, where: str = "figure") -> Any:
    """A JSON-ready copy of a measured value: numpy/torch scalars and arrays become Python numbers and lists.

    A NaN or infinite figure is an error: it means the measurement broke, and it is not valid JSON.
    """
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy/torch scalars and arrays
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ClaimError(f"{where} is {value}: a measurement produced a non-finite number")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ClaimError(f"{where} has type {type(value).__name__}: figures must be numbers, strings, lists or dicts")


@dataclass
class VerdictRecord:
    """One verdict for claim x model x protocol, with everything needed to reproduce and audit it."""

    claim_id: str
    model: str
    tier: str
    protocol: str
    verdict: Verdict
    reason: str
    statement: str = ""
    block: str = ""
    key: str = ""
    measured: Any = None  # the key figure as measured
    expected: Any = None  # the seed's figure for this model, if any
    expectation: str = ""
    tolerance: dict | None = None
    figures: dict = field(default_factory=dict)
    ci: dict = field(default_factory=dict)  # figure -> [low, high]
    seeds: list = field(default_factory=list)
    suite_hash: str | None = None
    notes: str = ""
    revised: bool = False  # a documented revision was reported (kept so the verdict can be recomputed)
    thresholds: dict = field(default_factory=dict)  # every rule parameter the decision used (claims.toml params)
    evidence: list = field(default_factory=list)  # engine.decisions.Evidence dicts, with their per-example data
    n_to_decide: int | None = None  # INCONCLUSIVE: examples per family a power projection expects to decide
    plan: str = ""
    catalogue_sha256: str = ""
    engine_version: str = ENGINE_VERSION
    git_commit: str = "unknown"
    duration_s: float = 0.0
    test: str = ""
    timestamp: str = ""
    run: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VerdictRecord":
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        try:
            known["verdict"] = Verdict(known["verdict"])
            return cls(**known)
        except (KeyError, ValueError, TypeError) as exc:
            raise ClaimError(f"not a verdict record ({exc}): {dict(data)!r:.300}") from exc

    @property
    def row_key(self) -> tuple[str, str]:
        return self.claim_id, self.model


@dataclass(frozen=True)
class Measurement:
    """What a claim test reports for one protocol."""

    protocol: str
    figures: Mapping[str, Any]
    holds: bool
    key: str | None = None
    expectation: str | None = None
    seeds: tuple = ()
    suite_hash: str | None = None
    ci: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""
    revised: bool = False
    reason: str = ""
    undecided: str = ""  # holds could not be decided: what (INCONCLUSIVE)
    parts: Mapping[str, str] = field(default_factory=dict)  # part name -> "for" | "against" | "undecided"
    against: str = ""  # the statements of the evidence decided against (a FAILED reason without a key figure)


@dataclass(frozen=True)
class Decision:
    """A verdict with its reason and what was compared: the key figure, its seed value and the tolerance."""

    verdict: Verdict
    reason: str
    key: str
    measured: Any = None
    expected: Any = None  # the seed's figure for this model (None: the rule alone decided)
    tolerance: Tolerance | None = None


def decide(claim: Claim, model: str, m: Measurement) -> Decision:
    """The verdict logic (the catalogue's definitions): falsifier -> FAILED; documented revision -> REVISED;
    numeric seed figure for this model -> CONFIRMED within tolerance, else REVISED; no seed figure -> CONFIRMED."""
    key = claim.key if m.key is None else m.key
    expected = claim.seed_figure(model, key)
    numeric = is_number(expected) or is_number_list(expected)
    if numeric and key not in m.figures:
        raise ClaimError(f"{claim.id} on {model}: the seed gives {key} = {expected!r}, so the test must report "
                         f"figure {key!r} (reported: {', '.join(m.figures) or 'none'})")
    compared = Decision(Verdict.CONFIRMED, "", key, m.figures.get(key) if key else None,
                        expected if numeric else None, claim.tolerance_for(key) if numeric else None)
    shown = f"{key} = {fmt(compared.measured)}" if key in m.figures else (m.against or "the measurement")
    if m.parts:
        undecided = [name for name, outcome in m.parts.items() if outcome == "undecided"]
        held = [name for name, outcome in m.parts.items() if outcome == "for"]
        if undecided:
            return replace(compared, verdict=Verdict.INCONCLUSIVE,
                           reason=f"not decided: part(s) {', '.join(undecided)}" + (f" ({m.undecided})"
                                                                                    if m.undecided else ""))
        if m.undecided:  # a precondition or the calibration gate: every part decided, the record is not
            return replace(compared, verdict=Verdict.INCONCLUSIVE, reason=f"not decided: {m.undecided}")
        if not held:
            return replace(compared, verdict=Verdict.FAILED, reason=f"every part decided against: "
                                                                     f"{', '.join(m.parts)}")
        if len(held) < len(m.parts):
            failed = [name for name in m.parts if name not in held]
            return replace(compared, verdict=Verdict.REVISED,
                           reason=f"revised claim: {', '.join(held)} hold; {', '.join(failed)} decided against")
    elif m.undecided:
        return replace(compared, verdict=Verdict.INCONCLUSIVE, reason=f"not decided: {m.undecided}")
    if not m.holds:
        return replace(compared, verdict=Verdict.FAILED, reason=f"falsifier fired: {shown}")
    if m.revised:
        return replace(compared, verdict=Verdict.REVISED, reason=f"documented revision: {m.reason}")
    if not numeric:
        return replace(compared, reason="rule holds (the seed gives no figure for this model)")
    tolerance = compared.tolerance
    versus = f"{shown} vs the seed's {fmt(expected)}"
    if tolerance.within(compared.measured, expected):
        return replace(compared, reason=f"rule holds; {versus}, within {tolerance.describe()}")
    return replace(compared, verdict=Verdict.REVISED,
                   reason=f"rule holds, figure revised: {versus} (outside {tolerance.describe()})")


def recompute(record: VerdictRecord, claim: Claim) -> Verdict | None:
    """The record's verdict decided again offline from its stored evidence (per-example data + parameters);
    None for a record decided without evidence (a bare ``holds`` bool) or UNTESTED: nothing to recompute."""
    from engine.decisions import recompute as redo

    if record.verdict is Verdict.UNTESTED or not record.evidence:
        return None
    evidence = {e.get("part", ""): redo(e) for e in record.evidence}
    holds, evidence_dicts, undecided, parts, _ = _read_holds(evidence if len(evidence) > 1 or "" not in evidence
                                                             else evidence[""], claim.id)
    revision = record.reason.removeprefix("documented revision: ") if record.revised else ""
    measurement = Measurement(protocol=record.protocol, figures=record.figures, holds=holds, key=record.key,
                              undecided=undecided, parts=parts, revised=record.revised, reason=revision,
                              against=_against(evidence_dicts))
    return decide(claim, record.model, measurement).verdict


def fmt(value: Any, limit: int = 60) -> str:
    """A short human form of a figure: 4 significant digits, lists abbreviated."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(fmt(v, limit) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {fmt(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------ recording


@dataclass(frozen=True)
class Target:
    """What one claim test measures: a claim on a model (or "+"-joined group of models) on a tier."""

    claim: Claim
    model: str
    tier: str
    protocols: tuple[str, ...] = PROTOCOLS

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.model.split(GROUP_SEP))


class Recorder:
    """Collects a claim test's verdicts. ``record`` per protocol measured; ``untested`` when it cannot run.

    The pytest plugin hands one to each claim test as the ``claim`` fixture; outside pytest it works the same.
    """

    def __init__(self, target: Target, *, git_commit: str = "unknown", test: str = ""):
        self.target = target
        self.git_commit = git_commit
        self.test = test
        self.records: list[VerdictRecord] = []
        self._clock = time.perf_counter()

    # What a test needs to know about its claim, without digging into the catalogue.
    @property
    def claim(self) -> Claim:
        return self.target.claim

    @property
    def model(self) -> str:
        return self.target.model

    @property
    def models(self) -> tuple[str, ...]:
        return self.target.models

    @property
    def tier(self) -> str:
        return self.target.tier

    @property
    def params(self) -> Mapping[str, Any]:
        return self.target.claim.params

    @property
    def seed_figures(self) -> Mapping[str, Any]:
        return self.target.claim.seed.get(self.target.model, {})

    def record(self, protocol: str, figures: Mapping[str, Any], holds, *, key: str | None = None,
               expectation: str | None = None, seeds: Iterable[int] = (), suite_hash: str | None = None,
               ci: Mapping[str, Any] | None = None, notes: str = "", revised: bool = False,
               reason: str = "", plan: str = "", undecided: str = "") -> VerdictRecord:
        """Report what was measured under ``protocol``; returns the verdict record.

        ``holds``: whether the claim's rule holds (False = its falsifier fired), or the
        :class:`~engine.decisions.Evidence` that decided it (undecided evidence gives INCONCLUSIVE), or a mapping
        of part name -> evidence for a claim with several parts. ``key``: the figure compared with the seed's
        (default: the catalogue's). ``ci``: figure -> (low, high). ``revised=True`` with a ``reason`` marks a
        documented revision. ``plan``: the measurement plan whose sizes were used. ``undecided``: with a bool
        ``holds``, why the data cannot decide the rule (INCONCLUSIVE), e.g. a precondition that did not hold.
        """
        self._check_protocol(protocol)
        holds, evidence, from_evidence, parts, n_to_decide = _read_holds(holds, self.claim.id)
        if protocol == "rigorous" and evidence and not undecided:
            undecided = calibration_gate(self.claim.id, evidence)
        if undecided and evidence:  # a precondition the test reports travels with the evidence: recompute() agrees
            evidence = [{**e, "params": {**(e.get("params") or {}), "precondition": undecided}} for e in evidence]
        undecided = "; ".join(t for t in dict.fromkeys((undecided, from_evidence)) if t)  # the test's reason first
        if revised and not reason:
            raise ClaimError(f"{self.claim.id}: revised=True needs a reason (the documented revision)")
        measurement = Measurement(
            protocol=protocol, figures=plain(dict(figures), "figures"), holds=holds, key=key,
            expectation=expectation, seeds=tuple(plain(list(seeds), "seeds")), suite_hash=suite_hash,
            ci=_intervals(ci or {}, self.claim.id), notes=notes, revised=revised, reason=reason,
            undecided=undecided, parts=parts, against=_against(evidence),
        )
        decision = decide(self.claim, self.model, measurement)
        tolerance = decision.tolerance
        if expectation is None:
            expectation = (f"{decision.key} = {fmt(decision.expected)} {tolerance.describe()} (seed figure)"
                           if tolerance else self.claim.rule)
        record = self._new(protocol, decision.verdict, decision.reason, key=decision.key,
                           measured=decision.measured, expected=decision.expected, expectation=expectation,
                           tolerance=tolerance.to_dict() if tolerance else None, figures=measurement.figures,
                           ci=measurement.ci, seeds=list(measurement.seeds), suite_hash=suite_hash, notes=notes,
                           thresholds=plain(dict(self.claim.params), "params"), evidence=evidence, revised=revised,
                           n_to_decide=n_to_decide if decision.verdict is Verdict.INCONCLUSIVE else None,
                           plan=plan, catalogue_sha256=self.claim.catalogue_sha256)
        if decision.verdict is Verdict.REVISED:
            warnings.warn(ClaimRevisedWarning(f"{self.claim.id} on {self.model} ({protocol}): REVISED - "
                                              f"{decision.reason}"), stacklevel=2)
        return record

    @property
    def unrecorded(self) -> tuple[str, ...]:
        """This test's protocols that have no verdict yet."""
        done = {r.protocol for r in self.records}
        return tuple(p for p in self.target.protocols if p not in done)

    def untested(self, reason: str, protocols: Iterable[str] | None = None) -> list[VerdictRecord]:
        """Record UNTESTED with ``reason`` for ``protocols`` (default: every protocol of this test not yet recorded)."""
        if not reason:
            raise ClaimError(f"{self.claim.id}: UNTESTED needs a reason")
        records = []
        for protocol in self.unrecorded if protocols is None else protocols:
            self._check_protocol(protocol)
            records.append(self._new(protocol, Verdict.UNTESTED, reason, expectation=self.claim.rule,
                                     notes=self.claim.notes or ""))
        return records

    def _check_protocol(self, protocol: str) -> None:
        if protocol not in self.target.protocols:
            raise ClaimError(f"{self.claim.id}: protocol {protocol!r} is not one of this test's protocols "
                             f"{self.target.protocols}")
        if any(r.protocol == protocol for r in self.records):
            raise ClaimError(f"{self.claim.id} on {self.model}: protocol {protocol!r} recorded twice in one test")

    def _new(self, protocol: str, verdict: Verdict, reason: str, **fields) -> VerdictRecord:
        now = time.perf_counter()
        claim = self.claim
        record = VerdictRecord(
            claim_id=claim.id, model=self.model, tier=self.tier, protocol=protocol, verdict=verdict,
            reason=reason, statement=claim.statement, block=claim.block, git_commit=self.git_commit,
            duration_s=round(now - self._clock, 3), test=self.test,
            timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields,
        )
        self._clock = now
        self.records.append(record)
        return record


def calibration_gate(claim_id: str, evidence: list[dict]) -> str:
    """Why a rigorous record cannot be decided at its sample size ("" when it can): its smallest family is below
    the n at which the claim's rules held their error bounds in the committed calibration
    (``engine/data/calibration.json``, :func:`engine.decisions.calibrated_min_n`). Decisive exact ties and failed
    preconditions are left as they are."""
    from engine.decisions import Evidence, calibrated_min_n

    min_n, rules = calibrated_min_n(claim_id)
    if min_n is None:
        return ""
    sizes = []
    for e in evidence:
        ev = Evidence.from_dict({k: v for k, v in e.items() if k != "part"})
        if ev.params.get("precondition") or ev.details.get("tied_units"):
            continue
        sizes.append(ev.per_family)
    smallest = min(sizes) if sizes else None
    if smallest is None or smallest >= min_n:
        return ""
    if min_n >= 10**9:
        return f"the rule ({rules}) held its error bounds at no planned sample size (engine/data/calibration.json)"
    return (f"below the rule's calibrated n: {smallest} per family, the rule ({rules}) holds its error bounds from "
            f"{min_n} per family (engine/data/calibration.json)")


def _read_holds(holds, claim_id: str) -> tuple[bool, list[dict], str, dict[str, str], int | None]:
    """(holds, evidence dicts, what is undecided, part outcomes, projected n) from what a test reported."""
    from engine.decisions import Evidence, Outcome

    if isinstance(holds, Evidence):
        held, evidence, undecided, _, _ = _read_holds({"": holds}, claim_id)
        return held, evidence, undecided, {}, holds.n_to_decide
    if isinstance(holds, Mapping):
        if not holds or not all(isinstance(v, Evidence) for v in holds.values()):
            raise ClaimError(f"{claim_id}: holds must be a bool, an Evidence or a mapping of part -> Evidence")
        outcomes = {str(name): ev.outcome.value for name, ev in holds.items()}
        evidence = [{"part": str(name), **ev.to_dict()} for name, ev in holds.items()]
        undecided = "; ".join(f"{name}: {ev.undecided or ev.statement}" if name else (ev.undecided or ev.statement)
                              for name, ev in holds.items() if ev.outcome is Outcome.UNDECIDED)
        projected = [ev.n_to_decide for ev in holds.values() if ev.outcome is Outcome.UNDECIDED and ev.n_to_decide]
        decided_for = all(ev.outcome is Outcome.FOR for ev in holds.values())
        parts = outcomes if len(holds) > 1 or "" not in holds else {}
        return decided_for, evidence, undecided, parts, max(projected) if projected else None
    if hasattr(holds, "item"):
        holds = holds.item()
    if not isinstance(holds, bool):
        raise ClaimError(f"{claim_id}: holds must be True or False (or Evidence), got {holds!r}")
    return holds, [], "", {}, None


def _against(evidence: list[dict]) -> str:
    """The statements of the evidence decided against, one line: what a FAILED reason shows when no key figure does."""
    return "; ".join((f"{e['part']}: " if e.get("part") else "") + str(e.get("statement", ""))
                     for e in evidence if e.get("outcome") == "against")


def _intervals(ci: Mapping[str, Any], claim_id: str) -> dict[str, list[float]]:
    out = {}
    for name, interval in ci.items():
        interval = plain(interval, f"ci.{name}")
        if not (is_number_list(interval) and len(interval) == 2 and interval[0] <= interval[1]):
            raise ClaimError(f"{claim_id}: ci[{name!r}] must be (low, high) with low <= high, got {interval!r}")
        out[str(name)] = interval
    return out
