"""A plan as a budget (#29 item 2, ``engine/budget.py``): the atlas budget buys looks model by model by expected
decisions per core-second, priced from the committed timings; the sizes every reader uses follow; a fixed-size
block over its budget and a budget below the first looks are one-line plan errors."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine import budget, planner, plans
from engine.studies.atlas.common import sizes_for

PACKAGED = Path(plans.__file__).parent / "data" / "plans.toml"
LINE = re.compile(r"^budget_core_s = \{ atlas = 1100[^}]*\}$", re.M)  # the default plan's


def _with_budget(tmp_path: Path, monkeypatch, value: str) -> Path:
    """The packaged plans file with the default plan's budget line replaced by ``value`` ("" removes it)."""
    text = PACKAGED.read_text(encoding="utf-8")
    assert len(LINE.findall(text)) == 1
    path = tmp_path / "plans.toml"
    path.write_text(LINE.sub(f"budget_core_s = {value}" if value else "", text), encoding="utf-8")
    monkeypatch.setenv(plans.PLANS_ENV, str(path))
    return path


def test_the_default_budget_buys_smollm2s_second_look_and_not_gemmas():
    """The default plan's budget as committed: both first looks, then the second look with more expected decisions
    per core-second (SmolLM2's); Gemma's does not fit."""
    got = budget.for_plan("default")
    assert got is not None and got.budget >= got.spent
    assert {m: (g.looks, g.bought) for m, g in got.models.items()} == {
        "smollm2-135m": ((2, 5), 2), "gemma3-270m": ((2, 5), 1)}
    assert sizes_for("cpu", None, "default", "smollm2-135m").looks == (2, 5)
    assert sizes_for("cpu", None, "default", "gemma3-270m").looks == (2,)
    line = budget.summary("default")
    assert line.startswith("[budget] default: core-s each block may spend: atlas 1100 (looks bought, est. ")
    assert "smollm2-135m looks [2, 5]" in line and "gemma3-270m looks [2]" in line and "steer 300 (est. " in line
    assert "not bought: 5/family" in line
    assert budget.summary("smoke") == ""  # the gate's plan: fixed sizes


def test_a_group_claim_runs_the_looks_all_its_models_have():
    from engine import templates
    from engine.settings import RunSettings
    from engine.verdicts import load_catalogue

    catalogue = load_catalogue()
    claim = catalogue["OWN-ATLAS"]
    ctx = templates.ClaimContext(claim, ("smollm2-135m", "gemma3-270m"), "cpu", RunSettings(plan="default"))
    template = templates.template_of(claim)
    assert template.stages(ctx) == (2,)
    sized = {(spec.model, getattr(spec, "k", None)) for spec in template.specs(ctx.at(2)).values()
             if getattr(spec, "sample", None) == "stratified"}
    assert sized and {k for _, k in sized} == {2} and {m for m, _ in sized} == set(ctx.models)  # paired prompts
    hub = templates.ClaimContext(catalogue["HUB-Q05"], ("smollm2-135m",), "cpu", RunSettings(plan="default"))
    assert templates.template_of(catalogue["HUB-Q05"]).stages(hub) == (2, 5)


def test_a_tight_budget_buys_the_look_with_more_expected_decisions_per_core_second(tmp_path, monkeypatch):
    full = budget.for_plan("default")
    first = sum(m.cost[0] for m in full.models.values())
    second = {m: g.cost[1] for m, g in full.models.items()}
    rate = {m: g.gain[1] / g.cost[1] for m, g in full.models.items()}
    best, other = sorted(rate, key=rate.get, reverse=True)
    assert rate[best] > rate[other]  # from the calibration table: the rules' power at delta, 2 -> 5 per family
    _with_budget(tmp_path, monkeypatch, f"{{ atlas = {first + max(second.values()) + 1:.0f} }}")
    got = budget.for_plan("default")
    assert (got.bought(best), got.bought(other)) == (2, 1)
    assert got.spent <= got.budget
    assert sizes_for("cpu", None, "default", best).looks == (2, 5)
    cut = sizes_for("cpu", None, "default", other)
    assert (cut.looks, cut.rigorous_per_family) == ((2,), 2)  # every reader of the sizes sees the cut
    assert "not bought: 5/family" in budget.summary("default")
    note = budget.atlas_note("default", other)
    assert note.startswith(f"the plan's atlas budget ({got.budget:g} core-s, engine.budget) bought looks [2] of "
                           f"[2, 5] on {other}") and budget.atlas_note("default", best) == ""


def test_a_look_that_does_not_fit_stops_that_model_but_a_cheaper_one_may_still_be_bought(tmp_path, monkeypatch):
    full = budget.for_plan("default")
    first = sum(m.cost[0] for m in full.models.values())
    cheap = min(full.models, key=lambda m: full.models[m].cost[1])
    dear = max(full.models, key=lambda m: full.models[m].cost[1])
    if cheap == dear or full.models[cheap].cost[1] == full.models[dear].cost[1]:
        pytest.skip("the two models' second looks cost the same under these timings")
    _with_budget(tmp_path, monkeypatch, f"{{ atlas = {first + full.models[cheap].cost[1] + 1:.0f} }}")
    got = budget.for_plan("default")
    assert (got.bought(cheap), got.bought(dear)) == (2, 1)


def test_the_staged_record_of_a_model_whose_looks_were_cut_says_so(tmp_path, monkeypatch):
    from engine.studies.findings import Finding
    from engine.templates.base import _budget_noted

    full = budget.for_plan("default")
    first = sum(m.cost[0] for m in full.models.values())
    _with_budget(tmp_path, monkeypatch, f"{{ atlas = {first + 1:.0f} }}")
    ctx = SimpleNamespace(tier="cpu", plan="default", models=("smollm2-135m",))
    finding = _budget_noted(ctx, True, Finding.not_run("rigorous", "x"))
    assert "Looks cut by the budget: the plan's atlas budget" in " ".join(finding.notes)
    assert set(finding.figures["budget"]) == {"smollm2-135m"}
    unstaged = _budget_noted(ctx, False, Finding.not_run("rigorous", "x"))
    assert "budget" not in unstaged.figures


def test_every_atlas_template_that_reads_the_rigorous_sample_says_when_the_budget_cut_it():
    """HUB-NL is not staged, yet its synthetic side is the rigorous sample: its record names a cut too."""
    from engine import templates
    from engine.verdicts import load_catalogue

    catalogue = load_catalogue()
    nl = templates.template_of(catalogue["HUB-NL"])
    assert not nl.staged and nl.reads_rigorous_sample


def test_a_budget_below_the_first_looks_is_one_line_naming_the_key(tmp_path, monkeypatch):
    _with_budget(tmp_path, monkeypatch, "{ atlas = 10 }")
    with pytest.raises(plans.PlanError, match=r"^plans\.default\.cpu\.budget_core_s\.atlas = 10: the first look of "
                                              r"every model costs \d+ core-s .*raise the budget or cut the first "
                                              r"stage$"):
        planner.check_session("default")


def test_a_fixed_size_block_over_its_budget_is_a_plan_error_not_a_cut(tmp_path, monkeypatch):
    _with_budget(tmp_path, monkeypatch, "{ atlas = 1500, steer = 10 }")
    with pytest.raises(plans.PlanError, match=r"^plans\.default\.cpu\.budget_core_s\.steer = 10: its sizes are "
                                              r"estimated at \d+ core-s .*a fixed-size block is not cut"):
        planner.check_session("default")


def test_without_a_budget_nothing_is_cut_and_no_budget_line_is_printed(tmp_path, monkeypatch):
    _with_budget(tmp_path, monkeypatch, "")
    assert budget.for_plan("default") is None and budget.summary("default") == ""
    assert sizes_for("cpu", None, "default", "gemma3-270m").looks == (2, 5)
    planner.check_session("default")


@pytest.mark.parametrize("value, named", [
    ("{ atlas = -1 }", r"'plans.default.cpu.budget_core_s'.atlas: -1 is not a number of core seconds > 0"),
    ("{ atlas = inf }", r"'plans.default.cpu.budget_core_s'.atlas: inf is not a number"),
    ("{ atlsa = 100 }", r"unknown block 'atlsa'"),
    ("3", r"must be a table of block = core seconds"),
])
def test_a_malformed_budget_is_one_line_naming_the_file_and_key(tmp_path, monkeypatch, value, named):
    path = _with_budget(tmp_path, monkeypatch, value)
    with pytest.raises(plans.PlanError, match=re.escape(named) if "'" in named else named) as err:
        plans.read(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_a_gpu_budget_or_one_for_a_block_without_a_table_is_refused(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(PACKAGED.read_text(encoding="utf-8") + '\n[plans.y.gpu]\nbudget_core_s = { atlas = 5 }\n'
                    '[plans.y.gpu.atlas]\ninherits = "default"\n', encoding="utf-8")
    with pytest.raises(plans.PlanError, match="a budget is given in the cpu tier only"):
        plans.read(path)
    path.write_text(PACKAGED.read_text(encoding="utf-8") + '\n[plans.y.cpu]\nbudget_core_s = { steer = 5 }\n'
                    '[plans.y.cpu.atlas]\ninherits = "default"\n', encoding="utf-8")
    with pytest.raises(plans.PlanError, match=r"'steer': there is no \[plans\.y\.cpu\.steer\] table to spend it on"):
        plans.read(path)


def test_power_between_simulated_sizes_is_interpolated_and_expected_decisions_sum_the_staged_rules():
    rates = [{"per_family": 2, "power": 0.0}, {"per_family": 10, "power": 0.8}]
    assert budget.power_at(rates, 6) == pytest.approx(0.4)
    assert budget.power_at(rates, 1) == 0.0 and budget.power_at(rates, 20) == 0.8
    table = {"rules": {
        "a:m1": {"sizes_from": "plans.*.*.atlas.rigorous_per_family", "rates": rates},
        "b": {"sizes_from": "plans.*.*.atlas.rigorous_per_family", "rates": rates},
        "c": {"sizes_from": "plans.*.*.steer.n_test", "rates": rates}}}
    assert budget.expected_decisions("m1", 2, 6, table) == pytest.approx(0.8)  # a:m1 and b
    assert budget.expected_decisions("m2", 2, 6, table) == pytest.approx(0.4)  # b only


def test_a_model_is_priced_by_the_work_its_timed_seconds_bought(tmp_path, monkeypatch):
    """The prices are pinned from a timings file (``python -m engine.budget --pin``): each model's seconds and the
    atlas work they bought (the file's ``atlas_work``: a run that bought fewer looks on a model is priced by what it
    ran); a run never rewrites them, so the same commit plans the same looks after any run."""
    import json

    data = json.loads(planner.TIMINGS.read_text(encoding="utf-8"))
    seconds = planner.measured_model_seconds("atlas")
    data["atlas_work"] = {"smollm2-135m": 204.0, "gemma3-270m": 96.0}  # gemma timed at its first look only
    timings = tmp_path / "plan-default-timings.json"
    timings.write_text(json.dumps(data), encoding="utf-8")
    prices = tmp_path / "atlas-prices.json"
    monkeypatch.setattr(budget, "PRICES", prices)
    assert budget.pin(timings, prices) == prices
    got = budget.for_plan("default")
    assert got.models["gemma3-270m"].cost[0] == pytest.approx(seconds["gemma3-270m"], rel=1e-4)  # 96 units bought them
    assert got.models["smollm2-135m"].cost[0] == pytest.approx(seconds["smollm2-135m"] * 96 / 204, rel=1e-4)
    assert planner.timed_atlas_work(timings) == data["atlas_work"]
    assert set(planner.atlas_work("default")) == {"smollm2-135m", "gemma3-270m"}
    budget._cached.cache_clear()


def test_the_budget_does_not_read_the_timings_a_run_rewrites(tmp_path, monkeypatch):
    before = budget.summary("default")
    monkeypatch.setattr(planner, "TIMINGS", tmp_path / "absent.json")
    budget._cached.cache_clear()
    assert {m: g.bought for m, g in budget.for_plan("default").models.items()} == {
        "smollm2-135m": 2, "gemma3-270m": 1}
    assert before.split(", steer")[0] == budget.summary("default").split(", steer")[0]
    budget._cached.cache_clear()


def test_a_model_the_prices_do_not_cover_runs_every_look_and_the_line_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "PRICES", tmp_path / "absent.json")
    got = budget.for_plan("default")
    assert all(g.cost is None and g.bought == len(g.looks) for g in got.models.values())
    assert "(not priced: not in absent.json)" in budget.summary("default")


def test_an_untested_finding_decides_nothing_so_no_look_stops_on_it():
    from engine.decisions import Outcome
    from engine.studies.findings import Finding, outcome

    untested = Finding.not_run("rigorous", "needs a GPU")
    assert untested.holds is None and outcome(untested) is Outcome.UNDECIDED
    with pytest.raises(ValueError, match="untested"):
        untested.record()
