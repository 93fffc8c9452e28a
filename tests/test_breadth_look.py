"""HUB-BREADTH's 4-family look (#30: evidence where the question is close): a plan may grow the 4-family suite past
the 12-family sample's rows (``Sizes.breadth_per_family``, the full plan on Gemma). One more sequential look of that
claim only, on those 4 families only, the error spent over every look; priced and bought by the atlas budget after
the model's last look; nothing else measures more (tests/test_atlas_rules.py: the rule reaches each outcome there)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from engine import budget, planner, plans, tasks, templates
from engine import decisions as D
from engine.settings import RunSettings
from engine.studies.atlas import hubs
from engine.studies.atlas.common import rigorous_spec, sizes_for, stratified_sample
from engine.verdicts import load_catalogue

GEMMA, SMOL = "gemma3-270m", "smollm2-135m"
PACKAGED = Path(plans.__file__).parent / "data" / "plans.toml"
CATALOGUE = load_catalogue()


def _ctx(claim: str, model: str, plan: str = "full") -> templates.ClaimContext:
    return templates.ClaimContext(CATALOGUE[claim], (model,), "cpu", RunSettings(plan=plan))


def test_the_look_adds_only_the_4_families_rows_past_the_12_family_sample():
    sizes = sizes_for("cpu", None, "full", GEMMA)
    assert sizes.breadth_per_family == 110 and sizes.looks == (5, 10, 20)
    beyond = hubs.breadth_beyond_spec(GEMMA, sizes, 110)
    twelve = rigorous_spec(GEMMA, sizes)
    added = beyond.examples()
    assert {ex.family for ex in added} == set(tasks.BREADTH_FAMILIES) and len(added) == 4 * 90
    assert beyond.need.n == 360 and "beyond 20/family" in beyond.need.sample
    assert beyond.increments() == [added]  # one part: the look computes only what it adds
    rows = [ex for ex in twelve.examples() if ex.family in tasks.BREADTH_FAMILIES]
    assert not {ex.id for ex in rows} & {ex.id for ex in added}
    # the 4-family suite at the look is exactly the nested 110/family sample of those families
    assert {ex.id for ex in rows + added} == {ex.id for ex in stratified_sample(42, 110, tasks.BREADTH_FAMILIES,
                                                                                   nested=True)}
    with pytest.raises(ValueError, match="beyond"):
        rigorous_spec(GEMMA, dataclasses.replace(sizes, stages=None, breadth_per_family=None),
                      families=tasks.BREADTH_FAMILIES, per_family=110, beyond=20)  # not nested: no such rows


def test_the_claim_takes_one_more_look_where_the_plan_grows_it_and_nowhere_else():
    template = templates.template_of(CATALOGUE["HUB-BREADTH"])
    gemma = _ctx("HUB-BREADTH", GEMMA)
    assert template.stages(gemma) == (5, 10, 20, 110)
    at_look = template.specs(gemma.at(110))
    assert at_look[hubs.BEYOND].k == 110 and at_look[hubs.BEYOND].beyond == 20
    assert at_look[f"seed {hubs.SEEDS[0]}"].k == 20  # the 12-family suite stays at its last look's rows
    assert hubs.BEYOND not in template.specs(gemma.at(20))
    declared = template.declared(gemma).needs
    assert any(need.n == 360 and "beyond" in need.sample for need in declared)
    assert template.stages(_ctx("HUB-BREADTH", SMOL)) == (5, 10)  # no look of its own: the plan grows Gemma's
    assert template.stages(_ctx("HUB-BREADTH", GEMMA, "default")) == (2,)
    for other in ("HUB-Q05", "HUB-SEEDS", "POS-ANSWER"):  # the same seed-42 atlas, no 4-family look
        assert templates.template_of(CATALOGUE[other]).stages(_ctx(other, GEMMA)) == (5, 10, 20), other


def _budget(tmp_path, monkeypatch, atlas: int) -> None:
    text = PACKAGED.read_text(encoding="utf-8")
    line = re.compile(r"^budget_core_s = \{ atlas = 5900,", re.MULTILINE)
    assert len(line.findall(text)) == 1
    path = tmp_path / f"plans-{atlas}.toml"
    path.write_text(line.sub(f"budget_core_s = {{ atlas = {atlas},", text), encoding="utf-8")
    monkeypatch.setenv(plans.PLANS_ENV, str(path))


def test_the_budget_buys_the_look_after_the_models_last_and_a_smaller_budget_leaves_it_out(tmp_path, monkeypatch):
    got = budget.for_plan("full")
    gemma = got.models[GEMMA]
    assert gemma.looks == (5, 10, 20, 110) and gemma.grown and gemma.bought == 4 and got.spent <= got.budget
    assert gemma.cost[-1] > 0 and gemma.gain[-1] > 0  # priced, and worth something under the calibration table
    assert "(the last: HUB-BREADTH's 4 families)" in gemma.describe()
    assert budget.atlas_note("full", GEMMA, grown=True) == budget.atlas_note("full", GEMMA) == ""
    _budget(tmp_path, monkeypatch, 5000)
    cut = budget.for_plan("full").models[GEMMA]
    assert cut.bought == 3 and "not bought: 110/family of HUB-BREADTH's 4 families" in cut.describe()
    assert sizes_for("cpu", None, "full", GEMMA).breadth_per_family is None
    assert templates.template_of(CATALOGUE["HUB-BREADTH"]).stages(_ctx("HUB-BREADTH", GEMMA)) == (5, 10, 20)
    # only HUB-BREADTH's record says its look was cut: every other claim's looks all ran
    assert "110/family of HUB-BREADTH's 4 families" in budget.atlas_note("full", GEMMA, grown=True)
    assert budget.atlas_note("full", GEMMA) == ""


def test_a_budget_that_cuts_the_models_own_looks_leaves_the_4_family_look_out_too(tmp_path, monkeypatch):
    _budget(tmp_path, monkeypatch, 3600)  # both models' first two looks (3572 core-s), not Gemma's third
    cut = budget.for_plan("full").models[GEMMA]
    assert cut.bought == 2 and cut.looks == (5, 10, 20, 110)
    sizes = sizes_for("cpu", None, "full", GEMMA)
    assert sizes.looks == (5, 10) and sizes.breadth_per_family is None
    assert templates.template_of(CATALOGUE["HUB-BREADTH"]).stages(_ctx("HUB-BREADTH", GEMMA)) == (5, 10)
    note = "the look at 20/family would cost"
    assert note in budget.atlas_note("full", GEMMA) and note in budget.atlas_note("full", GEMMA, grown=True)


def test_the_work_model_prices_the_look_as_the_4_families_rows_it_adds():
    table = plans.values(sizes_for("cpu", None, "full", GEMMA))
    without = planner.block_work("atlas", {**table, "breadth_per_family": None})
    assert planner.block_work("atlas", table) == without + 4 * (110 - 20)


def test_a_grown_suite_needs_stages_and_a_count():
    base = sizes_for("cpu", None, "full", GEMMA)
    with pytest.raises(plans.PlanError, match="breadth_per_family = 110: needs stages"):
        dataclasses.replace(base, stages=None)
    with pytest.raises(plans.PlanError, match="breadth_per_family"):
        plans.check_value("breadth_per_family", 0, "plans.toml: 'plans.x.cpu.atlas.breadth_per_family'")


def test_the_looks_calibration_is_listed_and_does_not_gate_the_claims_records():
    """The 4-family look's rule is simulated at the plan's n (engine/data/calibration.json), feeds the budget's
    expected decisions, and, sized by another field than the claim's records, does not set their calibrated n."""
    table = D.calibration_table()
    entry = table["rules"]["hub-differs-by-breadth-4-family-look"]
    assert [r["per_family"] for r in entry["rates"]] == [110] and entry["gates"] is False
    assert entry["min_n"] is not None and entry["min_n"] <= sizes_for("cpu", None, "full", GEMMA).breadth_per_family
    assert entry["sizes_from"].endswith("atlas.breadth_per_family")
    assert D.calibrated_min_n("HUB-BREADTH") == (table["rules"]["hub-differs-by-breadth"]["min_n"],
                                                  "hub-differs-by-breadth")
    assert budget.breadth_gain(GEMMA, 20, 110) > 0


def test_the_look_runs_through_the_template_on_a_tiny_model(tmp_path, monkeypatch):
    """The production template's sequential run (a tiny random Llama standing in for Gemma: a procedure check, no
    verdict): looks at 1 and 2 per family on 6 families, then the 4-family look at 4/family, which measures only
    the 4 families' 2 new prompts each; its record says so. Random weights at 1-2 prompts per family leave the
    argmax undecided, so every look runs."""
    from engine import models

    path = tmp_path / "plans.toml"
    path.write_text(PACKAGED.read_text(encoding="utf-8") + "\n".join([
        "[plans.t.cpu]", 'models = ["smollm2-135m", "gemma3-270m"]', "[plans.t.cpu.atlas]", "seed_per_family = 1",
        "rigorous_per_family = 2", "stages = [1, 2]", "breadth_per_family = 4", "nl_per_family = 1",
        "noop_examples = 2", "skip_single_layers = 2", "n_resamples = 200", "batch_size = 4",
        'families = ["json_schema", "factual_recall", "copying", "code_syntax", "arithmetic", "instruction_following"]',
        "layer_stride = 1", "reported_per_family = 1", ""]), encoding="utf-8")
    monkeypatch.setenv(plans.PLANS_ENV, str(path))
    monkeypatch.setenv("MI_ATLAS_RESULTS_CACHE", str(tmp_path / "cache"))
    lm = models.tiny("llama", n_layers=3, seed=0)
    ctx = _ctx("HUB-BREADTH", GEMMA, "t")
    template = templates.template_of(CATALOGUE["HUB-BREADTH"])
    assert template.stages(ctx) == (1, 2, 4)
    measured = []
    original = hubs.AtlasSpec.compute

    def compute(spec, model):
        measured.append((spec.families, spec.k, spec.beyond, [len(p) for p in spec.increments()]))
        return original(spec, model)
    monkeypatch.setattr(hubs.AtlasSpec, "compute", compute)
    _, rigorous = templates.run(ctx, lambda key: lm)
    looks = rigorous.figures["looks"]
    assert looks["stages_per_family"] == [1, 2, 4] and looks["n_looks"] == 3
    assert [n for n, _ in looks["history"]] == [1, 2, 4], looks["history"]
    assert rigorous.figures["n_examples_12fam"] == 6 * 2 and rigorous.figures["n_examples_4fam"] == 4 * 4
    assert (tuple(tasks.BREADTH_FAMILIES), 4, 2, [4 * 2]) in measured  # only the 4 families' new prompts
    assert all(k <= 2 for _, k, beyond, _ in measured if not beyond)  # nothing else grows past the last look
    assert looks["level_per_look"] == pytest.approx(1 - 0.05 / 3)
