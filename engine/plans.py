"""Sample plans as data: every block's per-tier sizes, read from ``engine/data/plans.toml``.

One schema for every block: ``[plans.<plan>.<tier>.<block>]`` (tier ``cpu`` | ``gpu``, block ``atlas`` |
``steer`` | ``quant`` | ``lora``), one key per field of the block's frozen sizes dataclass (``Sizes``,
``SteerSizes``, ``QuantSizes``, ``LoraPlan``). :func:`load` turns a table into that dataclass; each block's
``sizes_for(tier, params)`` (``engine.studies.atlas.sizes_for``, ``engine.studies.steer.sizes_for``,
``engine.studies.quant.quant_sizes_for``, ``engine.lora.plan_for``) calls it.

The table (with what it inherits, below) must list every field, except one whose dataclass default is None (TOML has no null): left out, it is
None. Arrays become tuples; an integer where the field is a float becomes a float. The loader sets two fields
itself, never read from the file: ``name`` (the plan's name: ``sizes.name``, for the records of a later issue)
and, where the dataclass has one, ``tier``. Any unknown plan, tier, block or key, a missing field or a value of
the wrong type is a :class:`PlanError` naming the file and the key.

A block table may start from another plan's table of the same tier and block: ``inherits = "<plan>"`` copies
that table (itself resolved first), then the keys the table lists replace its values (a field cannot be set back
to None: TOML has no null). An unknown base plan, a base without that table or a cycle is a :class:`PlanError`
naming the file and the key; :func:`read` returns the resolved tables only.

A plan's cpu tier may list its models: ``[plans.<plan>.cpu] models = [...]`` (registry keys, each one of the
catalogue's ``cpu_models``); a block table may list its own (``[plans.<plan>.cpu.<block>] models = [...]``: that
block's claims run on these instead). :func:`cpu_models` gives them (a plan without a list: every cpu model). The
cpu targets of a claim are chosen from its block's list (``engine.verdicts.Catalogue.cpu_targets(claim, plan)``).
A cpu atlas table may size one model apart: ``[plans.<plan>.cpu.atlas.per_model."<model>"]`` replaces fields of that
table for that model only (``engine.studies.atlas.sizes_for(..., model=...)``). A cpu block table may size one claim
apart: ``[plans.<plan>.cpu.<block>.per_claim."<CLAIM-ID>"]`` replaces fields for that claim's measurements only
(``engine.lora.plan_for(..., claim=...)``: e.g. more training seeds, fresh ones, for a question the plan's last run
left close); a key ``"<CLAIM-ID>[<model>]"`` (the record's own name) sizes that claim apart on one model only, after
the claim's own table (e.g. fresh seeds where one model's question is still close and the other's is decided). Neither ``models``, ``per_model`` nor ``per_claim`` is inherited (``inherits`` copies sizes; which
models a plan runs and which claims it sizes apart are its own).

A plan's cpu tier may give a budget: ``[plans.<plan>.cpu] budget_core_s = { atlas = 1500, steer = 300, ... }``, the
core seconds each block may spend (a finite number > 0 per block the tier sizes; not inherited); :func:`budget_of`
reads it and ``engine.budget`` spends it (the atlas block's sequential looks, model by model).

The whole file is checked when it is read (:func:`read`), every plan, tier and block: a value out of its field's
range (:data:`RANGES`: sizes and strides >= 1, ``n_resamples`` >= 100, fractions in (0, 1], ...; an absurd count
above 1,000,000 is a typo) or not finite (NaN, inf) is a :class:`PlanError` naming the file, the table and the key
with the accepted range. :func:`validate` also loads every table into its block's dataclass (missing keys, wrong
types, unknown keys), as the pytest plugin does before anything runs. ``MI_ATLAS_PLANS=<file>`` replaces the
packaged file.

Overrides by a claim's ``[claim.params]`` (:func:`override`), in this order:

1. ``plan = "<name>"`` selects the plan (default ``"default"``);
2. a key named like a field of the claim's block's sizes replaces that field on both tiers;
3. a sub-table ``[claim.params.cpu]`` / ``[claim.params.gpu]`` replaces fields on that tier only (every key of it
   must be a field of the block's sizes);
4. every other key is a rule threshold read by the block's procedure, never a size. ``name`` and ``tier`` cannot
   be overridden.

Nothing here imports another engine module: the blocks pass their dataclass in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tomllib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

PLANS_FILE = "engine/data/plans.toml"
PLANS_ENV = "MI_ATLAS_PLANS"  # a plans file that replaces the packaged one (read by every loader of the process)
DEFAULT_PLAN = "default"
TIERS = ("cpu", "gpu")
BLOCKS = ("atlas", "steer", "quant", "lora")
SET_BY_LOADER = ("name", "tier")  # fields the loader fills in, never read from the file or a claim's params
INHERITS = "inherits"  # a block table's key: the plan whose same tier / block table it starts from
MODELS = "models"  # [plans.<plan>.cpu] models = [...]: the cpu-tier models the plan runs (default: all); the same
# key in a cpu block table: that block's models
PER_MODEL = "per_model"  # [plans.<plan>.cpu.<block>.per_model."<model>"]: that model's own values of some fields
BUDGET = "budget_core_s"  # [plans.<plan>.cpu] budget_core_s = {<block> = <core seconds>, ...} (engine.budget)
PER_MODEL_BLOCKS = ("atlas",)  # the blocks whose sizes_for is given the model (engine.studies.atlas.sizes_for)
PER_CLAIM = "per_claim"  # [plans.<plan>.cpu.<block>.per_claim."<CLAIM-ID>"]: that claim's own values of some fields
PER_CLAIM_BLOCKS = ("lora",)  # the blocks whose sizes are read with the claim (engine.lora.plan_for)

T = TypeVar("T")


class PlanError(ValueError):
    """The plans file or a claim's size override is malformed; the message names the file (or claim) and key."""


# --------------------------------------------------------------------------------------------- the file


def read(path: str | Path | None = None) -> tuple[str, dict[str, dict[str, dict[str, dict[str, Any]]]]]:
    """(where, plans): the parsed plans file, its plan / tier / block structure and every value's range checked,
    every ``inherits`` resolved (each block table holds its fields only). Default: ``$MI_ATLAS_PLANS`` if set,
    else the packaged ``engine/data/plans.toml``."""
    where, tables, _ = _read_file(path)
    return where, tables


@dataclasses.dataclass(frozen=True)
class PlanModels:
    """What one plan's cpu tier says beside its block tables: its ``models`` list (None: every cpu model), each
    block's own list (``[plans.<plan>.cpu.<block>] models``), each block's per-model fields (``per_model``) and
    its budget in core seconds per block (``budget_core_s``; empty: none)."""

    models: tuple[str, ...] | None = None
    blocks: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    per_model: Mapping[str, Mapping[str, Mapping[str, Any]]] = dataclasses.field(default_factory=dict)
    per_claim: Mapping[str, Mapping[str, Mapping[str, Any]]] = dataclasses.field(default_factory=dict)
    budget: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def listed(self, block: str | None = None) -> tuple[str, ...] | None:
        """The models ``block`` runs (its own list, else the tier's; None: every cpu model)."""
        return self.blocks.get(block, self.models) if block is not None else self.models


def _read_file(path: str | Path | None = None) -> tuple[str, dict, dict[str, PlanModels]]:
    """(where, plans, models): :func:`read` plus each plan's cpu model lists and per-model fields
    (:class:`PlanModels`; a plan that says nothing about models is not in it)."""
    if path is None:
        path = os.environ.get(PLANS_ENV) or None
        if path is None:
            return _default()
        return _read_cached(path)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"plans file {path}: cannot read it ({exc})") from exc
    return (str(path), *parse_file(text, str(path)))


@lru_cache(maxsize=8)
def _read_cached(path: str):
    return _read_file(Path(path))


@lru_cache(maxsize=1)
def _default():
    text = resources.files("engine").joinpath("data/plans.toml").read_text(encoding="utf-8")
    return (PLANS_FILE, *parse_file(text, PLANS_FILE))


def parse(text: str, where: str = "<plans>") -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """The plans of a plans file's text (:func:`parse_file` without the cpu model lists)."""
    return parse_file(text, where)[0]


def parse_file(text: str, where: str = "<plans>") -> tuple[dict[str, dict[str, dict[str, dict[str, Any]]]],
                                                           dict[str, PlanModels]]:
    """(plans, models): every plan / tier / block table with its values checked as written and its ``inherits``
    resolved (:func:`_resolve`), and each plan's cpu model lists and per-model fields (:class:`PlanModels`; a plan
    that says nothing about models is not in it)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{where}: not valid TOML ({exc})") from exc
    unknown = sorted(set(data) - {"plans"})
    if unknown:
        raise PlanError(f"{where}: unknown key {unknown[0]!r} (the file holds only [plans.<plan>.<tier>.<block>])")
    plans = data.get("plans", {})
    if not plans:
        raise PlanError(f"{where}: no [plans.<plan>.<tier>.<block>] tables")
    models: dict[str, PlanModels] = {}
    for name, tiers in plans.items():
        _table(tiers, f"{where}: [plans.{name}]")
        listed, per_block, per_model, per_claim, budget = None, {}, {}, {}, {}
        for tier, blocks in tiers.items():
            if tier not in TIERS:
                raise PlanError(f"{where}: unknown key 'plans.{name}.{tier}': a tier is one of {', '.join(TIERS)}")
            _table(blocks, f"{where}: [plans.{name}.{tier}]")
            if MODELS in blocks:
                listed = _models(blocks.pop(MODELS), tier, f"{where}: 'plans.{name}.{tier}.{MODELS}'")
            spend = blocks.pop(BUDGET, None)
            for block, fields in blocks.items():
                if block not in BLOCKS:
                    also = f" (or, in the cpu tier, {MODELS} = [...] or {BUDGET} = {{...}})" if tier == "cpu" else ""
                    raise PlanError(f"{where}: unknown key 'plans.{name}.{tier}.{block}': a block is one of "
                                    f"{', '.join(BLOCKS)}{also}")
                _table(fields, f"{where}: [plans.{name}.{tier}.{block}]")
                key = f"plans.{name}.{tier}.{block}"
                if MODELS in fields:
                    per_block[block] = _models(fields.pop(MODELS), tier, f"{where}: '{key}.{MODELS}'")
                if PER_MODEL in fields:
                    per_model[block] = _per_model(fields.pop(PER_MODEL), tier, block, f"{where}: '{key}.{PER_MODEL}'")
                if PER_CLAIM in fields:
                    per_claim[block] = _per_model(fields.pop(PER_CLAIM), tier, block, f"{where}: '{key}.{PER_CLAIM}'",
                                                  what="claim")
                for field, value in fields.items():
                    if field == INHERITS:
                        continue  # checked when resolved
                    check_value(field, value, f"{where}: '{key}.{field}'")
            if spend is not None:  # after the blocks: an unknown block table is named first
                budget = _budget(spend, tier, blocks, f"plans.{name}.{tier}", where)
        if listed is not None or per_block or per_model or per_claim or budget:
            models[name] = PlanModels(listed, per_block, per_model, per_claim, budget)
    return _resolve(plans, where), models


def _budget(value: Any, tier: str, blocks: Mapping[str, Any], key: str, file: str) -> dict[str, float]:
    """A plan's cpu budget as written: a table of block -> core seconds (a finite number > 0), each block one
    the tier sizes."""
    where = f"{file}: '{key}.{BUDGET}'"
    if tier != "cpu":
        raise PlanError(f"{where}: a budget is given in the cpu tier only (the gpu tier runs the seed's sizes)")
    if not isinstance(value, dict) or not value:
        raise PlanError(f"{where} must be a table of block = core seconds, e.g. {{ atlas = 1500 }}, got {value!r}")
    out = {}
    for block, seconds in value.items():
        if block not in BLOCKS:
            raise PlanError(f"{where}: unknown block {block!r} (blocks: {', '.join(BLOCKS)})")
        if block not in blocks:
            raise PlanError(f"{where}: {block!r}: there is no [{key}.{block}] table to spend it on")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or seconds <= 0:
            raise PlanError(f"{where}.{block}: {seconds!r} is not a number of core seconds > 0")
        out[block] = float(seconds)
    return out


def budget_of(plan: str, *, path: str | Path | None = None) -> dict[str, float]:
    """The core seconds each cpu block of ``plan`` may spend (``budget_core_s``; empty: the plan has no budget)."""
    _, _, models = _read_file(path)
    return dict(models.get(plan, PlanModels()).budget)


def _models(value: Any, tier: str, where: str) -> tuple[str, ...]:
    """A plan's cpu model list as written: a non-empty array of distinct registry keys (checked against the
    catalogue's cpu models by :func:`cpu_models`)."""
    if tier != "cpu":
        raise PlanError(f"{where}: only the cpu tier lists its models (a gpu-tier claim runs on its own models, "
                        "engine/data/claims.toml)")
    if not isinstance(value, list) or not value or not all(isinstance(m, str) and m for m in value):
        raise PlanError(f"{where} = {_short(value)}: expected a non-empty array of model keys (strings)")
    if len(set(value)) != len(value):
        twice = next(m for m in value if value.count(m) > 1)
        raise PlanError(f"{where}: {twice!r} is listed twice")
    return tuple(value)


def _per_model(value: Any, tier: str, block: str, where: str, what: str = "model") -> dict[str, dict[str, Any]]:
    """A block's ``per_model`` (or ``per_claim``: ``what="claim"``) table as written: model key (claim id) -> a
    table of that block's fields (each value checked as the block table's are; the keys against the block's sizes
    by :func:`validate`, the models against the catalogue's cpu models by :func:`check_models`, the claims against
    the catalogue by ``tests/test_plans.py``)."""
    blocks = PER_MODEL_BLOCKS if what == "model" else PER_CLAIM_BLOCKS
    if tier != "cpu":
        raise PlanError(f"{where}: only the cpu tier sizes a {what} apart (the gpu tier runs the seed's sizes)")
    if block not in blocks:
        raise PlanError(f"{where}: only the {', '.join(blocks)} block reads per-{what} sizes (its sizes are read "
                        f"with the {what})")
    if not isinstance(value, dict) or not value:
        raise PlanError(f"{where} = {_short(value)}: expected a table of {what} keys, each a table of fields")
    out: dict[str, dict[str, Any]] = {}
    for model, fields in value.items():
        at = f'{where[:-1]}."{model}"\'' if where.endswith("'") else f"{where}.{model}"
        if not isinstance(fields, dict) or not fields:
            raise PlanError(f"{at} = {_short(fields)}: expected a table of {block} fields and their values")
        for field, v in fields.items():
            if field in (INHERITS, MODELS, PER_MODEL, PER_CLAIM, *SET_BY_LOADER):
                raise PlanError(f"{at[:-1]}.{field}': not a field that can be set for one {what}")
            check_value(field, v, f"{at[:-1]}.{field}'")
        out[model] = dict(fields)
    return out


def _resolve(plans: dict, where: str) -> dict:
    """Every block table with its ``inherits = "<plan>"`` resolved: the base plan's table of the same tier and
    block (itself resolved first), then the keys the table lists. An unknown base, a base without that table or a
    cycle is a :class:`PlanError` naming the file and the key."""
    done: dict[tuple[str, str, str], dict[str, Any]] = {}

    def table(name: str, tier: str, block: str, chain: tuple[str, ...]) -> dict[str, Any]:
        if (name, tier, block) in done:
            return done[name, tier, block]
        own = plans[name][tier][block]
        if INHERITS not in own:
            done[name, tier, block] = dict(own)
            return done[name, tier, block]
        base, key = own[INHERITS], f"plans.{name}.{tier}.{block}.{INHERITS}"
        if not isinstance(base, str):
            raise PlanError(f"{where}: '{key}' = {_short(base)}: expected a plan name (a string)")
        if base not in plans:
            raise PlanError(f"{where}: '{key}' = {base!r}: no such plan (plans: {', '.join(plans)})")
        if base in chain:
            cycle = " -> ".join((*chain[chain.index(base):], base))
            raise PlanError(f"{where}: '{key}' = {base!r}: inheritance cycle ({cycle}, each "
                            f"[plans.<plan>.{tier}.{block}]); a table inherits from a plan that does not inherit it")
        if block not in plans[base].get(tier, {}):
            raise PlanError(f"{where}: '{key}' = {base!r}: plan {base!r} has no table [plans.{base}.{tier}.{block}] "
                            "to inherit")
        inherited = table(base, tier, block, (*chain, base))
        done[name, tier, block] = inherited | {k: v for k, v in own.items() if k != INHERITS}
        return done[name, tier, block]

    return {name: {tier: {block: table(name, tier, block, (name,)) for block in blocks}
                   for tier, blocks in tiers.items()}
            for name, tiers in plans.items()}


def fingerprint(plan: str, *, path: str | Path | None = None) -> str:
    """16 hex digits of the SHA-256 over everything ``plan`` sizes (its resolved tier / block tables, model lists,
    per-model and per-claim fields, budget): a timings file records it, so an ETA timed under other sizes says so.
    "" for a plan the file does not hold."""
    _, tables, models = _read_file(path)
    if plan not in tables:
        return ""
    text = json.dumps({"tables": tables[plan], "models": dataclasses.asdict(models.get(plan, PlanModels()))},
                      sort_keys=True, default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def cpu_models(plan: str, available: Sequence[str], block: str | None = None, *,
               path: str | Path | None = None) -> tuple[str, ...]:
    """The cpu-tier models ``plan`` runs (in ``block``: its own list when it has one), in the order of
    ``available`` (the catalogue's ``cpu_models``): those listed, or every one of ``available`` when no list
    applies. A listed model that is not in ``available`` is a :class:`PlanError` naming the file and the key."""
    where, tables, models = _read_file(path)
    if plan not in tables:
        raise PlanError(f"{where}: no plan {plan!r} (plans: {', '.join(tables)})")
    selection = models.get(plan, PlanModels())
    listed = selection.listed(block)
    if listed is None:
        return tuple(available)
    key = f"plans.{plan}.cpu.{block}.{MODELS}" if block in selection.blocks else f"plans.{plan}.cpu.{MODELS}"
    _known(listed, available, where, key)
    return tuple(m for m in available if m in listed)


def check_models(plan: str, available: Sequence[str], *, path: str | Path | None = None) -> None:
    """Every model ``plan`` names (its cpu list, each block's list, each ``per_model`` key) is one of
    ``available`` (the catalogue's ``cpu_models``), and a ``per_model`` key is a model its block runs; else a
    :class:`PlanError` naming the file and the key."""
    where, tables, models = _read_file(path)
    if plan not in tables:
        raise PlanError(f"{where}: no plan {plan!r} (plans: {', '.join(tables)})")
    selection = models.get(plan, PlanModels())
    if selection.models is not None:
        _known(selection.models, available, where, f"plans.{plan}.cpu.{MODELS}")
    for block, listed in selection.blocks.items():
        _known(listed, available, where, f"plans.{plan}.cpu.{block}.{MODELS}")
    for block, by_model in selection.per_model.items():
        key = f"plans.{plan}.cpu.{block}.{PER_MODEL}"
        _known(tuple(by_model), available, where, key)
        runs = cpu_models(plan, available, block, path=path)
        idle = [m for m in by_model if m not in runs]
        if idle:
            raise PlanError(f'{where}: \'{key}."{idle[0]}"\': the plan does not run {idle[0]!r} in its {block} block '
                            f"(it runs {', '.join(runs)}): sizes for a model never measured")


def left_out(plan: str, available: Sequence[str], *, path: str | Path | None = None) -> str:
    """One line naming the cpu models of ``available`` that ``plan`` leaves out of some of its cpu blocks, each
    with the plans that run it there ("" when it runs them all): what the session's plan line says."""
    where, tables, _ = _read_file(path)
    blocks = [b for b in BLOCKS if b in tables.get(plan, {}).get("cpu", {})]
    parts = []
    for model in available:
        missing = [b for b in blocks if model not in cpu_models(plan, available, b, path=path)]
        if not missing:
            continue
        others = [name for name in tables if name != plan and all(
            b in tables[name].get("cpu", {}) and model in cpu_models(name, available, b, path=path) for b in missing)]
        runs = f"--plan {' / '.join(others)}" if others else "no plan"
        scope = "" if len(missing) == len(blocks) else f" in {', '.join(missing)}"
        parts.append(f"{model}{scope} runs under {runs}")
    return f"not in plan {plan}: {'; '.join(parts)}" if parts else ""


def claim_key(claim: str, model: str) -> str:
    """The per_claim key that sizes ``claim`` apart on ``model`` alone: the record's name, ``CLAIM-ID[model]``."""
    return f"{claim}[{model}]"


def split_claim_key(key: str) -> tuple[str, str | None]:
    """``"CLAIM-ID[model]"`` -> (claim id, model); ``"CLAIM-ID"`` -> (claim id, None)."""
    if key.endswith("]") and "[" in key:
        claim, model = key[:-1].split("[", 1)
        return claim, model
    return key, None


def claim_fields(plan: str, block: str, claim: str | None, *, path: str | Path | None = None,
                 model: str | None = None) -> dict[str, Any]:
    """The fields ``plan`` sets for ``claim`` alone in its cpu ``block`` (``per_claim``; empty for most), then
    those it sets for ``claim`` on ``model`` alone (key ``"CLAIM-ID[model]"``)."""
    if not claim:
        return {}
    _, _, models = _read_file(path)
    tables = models.get(plan, PlanModels()).per_claim.get(block, {})
    own = dict(tables.get(claim, {}))
    if model:
        own.update(tables.get(claim_key(claim, model), {}))
    return own


def plan_models(plan: str, block: str | None = None, *, path: str | Path | None = None) -> tuple[str, ...]:
    """The cpu models ``plan`` lists for ``block`` (its block list, else its tier list; empty: it lists none)."""
    _, _, models = _read_file(path)
    return tuple(models.get(plan, PlanModels()).listed(block) or ())


def per_claim(plan: str, block: str, *, path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Every claim ``plan`` sizes apart in its cpu ``block``: claim id -> its fields."""
    _, _, models = _read_file(path)
    return {c: dict(f) for c, f in models.get(plan, PlanModels()).per_claim.get(block, {}).items()}


def model_fields(plan: str, block: str, model: str | None, *, path: str | Path | None = None) -> dict[str, Any]:
    """The fields ``plan`` sets for ``model`` alone in its cpu ``block`` (``per_model``; empty for most)."""
    if not model:
        return {}
    _, _, models = _read_file(path)
    return dict(models.get(plan, PlanModels()).per_model.get(block, {}).get(model, {}))


def _known(listed: Sequence[str], available: Sequence[str], where: str, key: str) -> None:
    unknown = [m for m in listed if m not in available]
    if unknown:
        raise PlanError(f"{where}: '{key}': {unknown[0]!r} is not a cpu model of the catalogue "
                        f"(cpu_models: {', '.join(available)})")


# ------------------------------------------------------------------------------------------------ ranges

MAX_COUNT = 1_000_000  # above this a count is a typo (the cost estimate, engine.planner, covers the rest)
# field -> (low, high) of every number of the field (each element of an array); a field not named here (a scale):
# any finite number. LOW_OPEN: fields whose low bound is excluded.
RANGES: dict[str, tuple[float, float]] = {
    # atlas
    "seed_per_family": (1, MAX_COUNT), "rigorous_per_family": (1, MAX_COUNT), "nl_per_family": (1, MAX_COUNT),
    "stages": (1, MAX_COUNT), "breadth_per_family": (1, MAX_COUNT),
    "noop_examples": (1, MAX_COUNT), "skip_single_layers": (1, MAX_COUNT), "n_resamples": (100, MAX_COUNT),
    "batch_size": (1, 4096), "layer_stride": (1, 1000), "reported_per_family": (1, MAX_COUNT),
    # steer
    "n_positive": (1, MAX_COUNT), "per_negative_family": (1, MAX_COUNT), "n_select": (1, MAX_COUNT),
    "n_test": (1, MAX_COUNT), "n_random": (1, MAX_COUNT), "percentile": (0, 100), "n_seed_prompts": (1, MAX_COUNT),
    "n_pairs": (1, MAX_COUNT),
    # quant
    "n_eval": (1, MAX_COUNT), "seed_layer": (0, 10_000), "seed_n_layers": (1, 10_000), "speed_batch": (1, 4096),
    "rounds": (1, 10_000), "warmup": (0, 10_000),
    # lora
    "n_train": (1, MAX_COUNT), "max_len": (1, 1_000_000), "steps": (1, 100_000), "lr": (0, 1),
    "warmup_steps": (0, 100_000), "n_train_seeds": (1, 1000), "r": (1, 4096), "alpha": (0, 1e6), "k": (1, 10_000),
    "checkpoints": (0, 1), "atlas_per_family": (1, MAX_COUNT), "lock_per_family": (1, MAX_COUNT),
    "skip_fraction": (0, 1), "n_skip_random": (1, MAX_COUNT),
    # random seeds
    "seed": (0, 2**32 - 1), "data_seed": (0, 2**32 - 1), "train_seed": (0, 2**32 - 1),
}
LOW_OPEN = {"lr", "alpha", "checkpoints", "skip_fraction", "percentile"}  # must be > low, not >= low


def check_value(field: str, value: Any, where: str) -> None:
    """A :class:`PlanError` naming ``where`` (file, table and key) unless ``value`` is finite and in ``field``'s
    range (:data:`RANGES`; every element of an array; an array is never empty)."""
    if isinstance(value, dict):
        raise PlanError(f"{where}: expected a value, got a table (a size is a number, a string or an array)")
    if isinstance(value, (list, tuple)):
        if not value:
            raise PlanError(f"{where}: an empty array (list at least one value)")
        for i, item in enumerate(value):
            check_value(field, item, f"{where[:-1]}[{i}]'" if where.endswith("'") else f"{where}[{i}]")
        return
    if isinstance(value, bool) or isinstance(value, str) or not isinstance(value, (int, float)):
        return  # the type is checked against the dataclass (load)
    if isinstance(value, float) and not math.isfinite(value):
        raise PlanError(f"{where} = {value}: not a finite number (NaN and inf are refused; write a number)")
    low, high = RANGES.get(field, (-math.inf, math.inf))
    open_low = field in LOW_OPEN
    if value < low or (open_low and value == low) or value > high:
        left = "(" if open_low else "["
        bound = f"{left}{_num(low)}, {_num(high)}]"
        raise PlanError(f"{where} = {_short(value)}: out of range, expected a number in {bound}")


def _num(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) and abs(x) >= 10_000 else f"{x:g}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def validate(path: str | Path | None = None) -> tuple[str, dict[str, dict[str, dict[str, dict[str, Any]]]]]:
    """(where, plans) as :func:`read`, after loading every plan's every tier and block into its block's sizes
    dataclass: a missing key, a wrong type or an unknown key anywhere in the file is a :class:`PlanError`, not
    only in the tables a run happens to read. The blocks register their dataclasses (:func:`sizes_of`)."""
    where, plans = read(path)
    _, _, models = _read_file(path)
    classes = block_classes()
    for name, tiers in plans.items():
        for tier, blocks in tiers.items():
            for block in blocks:
                load(block, classes[block], tier, {"plan": name}, path=path)
        apart = models.get(name, PlanModels())
        for key, tables in ((PER_MODEL, apart.per_model), (PER_CLAIM, apart.per_claim)):
            for block, by_target in tables.items():
                if block not in plans[name].get("cpu", {}):
                    raise PlanError(f"{where}: 'plans.{name}.cpu.{block}.{key}': no table [plans.{name}.cpu.{block}] "
                                    "whose fields it replaces")
                for target in by_target:  # a model (per_model) or a claim id, or "CLAIM-ID[model]" (per_claim)
                    if key == PER_MODEL:
                        load(block, classes[block], "cpu", {"plan": name}, path=path, model=target)
                    else:
                        claim, model = split_claim_key(target)
                        load(block, classes[block], "cpu", {"plan": name}, path=path, claim=claim, model=model)
    return where, plans


_BLOCK_CLASSES: dict[str, type] = {}  # block -> its sizes dataclass, registered by the block (:func:`sizes_of`)


def sizes_of(block: str):
    """Register a dataclass as ``block``'s sizes (a decorator on the class, in the block's own module): what
    :func:`validate` loads that block's tables into. Nothing here imports a block."""
    if block not in BLOCKS:
        raise PlanError(f"sizes_of: unknown block {block!r} (blocks: {', '.join(BLOCKS)})")

    def register(cls: type[T]) -> type[T]:
        _BLOCK_CLASSES[block] = cls
        return cls
    return register


def block_classes() -> dict[str, type]:
    """Each block's registered sizes dataclass; a block not registered yet (its module not imported: the claim
    templates, ``engine.templates``, import every block) is a :class:`PlanError`."""
    missing = [b for b in BLOCKS if b not in _BLOCK_CLASSES]
    if missing:
        raise PlanError(f"the sizes of block(s) {', '.join(missing)} are not registered: import engine.templates "
                        "(every block's sizes register with engine.plans.sizes_of) before validating the plans")
    return dict(_BLOCK_CLASSES)


def _table(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise PlanError(f"{where} must be a table, got {value!r}")


# --------------------------------------------------------------------------------------------- sizes


def load(block: str, cls: type[T], tier: str, params: Mapping[str, Any] | None = None, *,
         path: str | Path | None = None, plan: str | None = None, model: str | None = None,
         claim: str | None = None) -> T:
    """The ``block``'s sizes on ``tier`` (a ``cls`` instance): ``plan`` (a run's plan, ``RunSettings.plan_for``),
    else the plan that ``params`` name (default ``"default"``), read from the plans file; on the cpu tier the
    plan's fields for ``model`` alone (``per_model``, :func:`model_fields`), then for ``claim`` alone
    (``per_claim``, :func:`claim_fields`); then ``params``' overrides (:func:`override`)."""
    where, plans = read(path)
    name = plan or plan_name(params)
    if name not in plans:
        raise PlanError(f"{where}: no plan {name!r} (plans: {', '.join(plans)})")
    if tier not in TIERS:
        raise PlanError(f"{where}: unknown tier {tier!r} (tiers: {', '.join(TIERS)})")
    key = f"plans.{name}.{tier}.{block}"
    if block not in BLOCKS:
        raise PlanError(f"{where}: unknown block {block!r} (blocks: {', '.join(BLOCKS)})")
    if block not in plans[name].get(tier, {}):
        raise PlanError(f"{where}: missing table [{key}]")
    table = plans[name][tier][block]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if tier == "cpu" and model:
        own = model_fields(name, block, model, path=path)
        for k in own:
            if k not in fields:
                known = [f for f in fields if f not in SET_BY_LOADER]
                raise PlanError(f"{where}: unknown key '{key}.{PER_MODEL}.\"{model}\".{k}' (fields of "
                                f"{cls.__name__}: {', '.join(known)})")
        table = {**table, **own}
    if tier == "cpu" and claim:
        own = claim_fields(name, block, claim, path=path, model=model)
        shared = claim_fields(name, block, claim, path=path)  # the claim's own table (on every model)
        for k in own:
            if k not in fields or k in SET_BY_LOADER:
                known = [f for f in fields if f not in SET_BY_LOADER]
                named = claim if k in shared else claim_key(claim, model)  # the table the key is written in
                raise PlanError(f"{where}: unknown key '{key}.{PER_CLAIM}.\"{named}\".{k}' (fields of "
                                f"{cls.__name__}: {', '.join(known)})")
        table = {**table, **own}
    for k in table:
        if k not in fields or k in SET_BY_LOADER:
            known = [f for f in fields if f not in SET_BY_LOADER]
            raise PlanError(f"{where}: unknown key '{key}.{k}' (fields of {cls.__name__}: {', '.join(known)})")
    values: dict[str, Any] = {}
    for fname, f in fields.items():
        if fname in SET_BY_LOADER:
            continue
        default = _default_of(f)
        if fname in table:
            if default is dataclasses.MISSING:
                default = None
            values[fname] = coerce(table[fname], default, f"{where}: '{key}.{fname}'")
        elif default is None:
            values[fname] = None
        else:
            raise PlanError(f"{where}: missing key '{key}.{fname}' (every field of {cls.__name__} is listed; only "
                            "a field whose default is None may be left out)")
    fixed = {"name": name} | ({"tier": tier} if "tier" in fields else {})
    sizes = cls(**values, **{k: v for k, v in fixed.items() if k in fields})
    return override(sizes, tier, params)


def plan_name(params: Mapping[str, Any] | None) -> str:
    """The plan a claim's ``[claim.params]`` select (``plan = "<name>"``), else ``"default"``."""
    name = (params or {}).get("plan", DEFAULT_PLAN)
    if not isinstance(name, str):
        raise PlanError(f"[claim.params] plan must be a plan name (a string), got {name!r}")
    return name


def override(sizes: T, tier: str | None, params: Mapping[str, Any] | None) -> T:
    """``sizes`` with a claim's ``[claim.params]`` size overrides applied: flat keys named like a field (both
    tiers), then the ``params[tier]`` sub-table (that tier only; each of its keys must be a field; ``tier=None``:
    flat keys only). Keys that name no field are rule thresholds and are left alone; ``name`` / ``tier`` are never
    overridden."""
    params = dict(params or {})
    fields = {f.name: f for f in dataclasses.fields(sizes) if f.name not in SET_BY_LOADER}
    changes = {k: v for k, v in params.items() if k in fields}
    sub = params.get(tier) if tier is not None else None
    if sub is not None:
        if not isinstance(sub, Mapping):
            raise PlanError(f"[claim.params] {tier} must be a table of size overrides for the {tier} tier, "
                            f"got {sub!r}")
        unknown = sorted(set(sub) - set(fields))
        if unknown:
            raise PlanError(f"[claim.params.{tier}]: unknown key {unknown[0]!r}: not a field of "
                            f"{type(sizes).__name__} ({', '.join(fields)})")
        changes.update(sub)
    if not changes:
        return sizes
    for k, v in changes.items():
        check_value(k, v, f"[claim.params] {k}")
    typed = {k: coerce(v, getattr(sizes, k), f"[claim.params] {k}") for k, v in changes.items()}
    return dataclasses.replace(sizes, **typed)


def values(sizes: Any) -> dict[str, Any]:
    """The sizes' values without the plan's name (e.g. for a cache key: two plans with the same numbers measure
    the same thing)."""
    out = dataclasses.asdict(sizes)
    out.pop("name", None)
    return out


def coerce(value: Any, like: Any, where: str) -> Any:
    """``value`` in the form of ``like`` (the field's default or current value): arrays -> tuples, an int where a
    float is expected -> float. A value of another type is an error (None as ``like`` accepts an int)."""
    if isinstance(value, (list, tuple)):
        items = list(like) if isinstance(like, (tuple, list)) and like else [None] * len(value)
        sample = items[0] if items else None
        return tuple(coerce(v, sample if sample is not None else v, f"{where}[{i}]") for i, v in enumerate(value))
    if like is None:
        if isinstance(value, (dict, list)):
            raise PlanError(f"{where}: expected a number or string, got {value!r}")
        return value
    if isinstance(like, bool) or isinstance(value, bool):
        if not (isinstance(like, bool) and isinstance(value, bool)):
            raise PlanError(f"{where}: expected {type(like).__name__}, got {value!r}")
        return value
    if isinstance(like, float) and isinstance(value, int):
        return float(value)
    if isinstance(like, tuple):
        raise PlanError(f"{where}: expected an array, got {value!r}")
    if not isinstance(value, type(like)):
        raise PlanError(f"{where}: expected {type(like).__name__}, got {value!r}")
    return value


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING
