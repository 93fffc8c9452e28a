"""The measurement planner: what each claim will measure, collected before any test runs.

Each claim row's rule template names the measurements it reads as specs (``engine.templates``: ``specs(ctx)``),
and each spec describes itself as a :class:`Need` (kind, method / component, sample, positions, number of
examples) on one model with the plan's sizes: the same specs the run measures, so there is no second description.
A claim gives the planner a :class:`Dynamic` (its needs, and what a procedure decides at run time).
:func:`plan` takes the collected claim tests' declarations and returns a :class:`Plan`: every distinct
measurement once, with the claims that read it, ordered model by model (the xdist groups keep a model on one
worker, so it is loaded once per process), and what is left to the run itself (``dynamic``: measurements whose
identity depends on earlier results, e.g. the LoRA block's atlas-guided layers).

Sharing is by identity: two claims that declare the same need on the same model read one measurement (the
content-addressed cache computes it once; ``tests/test_planner.py`` counts forward passes per measurement key).
Different samples are not merged into a union: the rigorous seeds' stratified samples do not overlap
(Jaccard 0.00 at 2 per family over the 208-209 short prompts per family), so a union would save nothing and would
change the seeds' batches.

The declarations are checked against what the runs really measured: ``tests/test_planner.py`` compares each
claim's declared measurements with the ledger of the last smoke run (``results/bench/plan-smoke-timings.json``).

Before a session runs, :func:`check_session` validates the plans file (``engine.plans.validate``) and prices the
session's plan: :func:`estimate` scales each block's measured core time of the reference plan (``default``, from
``results/bench/plan-default-timings.json``) by the ratio of the two plans' work (:func:`block_work`: examples x
passes from the sizes). A plan estimated above :data:`COST_LIMIT_S` of core time needs ``--yes``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import plans as plans_data


@dataclass(frozen=True)
class Need:
    """One measurement a claim asks for on ``model``.

    ``kind`` is the ledger's kind (``atlas``, ``skip-overlaps``, ``steer-study-v2`` ...); ``detail`` what the
    ledger shows in brackets (``zero/layer``); ``sample`` names the examples (``rigorous seed 42``, ``seed
    first-k``, ``nl seed 42``); ``variant`` anything else that makes it another measurement (positions, a
    method's reference); ``n`` the number of examples (None where the ledger shows none).
    """

    model: str
    kind: str
    sample: str
    n: int | None = None
    detail: str = ""
    variant: str = ""

    @property
    def what(self) -> str:
        """The ledger's description of this measurement (``engine.progress``): "atlas(zero/layer) m n=24"."""
        kind = f"{self.kind}({self.detail})" if self.detail else self.kind
        return f"{kind} {self.model}" + (f" n={self.n}" if self.n is not None else "")


@dataclass(frozen=True)
class Dynamic:
    """What a claim declares: the measurements known before it runs, and (``why``) what it decides at run time."""

    needs: tuple[Need, ...]
    why: str


@dataclass
class Plan:
    """Every distinct declared measurement once (model by model), the claims that read each, what is dynamic."""

    name: str
    users: dict[Need, list[str]] = field(default_factory=dict)  # need -> the claim tests reading it, in order
    dynamic: dict[str, str] = field(default_factory=dict)  # claim test -> why part of it is decided at run time
    claims: list[str] = field(default_factory=list)
    left_out: str = ""  # the cpu models the plan does not run, and which plans do (engine.plans.left_out)

    @property
    def measurements(self) -> list[Need]:
        order = list(dict.fromkeys(n.model for n in self.users))
        return sorted(self.users, key=lambda n: order.index(n.model))

    @property
    def shared(self) -> int:
        """Measurements read by two claim tests or more."""
        return sum(1 for users in self.users.values() if len(set(users)) > 1)

    @property
    def requests(self) -> int:
        """Declared requests before sharing (one per claim test and need)."""
        return sum(len(users) for users in self.users.values())

    def per_model(self) -> Counter:
        return Counter(n.model for n in self.users)

    def summary(self) -> str:
        models = ", ".join(f"{m or 'cross-model'} {k}" for m, k in self.per_model().items())
        text = (f"[plan] {self.name}: {len(self.claims)} claim test(s) declare {self.requests} measurement request(s) "
                f"= {len(self.users)} distinct measurement(s) ({self.shared} read by 2+ claims; {models})")
        if self.dynamic:
            claims = sorted({label.split("[")[0] for label in self.dynamic})
            whys = sorted(set(self.dynamic.values()))
            text += (f"; decided at run time in {len(self.dynamic)} test(s) ({', '.join(claims)}): "
                     f"{'; '.join(whys)}")
        if self.left_out:
            text += f"; {self.left_out}"
        return text


def plan(name: str, tests: Iterable[tuple[str, Dynamic]]) -> Plan:
    """The plan of the collected claim tests ``(label, declared)`` (each row's template's declaration,
    ``engine.templates``): shared needs merged."""
    out = Plan(name)
    for label, got in tests:
        out.claims.append(label)
        for need in got.needs:
            out.users.setdefault(need, []).append(label)
        if got.why:
            out.dynamic[label] = got.why
    return out


# ------------------------------------------------------------------------------------------------ cost

COST_LIMIT_S = 4 * 3600  # core time of a plan's cpu tier above which a session asks for --yes
REFERENCE_PLAN = plans_data.DEFAULT_PLAN  # the plan whose measured timings price every plan
TIMINGS = Path(__file__).resolve().parents[1] / "results" / "bench" / f"plan-{REFERENCE_PLAN}-timings.json"
# block_work of the reference plan's cpu tier as it was when TIMINGS were measured (plans.toml at eaea2be, timings
# of run 20261205T032734Z-eaea2be23bc6: atlas at its last stage, 5 per family): kept here, so that editing the
# reference plan's own sizes is priced too. Re-pin both together. A timings file that records each model's atlas
# work (``atlas_work``, since b241be0) prices the atlas block by it instead (run b241be0: SmolLM2 204, Gemma 96).
# (At c390af4 it was steer 261, quant 168, lora 18480 work units: priced from those timings, eaea2be's plan was
# estimated at 2383 core-s and measured 2260. Its steer block, 32 -> 100 random controls, was priced at 2.6x c390af4's
# 136 core-s and measured 172 (1.3x): the block's fixed cost, not its controls, is most of its time; atlas 1336 ->
# 1350, quant 191 -> 199, lora 612 -> 540.)
REFERENCE_WORK = {"atlas": 204.0, "steer": 669.0, "quant": 192.0, "lora": 14520.0}


def block_work(block: str, t: Mapping[str, Any]) -> float:
    """A block's work on one model, in units its core time is taken to be proportional to (examples x passes), from
    one plan table of ``engine/data/plans.toml``: only ratios of two plans' works are used."""
    if block == "atlas":
        families = len(t.get("families") or ()) or 12
        per = t["seed_per_family"] + 3 * t["rigorous_per_family"] + t["nl_per_family"]
        grown = max(0, (t.get("breadth_per_family") or 0) - t["rigorous_per_family"])  # HUB-BREADTH's 4 families
        if grown:
            from engine.tasks import BREADTH_FAMILIES

            return (families * per + len(BREADTH_FAMILIES) * grown) / t.get("layer_stride", 1)
        return families * per / t.get("layer_stride", 1)
    if block == "steer":
        scales = len(t["scales"])
        return t["n_select"] * scales + t["n_test"] * (scales + t["n_random"]) + t["n_seed_prompts"] + t["n_pairs"]
    if block == "quant":
        precisions = len(t["precisions"])
        return (t["n_eval"] * precisions * (1 + len(t["rigorous_scales"]))
                + (t["rounds"] + t["warmup"]) * precisions * t["speed_batch"])
    if block == "lora":
        return sum(lora_claim_work(claim, t) for claim in LORA_TRAININGS)
    raise ValueError(f"unknown block {block!r}")


# the lora block's trainings per training seed, by the claim that needs them (their sum is the block's work; a plan's
# per_claim fields reprice that claim's part alone, :func:`lora_work`)
LORA_TRAININGS = {"LORA-ATLAS": lambda t: 1 + t["n_random"],  # the atlas-guided set and the random-matched ones
                  "LORA-LATE": lambda t: 1,  # the all-linear adapter (LORA-LATE, LOCKIN)
                  "LORA-OPROJ": lambda t: len(t["sweep_modules"]),
                  "SKIP-RECOVER": lambda t: t["n_skip_random"]}


def lora_claim_work(claim: str, t: Mapping[str, Any]) -> float:
    """The work of ``claim``'s part of the lora block under the sizes ``t``: trainings x (steps x batch + held-out
    examples) x prompt length."""
    per = t["steps"] * t["batch_size"] + t["n_eval"] * len(t["families"])
    return t["n_train_seeds"] * LORA_TRAININGS[claim](t) * per * (t.get("max_len") or 256)


# claims whose trainings are another claim's unless a plan sizes them apart (then they train their own, priced as it)
SHARED_TRAININGS = {"LOCKIN": "LORA-LATE"}  # the all-linear adapter, with checkpoints


def lora_work(t: Mapping[str, Any], per_claim: Mapping[str, Mapping[str, Any]],
              models: Sequence[str] = ()) -> float:
    """The lora block's work per model (the mean over ``models``) with the claims a plan sizes apart
    (``per_claim``: claim id, or ``"CLAIM-ID[model]"`` for one model, -> its fields) priced at their own sizes.
    Without ``models``: the models that a ``"CLAIM-ID[model]"`` key names (none: every model alike)."""
    named = [plans_data.split_claim_key(k)[1] for k in per_claim]
    models = list(models) or sorted({m for m in named if m}) or [None]

    def own(claim: str, model: str | None) -> dict[str, Any]:
        return {**t, **per_claim.get(claim, {}),
                **(per_claim.get(plans_data.claim_key(claim, model), {}) if model else {})}

    def apart(claim: str, model: str | None) -> bool:
        return claim in per_claim or bool(model and plans_data.claim_key(claim, model) in per_claim)

    def one(model: str | None) -> float:
        shared = sum(lora_claim_work(owner, own(c, model)) for c, owner in SHARED_TRAININGS.items() if apart(c, model))
        return sum(lora_claim_work(c, own(c, model)) for c in LORA_TRAININGS) + shared
    return sum(one(m) for m in models) / len(models)


class TimingsWarning(UserWarning):
    """A plan's timings file could not be used (malformed): the ETA, the longest-first order and the cost estimate
    fall back to their defaults."""


MAX_TIMINGS_BYTES = 64 * 2**20
# (path, size, mtime) -> (the checked content or None, what is wrong with it); and the malformed ones warned about
_TIMINGS_READ: dict[tuple[str, int, int], tuple[dict | None, str]] = {}
_TIMINGS_WARNED: set[tuple[str, int, int]] = set()


def _finite_seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")


def _check_timings(data: Any) -> str:
    """What is wrong with a timings file's content ("" when nothing is)."""
    if not isinstance(data, dict):
        return f"a JSON object expected, not {type(data).__name__}"
    for section, needs in (("claims", ("claim",)), ("measurements", ("what",))):
        rows = data.get(section, [])
        if not isinstance(rows, list):
            return f"'{section}' is {type(rows).__name__}, not a list"
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                return f"{section}[{i}] is {type(row).__name__}, not an object"
            for name in needs:
                if not isinstance(row.get(name), str):
                    return f"{section}[{i}].{name} is {type(row.get(name)).__name__}, not a string"
            if not _finite_seconds(row.get("seconds")):
                return f"{section}[{i}].seconds is {str(row.get('seconds'))[:40]!r}, not a finite number >= 0"
            if section == "measurements":
                if not isinstance(row.get("computed"), int):
                    return f"{section}[{i}].computed is {type(row.get('computed')).__name__}, not a count"
                users = row.get("claims", [])
                if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
                    return f"{section}[{i}].claims is not a list of strings"
    return ""


def read_timings(path: str | Path, *, warn: bool = True) -> dict | None:
    """A plan's timings file (``results/bench/plan-<plan>-timings.json``, written by ``claims.progress``), checked:
    a JSON object whose ``claims`` and ``measurements`` are lists of objects with a string ``claim`` / ``what`` and
    finite ``seconds`` >= 0. None when the file does not exist, or (with one :class:`TimingsWarning`, once per
    process and file version) when it is malformed: its readers (ETA, longest-first order, cost estimate) then fall
    back to what they do without timings. ``warn=False``: no warning (an xdist worker: its controller warned)."""
    path = Path(path)
    try:
        stat = path.stat()
    except (OSError, ValueError):
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _TIMINGS_READ:
        data, why = None, ""
        try:
            if stat.st_size > MAX_TIMINGS_BYTES:
                why = f"{stat.st_size} bytes, over {MAX_TIMINGS_BYTES}"
            else:
                data = json.loads(path.read_text(encoding="utf-8"))
                why = _check_timings(data)
        except (OSError, ValueError, RecursionError) as exc:
            why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
        _TIMINGS_READ[key] = (None if why else data, why)
    data, why = _TIMINGS_READ[key]
    if why and warn and key not in _TIMINGS_WARNED:
        import warnings

        _TIMINGS_WARNED.add(key)  # located at the file itself: one line, "PATH:0: TimingsWarning: ..."
        warnings.warn_explicit(f"not a usable timings file ({why}); ignored: no ETA, tests in collection order, "
                               "no cost estimate (the next complete run rewrites it)", TimingsWarning, str(path), 0)
    return data


def measured_block_seconds(timings: Path = TIMINGS) -> dict[str, float]:
    """Core seconds per block of the reference plan's last measured session (its claims' computed seconds); empty
    when there are none (a malformed file: one :class:`TimingsWarning`)."""
    out: dict[str, float] = {}
    for (block, _), seconds in _measured(timings).items():
        out[block] = out.get(block, 0.0) + seconds
    return out


def atlas_work(plan: str) -> dict[str, float]:
    """Each cpu model's atlas :func:`block_work` under ``plan`` as a session runs it (its per-model fields and the
    looks its budget buys, ``engine.studies.atlas.sizes_for``): written into the timings file, so that a later
    plan is priced per model by the work that was timed (:func:`timed_atlas_work`)."""
    from engine.studies.atlas.common import sizes_for
    from engine.verdicts import load_catalogue

    _, table = plans_data.read()
    if "atlas" not in table.get(plan, {}).get("cpu", {}):
        return {}
    out = {}
    for model in plans_data.cpu_models(plan, load_catalogue().cpu_models, "atlas"):
        out[model] = block_work("atlas", plans_data.values(sizes_for("cpu", {"plan": plan}, plan, model)))
    return out


def timed_atlas_work(timings: Path = TIMINGS) -> dict[str, float]:
    """The per-model atlas work the timings file's session ran (``atlas_work``: :func:`atlas_work` at the time);
    empty for a file written before it was recorded (priced by :data:`REFERENCE_WORK` instead)."""
    data = read_timings(timings)
    work = (data or {}).get("atlas_work")
    if not isinstance(work, dict):
        return {}
    return {m: float(w) for m, w in work.items() if isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0}


def measured_model_seconds(block: str, timings: Path = TIMINGS) -> dict[str, float]:
    """Core seconds of ``block`` per model in the reference plan's last measured session (a claim test of a
    "+"-joined group counts evenly for each member); empty when there are none."""
    out: dict[str, float] = {}
    for (b, model), seconds in _measured(timings).items():
        if b == block:
            members = model.split("+")
            for member in members:
                out[member] = out.get(member, 0.0) + seconds / len(members)
    return out


def _measured(timings: Path) -> dict[tuple[str, str], float]:
    """(block, model as the claim test names it) -> the computed seconds of its claim tests in ``timings``."""
    from engine.verdicts import load_catalogue

    data = read_timings(timings)
    if data is None:
        return {}
    catalogue = load_catalogue()
    out: dict[tuple[str, str], float] = {}
    for row in data.get("claims", []):
        claim_id, _, model = row["claim"].partition("[")
        if claim_id in catalogue:
            key = (catalogue[claim_id].block, model.rstrip("]"))
            out[key] = out.get(key, 0.0) + float(row["seconds"])
    return out


def estimate(plan: str, *, path: str | Path | None = None, timings: Path = TIMINGS) -> float | None:
    """Estimated core seconds of ``plan``'s cpu tier (the sum of :func:`estimate_blocks`). None without measured
    timings or a cpu tier."""
    parts = estimate_blocks(plan, path=path, timings=timings)
    return sum(parts.values()) if parts else None


def estimate_blocks(plan: str, *, path: str | Path | None = None, timings: Path = TIMINGS) -> dict[str, float]:
    """Estimated core seconds of each block of ``plan``'s cpu tier: the block's measured seconds under the
    reference plan times the ratio of the plan's :func:`block_work` to the reference's (:data:`REFERENCE_WORK`; a
    block the plan does not size runs the reference plan's sizes). Empty without measured timings or a cpu tier."""
    _, table = plans_data.read(path)
    measured = measured_block_seconds(timings)
    mine, ref = table.get(plan, {}).get("cpu", {}), table.get(REFERENCE_PLAN, {}).get("cpu", {})
    if not mine:
        return {}
    out = {b: seconds * (block_work(b, mine[b]) / REFERENCE_WORK[b] if b in mine else 1.0)
           for b, seconds in measured.items() if b in REFERENCE_WORK and (b in mine or b in ref)}
    apart = plans_data.per_claim(plan, "lora", path=path)
    if "lora" in out and "lora" in mine and apart:  # claims the plan sizes apart: priced at their own sizes
        models = plans_data.plan_models(plan, "lora", path=path)
        out["lora"] *= lora_work(mine["lora"], apart, models) / block_work("lora", mine["lora"])
    timed = timed_atlas_work(timings)
    if "atlas" in out and "atlas" in mine and timed:  # priced per model by the work that was timed
        per_model = measured_model_seconds("atlas", timings)
        out["atlas"] = sum(seconds * block_work("atlas", mine["atlas"]) / timed[m]
                           for m, seconds in per_model.items() if m in timed)
    from engine import budget

    bought = budget.atlas_budget(plan, path=path) if "atlas" in out else None
    if bought is not None:  # what the atlas budget buys; a model the prices do not cover: the priced ones' mean
        priced = [m for m in bought.models.values() if m.cost is not None]
        unpriced = len(bought.models) - len(priced)
        out["atlas"] = bought.spent + (unpriced * bought.spent / len(priced) if priced else out["atlas"])
    return out


def check_session(plan: str | None, *, yes: bool = False, limit_s: float = COST_LIMIT_S,
                  timings: Path = TIMINGS) -> None:
    """Before a session runs: the whole plans file is valid (``engine.plans.validate``), ``plan`` (``--plan``; None:
    the default) exists, and its estimated cost is within ``limit_s`` of core time unless ``yes``. Each failure is
    one :class:`engine.plans.PlanError` line."""
    where, table = plans_data.validate()
    if plan is not None and plan not in table:
        raise plans_data.PlanError(f"--plan {plan}: no such plan in {where} (plans: {', '.join(table)})")
    name = plan or plans_data.DEFAULT_PLAN
    from engine import budget

    budget.check(name)
    if yes:
        return
    cost = estimate(name, timings=timings)
    if cost is not None and cost > limit_s:
        raise plans_data.PlanError(
            f"--plan {name}: estimated {cost / 3600:.1f} h of core time for its cpu tier ({where}'s sizes priced by "
            f"the {REFERENCE_PLAN} plan's measured timings, {timings.name}), over the {limit_s / 3600:g} h limit: "
            "pass --yes to run it anyway, or choose a smaller plan")
