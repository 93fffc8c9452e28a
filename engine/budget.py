"""A plan as a budget: how far each model's atlas looks may go within the plan's core seconds (#29 item 2).

A plan's cpu tier may give each block a budget (``[plans.<plan>.cpu] budget_core_s = { atlas = 1500, ... }``,
``engine.plans.budget_of``). It is spent before the run, on costs priced from ``engine/data/atlas-prices.json``
(:data:`PRICES`: each model's measured atlas seconds and the block work they bought, pinned from one timed run of
the reference plan with ``python -m engine.budget --pin TIMINGS``), so the same commit makes the same measurements
on any machine; wall time is reported, never a stopping rule. The prices are data a run never rewrites: priced from
the timings file each run rewrites (``results/bench/plan-default-timings.json``), the run after one that bought
fewer looks would plan differently (seen at b241be0: its own timings priced SmolLM2's second look out).

The atlas block is the one whose sample grows (the plan's ``stages``: sequential looks, ``engine.templates.base``).
Its budget buys looks model by model:

* every model's first look is bought first (its block work at the first stage, priced like
  ``engine.planner.estimate``: the model's measured atlas seconds times the ratio of block works); a budget below the
  first looks of every model the block runs is a :class:`engine.plans.PlanError`;
* then one look at a time, the model's next look with the most expected decisions per core second: its cost is the
  block work the look adds on that model (3 seeds x families x the examples per family it adds, priced as above);
  its expected decisions are, over the staged rules of the calibration table (``engine/data/calibration.json``:
  those sized by ``atlas.rigorous_per_family`` that apply to the model), the power at delta the look adds (power at
  the look's examples per family minus at the previous look's; a rule shared by several claims is one decision). A
  look that does not fit what is left ends that model's looks (the looks are nested); cheaper looks of other models
  may still fit. Ties go to the model named first.

A model the prices do not cover (no measured atlas seconds) gets every look, and the budget line says so: its cost
is not known, so no budget can hold it. Every other block's budget is checked against its estimate before the run
(``engine.planner.check_session``): its sizes are fixed, so an estimate over budget is a plan error, not a cut.

What the looks bought reach the sizes every reader uses (``engine.studies.atlas.sizes_for(..., model=...)``:
:func:`cap_atlas` cuts the plan's stages after the last look bought), so the planner, the measurements and the
decisions agree; the record of a staged claim whose looks the budget cut says so (:func:`atlas_note`) and keeps its
projection. The level of each look is spent over the looks the model runs (fixed before any data is seen).
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine import plans as plans_data

PRICES = Path(__file__).resolve().parent / "data" / "atlas-prices.json"


@dataclasses.dataclass(frozen=True)
class ModelLooks:
    """One model's atlas looks under a budget: the plan's looks (examples per family), how many were bought, each
    look's estimated cost (core seconds; the first: the whole first-look block) and expected decisions."""

    model: str
    looks: tuple[int, ...]
    bought: int
    cost: tuple[float, ...] | None  # None: no pinned price for this model (every look is run)
    gain: tuple[float, ...]
    grown: bool = False  # the last look is HUB-BREADTH's 4-family look (Sizes.breadth_per_family): only those 4
    # families' sample grows, on seed 42; bought, like every look, only after the looks before it

    @property
    def spent(self) -> float:
        return sum(self.cost[:self.bought]) if self.cost else 0.0

    def describe(self) -> str:
        shown = list(self.looks[:self.bought])
        if self.cost is None:
            return f"{self.model} looks {shown} (not priced: not in {PRICES.name})"
        text = f"{self.model} looks {shown} ({self.spent:.0f})"
        if self.grown and self.bought == len(self.looks):
            text += " (the last: HUB-BREADTH's 4 families)"
        if self.bought < len(self.looks):
            k = self.bought
            text += (f"; not bought: {self.looks[k]}/family{self.which(k)}, {self.cost[k]:.0f} core-s for "
                     f"{self.gain[k]:.2f} expected decision(s)")
        return text

    def which(self, k: int) -> str:
        """" of HUB-BREADTH's 4 families" for the 4-family look, else ""."""
        return " of HUB-BREADTH's 4 families" if self.grown and k == len(self.looks) - 1 else ""


@dataclasses.dataclass(frozen=True)
class AtlasBudget:
    """How the atlas block's budget was spent, model by model."""

    plan: str
    budget: float
    models: dict[str, ModelLooks]

    @property
    def spent(self) -> float:
        return sum(m.spent for m in self.models.values())

    def bought(self, model: str) -> int | None:
        got = self.models.get(model)
        return None if got is None else got.bought


def power_at(rates: list[dict], per_family: int) -> float:
    """A calibration entry's power at ``per_family`` examples per family: the simulated value where the table has
    it, else linear between its neighbours (0 below the smallest, the largest's value above)."""
    points = sorted((r["per_family"], r.get("power") or 0.0) for r in rates)
    if not points:
        return 0.0
    for (n0, p0), (n1, p1) in zip(points, points[1:]):
        if n0 <= per_family <= n1:
            return p0 if n1 == n0 else p0 + (p1 - p0) * (per_family - n0) / (n1 - n0)
    return 0.0 if per_family < points[0][0] else points[-1][1]


def expected_decisions(model: str, before: int, after: int, table: dict | None = None) -> float:
    """The power at delta that growing the rigorous sample from ``before`` to ``after`` examples per family adds,
    summed over the calibration table's staged rules that apply to ``model`` (a rule named ``<rule>:<model>`` to
    that model only; one without a model to every model)."""
    from engine.decisions import calibration_table

    rules = (table or calibration_table())["rules"]
    total = 0.0
    for name, entry in rules.items():
        if not str(entry.get("sizes_from", "")).endswith("atlas.rigorous_per_family"):
            continue
        _, _, only = name.partition(":")
        if only and only != model:
            continue
        total += max(0.0, power_at(entry["rates"], after) - power_at(entry["rates"], before))
    return total


def breadth_gain(model: str, before: int, after: int, table: dict | None = None) -> float:
    """The power at delta HUB-BREADTH's 4-family look adds on ``model``: its rule's at ``after`` examples per family
    of the 4 families (the calibration entry sized by ``atlas.breadth_per_family``) minus the rule's at the last
    look's ``before`` (the entry sized by ``atlas.rigorous_per_family``); a rule named ``<rule>:<model>`` counts for
    that model only."""
    from engine.decisions import calibration_table

    rules = (table or calibration_table())["rules"]
    def power(field: str, n: int) -> float:
        return max((power_at(e["rates"], n) for name, e in rules.items() if "HUB-BREADTH" in e.get("claims", ())
                    and str(e.get("sizes_from", "")).endswith(f"atlas.{field}")
                    and name.partition(":")[2] in ("", model)), default=0.0)
    return max(0.0, power("breadth_per_family", after) - power("rigorous_per_family", before))


def read_prices(prices: Path | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """(seconds, work) per model from a prices file (:func:`pin`); empty when there is none."""
    import json

    try:
        data = json.loads((prices or PRICES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, {}
    def numbers(key: str) -> dict[str, float]:
        got = data.get(key) if isinstance(data, dict) else None
        return {m: float(v) for m, v in (got or {}).items() if isinstance(v, (int, float)) and v > 0}
    return numbers("atlas_seconds"), numbers("atlas_work")


def pin(timings: Path, prices: Path | None = None) -> Path:
    """Write the prices file from a timed run's timings file: each model's atlas seconds and the block work they
    bought (the file's ``atlas_work``, else the reference plan's :data:`engine.planner.REFERENCE_WORK`)."""
    import json

    from engine import planner

    seconds = planner.measured_model_seconds("atlas", timings)
    work = planner.timed_atlas_work(timings)
    data = planner.read_timings(timings) or {}
    out = {"about": "each cpu model's measured atlas core-seconds and the block work (engine.planner.block_work) they "
                    "bought, in one timed run of the reference plan: what engine/budget.py prices atlas looks by",
           "source": {"timings": str(timings), "written": data.get("written")},
           "atlas_seconds": {m: round(s, 3) for m, s in seconds.items()},
           "atlas_work": {m: work.get(m, planner.REFERENCE_WORK["atlas"]) for m in seconds}}
    target = prices or PRICES
    target.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    _cached.cache_clear()
    return target


def atlas_budget(plan: str, *, path: str | Path | None = None, prices: Path | None = None) -> AtlasBudget | None:
    """The atlas looks ``plan``'s budget buys on each model its cpu atlas block runs; None when the plan gives the
    atlas block no budget or has no stages."""
    from engine import planner
    from engine.studies.atlas.common import Sizes
    from engine.verdicts import load_catalogue

    budget = plans_data.budget_of(plan, path=path).get("atlas")
    if budget is None:
        return None
    _, table = plans_data.read(path)
    if "atlas" not in table.get(plan, {}).get("cpu", {}):
        return None
    catalogue = load_catalogue()
    models = plans_data.cpu_models(plan, catalogue.cpu_models, "atlas", path=path)
    prices = prices or PRICES
    seconds, timed = read_prices(prices)  # each model's seconds, and the block work they bought
    out: dict[str, ModelLooks] = {}
    for model in models:
        sizes = plans_data.load("atlas", Sizes, "cpu", {"plan": plan}, path=path, model=model)
        looks = sizes.looks if sizes.stages else (sizes.rigorous_per_family,)
        fields = plans_data.values(sizes)
        grown = sizes.breadth_per_family if (sizes.breadth_per_family or 0) > looks[-1] else None

        def work(per_family: int, breadth: int | None = None) -> float:
            return planner.block_work("atlas", {**fields, "rigorous_per_family": per_family,
                                                "breadth_per_family": breadth})

        gain = (0.0,) + tuple(expected_decisions(model, a, b) for a, b in zip(looks, looks[1:]))
        if grown:  # HUB-BREADTH's 4-family look: one more, after the last
            gain += (breadth_gain(model, looks[-1], grown),)
        if model not in seconds:
            out[model] = ModelLooks(model, looks + ((grown,) if grown else ()), len(looks) + bool(grown), None, gain,
                                    bool(grown))
            continue
        unit = seconds[model] / timed.get(model, planner.REFERENCE_WORK["atlas"])
        cost = (unit * work(looks[0]),) + tuple(unit * (work(b) - work(a)) for a, b in zip(looks, looks[1:]))
        if grown:
            cost += (unit * (work(looks[-1], grown) - work(looks[-1])),)
            looks += (grown,)
        out[model] = ModelLooks(model, looks, 1, cost, gain, bool(grown))
    first = sum(m.cost[0] for m in out.values() if m.cost)
    if first > budget:
        raise plans_data.PlanError(
            f"plans.{plan}.cpu.{plans_data.BUDGET}.atlas = {budget:g}: the first look of every model costs "
            f"{first:.0f} core-s ({', '.join(f'{m.model} {m.cost[0]:.0f}' for m in out.values() if m.cost)}; "
            f"priced by {prices.name}): raise the budget or cut the first stage")
    left, open_ = budget - first, [m for m in out if out[m].cost and out[m].bought < len(out[m].looks)]
    while open_:
        def rate(model: str) -> float:
            got = out[model]
            cost = got.cost[got.bought]
            return got.gain[got.bought] / cost if cost > 0 else float("inf")
        best = max(open_, key=lambda m: (rate(m), -open_.index(m)))
        got = out[best]
        cost = got.cost[got.bought]
        if cost > left:
            open_.remove(best)  # nested looks: this model stops here
            continue
        left -= cost
        out[best] = dataclasses.replace(got, bought=got.bought + 1)
        if out[best].bought == len(got.looks):
            open_.remove(best)
    return AtlasBudget(plan, budget, out)


@lru_cache(maxsize=16)
def _cached(plan: str, plans_file: str | None, prices: str, stamp: tuple) -> AtlasBudget | None:
    return atlas_budget(plan, path=plans_file, prices=Path(prices))


def for_plan(plan: str) -> AtlasBudget | None:
    """:func:`atlas_budget` of ``plan`` under this process's plans file and the pinned prices (cached per version
    of both)."""
    plans_file = os.environ.get(plans_data.PLANS_ENV) or None

    def stamp(p: str | None) -> tuple:
        try:
            st = Path(p).stat()
            return (st.st_size, st.st_mtime_ns)
        except (OSError, TypeError):
            return ()
    return _cached(plan, plans_file, str(PRICES), (stamp(plans_file), stamp(str(PRICES))))


def cap_atlas(sizes: Any, model: str) -> Any:
    """``sizes`` (a model's cpu atlas sizes under its plan) with the plan's stages cut after the last look the
    budget buys on ``model``; unchanged without a budget, without stages or for a model the block does not run."""
    if not getattr(sizes, "stages", None):
        return sizes
    got = for_plan(sizes.name)
    bought = None if got is None else got.bought(model)
    if bought is None or bought >= len(got.models[model].looks):
        return sizes
    looks = got.models[model]
    sizes = dataclasses.replace(sizes, breadth_per_family=None) if looks.grown else sizes  # its look not bought
    if bought >= len(looks.looks) - looks.grown:
        return sizes
    last = looks.looks[bought - 1]
    per_family = min(sizes.rigorous_per_family, last)
    stages = tuple(n for n in sizes.stages if n <= per_family) or (per_family,)
    return dataclasses.replace(sizes, stages=stages, rigorous_per_family=per_family)


def atlas_note(plan: str, model: str, grown: bool = False) -> str:
    """What a staged record says when the budget cut its model's looks ("" when it did not). ``grown``: the record's
    claim takes HUB-BREADTH's 4-family look (``ModelLooks.grown``); any other claim's looks end before it, so that
    look left unbought cuts nothing of theirs."""
    got = for_plan(plan)
    if got is None or model not in got.models:
        return ""
    looks = got.models[model]
    if looks.cost is None or looks.bought >= len(looks.looks) - (looks.grown and not grown):
        return ""
    k = looks.bought
    return (f"the plan's atlas budget ({got.budget:g} core-s, engine.budget) bought looks {list(looks.looks[:k])} of "
            f"{list(looks.looks)} on {model}: the look at {looks.looks[k]}/family{looks.which(k)} would cost "
            f"~{looks.cost[k]:.0f} "
            f"core-s for {looks.gain[k]:.2f} expected decision(s) (power at delta, engine/data/calibration.json)")


def summary(plan: str, estimates: dict[str, float] | None = None) -> str:
    """The session's budget line: what each block of ``plan`` may spend and what it is planned to ("" without a
    budget)."""
    from engine import planner

    budget = plans_data.budget_of(plan)
    if not budget:
        return ""
    estimates = planner.estimate_blocks(plan) if estimates is None else estimates
    parts = []
    for block, seconds in budget.items():
        if block == "atlas" and (got := for_plan(plan)) is not None:
            parts.append(f"atlas {seconds:g} (looks bought, est. {got.spent:.0f}: "
                         f"{'; '.join(m.describe() for m in got.models.values())})")
        else:
            est = estimates.get(block)
            parts.append(f"{block} {seconds:g}" + (f" (est. {est:.0f})" if est is not None else " (not priced)"))
    return f"[budget] {plan}: core-s each block may spend: " + ", ".join(parts)


def check(plan: str) -> None:
    """Before a session: every fixed-size block's estimate within its budget, the atlas budget above its first
    looks (one :class:`engine.plans.PlanError` line each)."""
    from engine import planner

    budget = plans_data.budget_of(plan)
    if not budget:
        return
    for_plan(plan)  # raises when the first looks do not fit
    estimates = planner.estimate_blocks(plan)
    for block, seconds in budget.items():
        if block != "atlas" and estimates.get(block, 0.0) > seconds:
            raise plans_data.PlanError(
                f"plans.{plan}.cpu.{plans_data.BUDGET}.{block} = {seconds:g}: its sizes are estimated at "
                f"{estimates[block]:.0f} core-s ({planner.TIMINGS.name}); a fixed-size block is not cut: raise its "
                "budget or cut its sizes")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.budget", description=__doc__.split("\n")[0])
    parser.add_argument("--pin", metavar="TIMINGS", type=Path, required=True,
                        help="write engine/data/atlas-prices.json from a timed run of the reference plan")
    args = parser.parse_args(argv)
    print(pin(args.pin))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
