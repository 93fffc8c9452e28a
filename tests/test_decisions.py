"""The decision primitives of catalogue v3: decide at the n you have, every outcome reachable, every rule calibrated.

Reachability: constructed measurements drive each primitive to for / against / undecided, at 2 and at 1 example per
family (the stratified t-interval and the sign-flip test), through the precedence the catalogue states (AGAINST
before FOR; threshold claims by where the whole CI lies), and into the failed preconditions (an exact tie where the
erasure guard fired, a degenerate measurement). Calibration: one test per rule of :mod:`engine.calibration` ("calibrat"
in the name) simulates the rule as the claims use it at every per-family n a plan uses, calls the production
decision, and holds P(false CONFIRMED) and P(false FAILED) to 5% at and above the rule's committed ``min_n``
(``engine/data/calibration.json``), and power >= 0.8 at the full plan for the rules the table marks powered.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine import calibration as C
from engine import decisions as D
from engine.decisions import Outcome

FAMILIES = [f"f{i}" for i in range(12)]


def _groups(per_family: int, families=FAMILIES) -> list[str]:
    return [f for f in families for _ in range(per_family)]


def _values(mean: float, sd: float, per_family: int, seed: int = 0, families=FAMILIES) -> np.ndarray:
    return mean + sd * np.random.default_rng(seed).standard_normal(len(families) * per_family)


def _three_x(per_family: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """[n, 6] layer effects: layer 0 three times every other layer's effect in every prompt."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(1.0, 2.0, size=(len(FAMILIES) * per_family, 6))
    base[:, 0] = 3.0 * base[:, 1:].max(axis=1)
    return base, _groups(per_family)


# ------------------------------------------------------------------------------------------------ the interval


def test_the_stratified_t_interval_is_the_textbook_one():
    values = _values(0.5, 1.0, 3, seed=4)
    groups = _groups(3)
    iv = D.interval(values, groups)
    fam = [values[np.asarray(groups) == f] for f in FAMILIES]
    w = np.asarray([f.var(ddof=1) / (144 * len(f)) for f in fam])
    df = w.sum() ** 2 / np.sum(w ** 2 / 2)
    half = float(__import__("scipy").stats.t.ppf(0.975, df)) * math.sqrt(w.sum())
    assert iv.method == "stratified-t" and math.isclose(iv.df, df)
    assert math.isclose(iv.low, np.mean([f.mean() for f in fam]) - half)
    assert math.isclose(iv.p_above(iv.low), 0.025, rel_tol=1e-6)


def test_one_example_per_family_uses_exact_sign_flips_and_still_decides_a_large_effect():
    iv = D.interval(_values(3.0, 0.5, 1), FAMILIES)
    assert iv.method == "sign-flip" and iv.low is not None and iv.low > 0
    assert math.isclose(iv.p_above(0.0), 1 / 4096)  # every family positive: the identity alone reaches it
    four = D.interval(_values(3.0, 0.5, 1, families=FAMILIES[:4]), FAMILIES[:4])
    assert four.low is None and "cannot reach" in four.why  # 16 sign patterns cannot reach p <= 0.025


def test_bounded_values_get_a_ci_of_nonzero_width_even_when_all_equal():
    iv = D.interval(np.zeros(24), _groups(2), bounds=(0.0, 1.0))
    assert iv.method == "betting" and iv.high > 0 and not iv.degenerate
    with pytest.raises(ValueError, match="outside the stated bounds"):
        D.interval(np.full(24, 2.0), _groups(2), bounds=(0.0, 1.0))


@pytest.mark.parametrize("per_family, decided", [(3, False), (10, True)])
def test_equal_bounded_values_decide_by_betting_where_hoeffding_could_not(per_family, decided):
    """30 paired overlap differences all 0 in [-1, 1] (LOCKIN's early checkpoint agreeing with the final atlas
    exactly as the base model does): the betting interval's upper bound is 0.161 < 0.2 (Hoeffding's: 0.496, ~190
    prompts to get below 0.2); at 3 per family 9 equal values cannot (0.43)."""
    groups = [f for f in FAMILIES[:3] for _ in range(per_family)]
    iv = D.interval(np.zeros(len(groups)), groups, bounds=(-1.0, 1.0))
    assert iv.method == "betting" and iv.low == -iv.high  # symmetric: the values sit mid-range
    assert (iv.high < 0.2) is decided
    assert math.isclose(iv.p_below(iv.high), 0.025, rel_tol=1e-3) and iv.p_below(0.0) == 1.0
    near_top = D.interval(np.full(len(groups), 0.8), groups, bounds=(-1.0, 1.0))  # values near the range's end
    assert near_top.high - 0.8 < 0.8 - near_top.low  # the near end leaves little room: that side is tighter


@pytest.mark.parametrize("p_hi", [0.5, 0.9, 0.99])
def test_the_betting_p_value_is_valid_for_any_bounded_distribution_with_mean_at_the_boundary(p_hi):
    """Two-point values (the least favourable: all mass at the ends) and unequal family weights, H0 "mean >= m" true
    at its boundary: P(p <= 0.025) <= 0.025 (Markov: the mixture of constant bets has expectation <= 1)."""
    rng = np.random.default_rng(int(p_hi * 100))
    weights = np.concatenate([np.full(4, 13 / (2 * 4)), np.full(9, 13 / (2 * 9))])  # N / (H n_h): 2 families
    m = p_hi * 1.0 + (1 - p_hi) * -1.0
    hits = 0
    for _ in range(2000):
        x = np.where(rng.random(13) < p_hi, 1.0, -1.0)
        hits += D._betting_p(tuple(x), tuple(weights), -1.0, 1.0, m, -1) <= 0.025
    assert hits / 2000 <= 0.025 + 3 * (0.025 * 0.975 / 2000) ** 0.5


# ------------------------------------------------------------------------------------------------ reachability


def test_a_3x_effect_in_every_prompt_at_2_per_family_is_decided_by_every_primitive():
    values, groups = _three_x(2)
    assert D.argmax(values, groups).outcome is Outcome.FOR
    assert D.argmax(values, groups, claimed=0, delta=0.5).outcome is Outcome.FOR
    assert D.greater(values[:, 0] - values[:, 1], groups, delta=0.5).outcome is Outcome.FOR
    members = {f"L{j}": (values[:, 0] - values[:, j], groups) for j in range(1, 6)}
    assert D.for_every(members, delta=0.5).outcome is Outcome.FOR
    one, g1 = _three_x(1)
    assert D.argmax(one, g1).outcome is Outcome.FOR  # sign flips at 1 per family


def test_greater_reaches_for_against_and_undecided_with_a_projection_naming_its_inputs():
    n = 2
    assert D.greater(_values(1.0, 0.5, n), _groups(n), delta=0.3).outcome is Outcome.FOR
    assert D.greater(_values(0.0, 0.1, n), _groups(n), delta=0.3).outcome is Outcome.AGAINST
    undecided = D.greater(_values(0.15, 1.0, n, seed=3), _groups(n), delta=0.3)
    assert undecided.outcome is Outcome.UNDECIDED and "straddles" in undecided.undecided
    assert undecided.n_to_decide and undecided.n_to_decide > n
    assert "projected" in undecided.statement and "SE" in undecided.statement and "observed effect" in undecided.statement


def test_against_is_decided_before_for_a_real_but_negligible_effect_fails():
    """STEER-ALL: a gap CI near [0.026, 0.032] with delta 0.1; QUANT-KL: a ratio CI near [1.14, 1.16] where the
    rationale says below 1.5x is no amplification (the log-ratio against log 1.5)."""
    gap = D.greater(_values(0.029, 0.005, 2), _groups(2), delta=0.1)
    assert gap.ci[0] > 0 and gap.ci[1] < 0.1 and gap.outcome is Outcome.AGAINST
    ratio = D.greater(np.log(_values(1.15, 0.02, 2)), _groups(2), delta=float(np.log1p(0.5)))
    assert ratio.ci[0] > 0 and ratio.outcome is Outcome.AGAINST


def test_a_threshold_claim_is_never_against_while_the_estimate_and_part_of_its_ci_satisfy_it():
    """delta = 0: x - T. For when the whole CI is above, against only when the whole CI is below."""
    straddling = D.greater(_values(0.02, 0.2, 2, seed=1), _groups(2), delta=0.0)
    assert straddling.estimate > 0 and straddling.ci[0] < 0 < straddling.ci[1]
    assert straddling.outcome is Outcome.UNDECIDED
    assert D.greater(_values(-1.0, 0.2, 2), _groups(2), delta=0.0).outcome is Outcome.AGAINST
    assert D.greater(_values(1.0, 0.2, 2), _groups(2), delta=0.0).outcome is Outcome.FOR


def test_argmax_reaches_for_against_tie_precondition_and_undecided():
    n = 2
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 0.2, (len(FAMILIES) * n, 6))
    values[:, 2] += 3.0
    groups = _groups(n)
    found = D.argmax(values, groups, claimed=2, delta=0.5)
    assert found.outcome is Outcome.FOR and found.estimate == 2
    other = D.argmax(values, groups, claimed=4, delta=0.5)
    assert other.outcome is Outcome.AGAINST and "another unit leads" in other.statement
    near = values.copy()
    near[:, 3] = near[:, 2] - 0.05 + rng.normal(0, 0.01, len(near))  # L2 leads L3 by 0.05, decided below delta
    assert D.argmax(near, groups, claimed=2, delta=0.5).outcome is Outcome.AGAINST
    tied = D.argmax(np.tile(np.arange(6.0), (len(groups), 1))[:, ::-1] * 0 + 1.0, groups)
    assert tied.outcome is Outcome.AGAINST and "exact tie" in tied.statement  # a measurement that can see layers
    erased = D.argmax(np.ones((len(groups), 6)), groups, erasing=True)
    assert erased.outcome is Outcome.UNDECIDED and "cannot separate layers" in erased.undecided
    close = rng.normal(0.0, 1.0, (len(groups), 6))
    close[:, 1] += 0.2
    close[:, 3] += 0.2
    undecided = D.argmax(close, groups, delta=0.1)
    assert undecided.outcome is Outcome.UNDECIDED and undecided.n_to_decide


def test_a_degenerate_measurement_is_a_failed_precondition_not_evidence():
    ev = D.greater(np.full(24, 0.5), _groups(2), delta=0.1)
    assert ev.outcome is Outcome.UNDECIDED and "degenerate" in ev.undecided
    assert "degenerate" in D.greater(np.zeros(24), _groups(2), delta=0.1, discrete=True).undecided
    per_family_constant = np.repeat(np.linspace(0.5, 1.0, 12), 2)  # no variation within any family: sign flips
    flips = D.greater(per_family_constant, _groups(2), delta=0.1)
    assert flips.outcome is Outcome.FOR and flips.params["method"] == "sign-flip"
    depths = D.greater(np.full(24, 0.29), _groups(2), delta=0.05, discrete=True)  # argmax depths that could vary
    assert depths.outcome is Outcome.FOR and depths.params["method"] == "sign-flip"


def test_holm_steps_down():
    assert D.holm([0.001, 0.02, 0.04], alpha=0.05) == [True, True, True]
    assert D.holm([0.001, 0.03, 0.04], alpha=0.05) == [True, False, False]
    assert D.holm([0.2, 0.001], alpha=0.05) == [False, True]


def test_for_every_reaches_for_against_and_undecided_and_a_member_without_a_test_blocks_for():
    n = 2
    groups = _groups(n)
    strong = {f"L{i}": (_values(1.0, 0.3, n, seed=i), groups) for i in range(5)}
    assert D.for_every(strong, delta=0.3).outcome is Outcome.FOR
    one_flat = dict(strong, L9=(_values(0.0, 0.05, n, seed=9), groups))
    against = D.for_every(one_flat, delta=0.3)
    assert against.outcome is Outcome.AGAINST and "L9" in against.statement
    wide = _values(0.0, 1.0, n, seed=7)
    assert D.for_every(dict(strong, L7=(wide - wide.mean() + 0.15, groups)), delta=0.3).outcome is Outcome.UNDECIDED
    untestable = dict(strong, L8=(_values(5.0, 0.1, 1, families=FAMILIES[:3]), FAMILIES[:3]))
    assert D.for_every(untestable, delta=0.3).outcome is Outcome.UNDECIDED


def test_every_evidence_recomputes_identically_from_its_stored_data():
    groups = _groups(2)
    values = np.random.default_rng(1).normal(0.0, 0.2, (len(groups), 5))
    values[:, 1] += 1.0
    for ev in (D.greater(_values(0.15, 1.0, 2, seed=3), groups, delta=0.3),
               D.greater(_values(0.1, 0.3, 1), FAMILIES, delta=0.3),
               D.greater(np.zeros(24), groups, delta=0.0, bounds=(-1.0, 1.0)),
               D.argmax(values, groups, claimed=1, delta=0.2),
               D.argmax(np.ones((24, 4)), groups, erasing=True),
               D.for_every({"a": (_values(1.0, 0.3, 2), groups), "b": (_values(0.2, 1.0, 2, 5), groups)}, delta=0.3)):
        again = D.recompute(json.loads(json.dumps(ev.to_dict())))
        assert (again.outcome, again.statement, again.n_to_decide) == (ev.outcome, ev.statement, ev.n_to_decide)


def test_recompute_refuses_an_absurd_resample_count():
    ev = D.greater(_values(0.1, 0.3, 2), _groups(2), delta=0.3).to_dict()
    ev["params"]["n_resamples"] = 10**12
    with pytest.raises(ValueError, match="n_resamples"):
        D.recompute(ev)


def test_the_power_projection_decides_at_the_projected_n():
    rng = np.random.default_rng(11)
    effect, sd, delta = 0.6, 2.0, 1.0
    pilot = D.greater(effect + sd * rng.standard_normal(24), _groups(2), delta=delta)
    assert pilot.outcome is Outcome.UNDECIDED and pilot.n_to_decide
    n = pilot.n_to_decide
    decided = [D.greater(effect + sd * rng.standard_normal(12 * n), _groups(n), delta=delta).decided
               for _ in range(100)]
    assert sum(decided) / len(decided) >= 0.6  # 80% aimed at, from one noisy pilot's SE


# ------------------------------------------------------------------------------------------------ calibration

CI_REPS = 60  # per condition and n in CI (the committed table used more: its "reps")


@pytest.mark.parametrize("name", sorted(C.rules()))
def test_rule_is_calibrated_at_every_planned_n(name, capsys):
    """The rule as the claims use it, at every per-family n of plans.toml: at and above the committed min_n, P(false
    CONFIRMED) and P(false FAILED) within 5% (+2 simulation SE); below it the Recorder says INCONCLUSIVE. Powered
    rules reach P(CONFIRMED | delta) >= 0.8 at the full plan in the committed table."""
    table = D.calibration_table()["rules"]
    assert name in table, f"{name} is not in engine/data/calibration.json: run python -m engine.calibration --write"
    entry, rule = table[name], C.rules()[name]
    assert [r["n"] for r in entry["rates"]] == ([] if rule.data == "not simulated" else C.plan_sizes(rule))
    if rule.data == "not simulated":
        assert entry["min_n"] is None
        return
    lines = []
    for n in C.plan_sizes(rule):
        rate = C.simulate(rule, n, CI_REPS, seed=1000 + n)
        lines.append(f"{name} n={n}: false CONFIRMED {rate['false_confirm']:.3f}, false FAILED "
                     f"{rate['false_fail']:.3f}, power {rate['power']:.2f}")
        if entry["min_n"] is not None and n >= entry["min_n"]:
            slack = 3 * math.sqrt(C.BOUND * (1 - C.BOUND) / CI_REPS)
            assert rate["false_confirm"] <= C.BOUND + slack and rate["false_fail"] <= C.BOUND + slack, lines[-1]
    committed = {r["n"]: r for r in entry["rates"]}
    full = committed.get(entry["full_plan_n"])
    if entry.get("powered"):
        assert full is not None and full["power"] >= C.POWER_TARGET, (name, full)
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_a_planted_hub_at_1_5_delta_is_calibrated_confirmed_at_the_full_plan_and_its_twin_is_not():
    """A planted hub (the first of the two leading committed layers leads by 1.5 delta) in 20 drawn samples of the
    full plan's size is CONFIRMED >= 80% of the time by the hub rule (3 seeds, an argmax exists, the same); its
    unplanted twin (the top two exchangeable) <= 5%. The default plan's rate is printed."""
    from engine.studies.atlas import hubs

    delta = float(C._claim_params("HUB-Q05")["hub_delta"])
    rng = np.random.default_rng(3)

    def confirmed(n, effect):
        atlases = {f"seed {s}": C._atlas(*C._atlas_rows("smollm2-135m", n, effect, rng), s) for s in range(3)}
        return C._outcome(hubs.decide_hub(atlases, None, delta)[1]) == "for"

    full = C.full_plan_n(C.rules()["hub-exists-every-seed:smollm2-135m"])
    planted = sum(confirmed(full, 1.5 * delta) for _ in range(20)) / 20
    twin = sum(confirmed(full, None) for _ in range(20)) / 20
    default = sum(confirmed(2, 1.5 * delta) for _ in range(20)) / 20
    print(f"\nplanted hub at 1.5 delta: {planted:.2f} CONFIRMED at {full}/family, {default:.2f} at 2/family; twin {twin:.2f}")
    assert planted >= 0.8 and twin <= 0.05


def _planted_atlas(factor: float, layer: int = 2, seed: int = 2, per_family: int = 2):
    """A tiny random Llama whose layer ``layer`` contribution is scaled by ``factor`` (o_proj and down_proj
    weights), swept by the real atlas engine on ``per_family`` prompts in each of 4 families."""
    import torch

    from engine import models
    from engine.atlas import atlas
    from engine.tasks import Example

    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    examples = [Example(id=f"f{f}-{k}", family=f"fam{f}", split="short", target=" x", scorer="exact",
                        prompt=f"Item {f} {k}: " + " ".join(words[(3 * f + k + j) % 10] for j in range(2 + k % 4)))
                for f in range(4) for k in range(per_family)]
    lm = models.tiny("llama", n_layers=6, seed=seed)
    with torch.no_grad():
        block = lm.adapter.layers(lm.model)[layer]
        lm.adapter.module(block, "o").weight.mul_(factor)
        lm.adapter.module(block, "down").weight.mul_(factor)
    result = atlas(lm, examples, template="none", cache=False)
    return np.asarray(result.per_example), result.example_families


def test_a_planted_hub_is_confirmed_at_its_layer_end_to_end_and_its_unplanted_twin_is_not():
    """Through the real atlas engine on a tiny random model, at 3 prompts per family: the layer's contribution
    scaled x4 is decided the argmax at its layer; the same model unscaled is not."""
    planted = D.argmax(*_planted_atlas(4.0, per_family=3), claimed=2)
    twin = D.argmax(*_planted_atlas(1.0, per_family=3), claimed=2)
    assert planted.outcome is Outcome.FOR and planted.estimate == 2, planted.statement
    assert twin.outcome is not Outcome.FOR, twin.statement


def test_a_negated_reading_recomputes_to_the_same_outcome():
    from engine.studies.atlas.common import negate

    ev = D.greater(_values(1.0, 0.5, 2), _groups(2), delta=0.3)
    flipped = negate(ev, "the hubs differ")
    assert (ev.outcome, flipped.outcome) == (Outcome.FOR, Outcome.AGAINST)
    assert D.recompute(json.loads(json.dumps(flipped.to_dict()))).outcome is Outcome.AGAINST


def test_a_precondition_the_test_reports_makes_the_recomputed_verdict_inconclusive_too():
    from engine.verdicts import Recorder, Target, Verdict, VerdictRecord, load_catalogue, recompute

    tie = D.argmax([[1.0, 1.0]] * 20, ["a"] * 10 + ["b"] * 10)
    assert tie.outcome is Outcome.AGAINST
    recorder = Recorder(Target(claim=load_catalogue()["HUB-SEEDS"], model="smollm2-135m", tier="cpu"))
    record = recorder.record("seed", {"x": 1}, tie, undecided="seeds change nothing")
    assert record.verdict is Verdict.INCONCLUSIVE
    again = VerdictRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert recompute(again, load_catalogue()["HUB-SEEDS"]) is Verdict.INCONCLUSIVE


def test_a_rigorous_record_below_its_rules_calibrated_n_is_inconclusive_and_above_it_is_decided():
    from engine.verdicts import Recorder, Target, Verdict, load_catalogue

    table = D.calibration_table()
    min_n, rules = D.calibrated_min_n("STEER-ALL")
    assert rules and min_n is not None
    claim = load_catalogue()["STEER-ALL"]
    big = D.greater(_values(2.0, 0.3, max(min_n, 2)), _groups(max(min_n, 2)), delta=0.1)
    record = Recorder(Target(claim, "smollm2-135m", "cpu")).record("rigorous", {"gap": 2.0}, big)
    assert record.verdict is not Verdict.INCONCLUSIVE, record.reason
    if min_n > 1 and min_n < 10**9:
        small = D.greater(_values(2.0, 0.3, 1), FAMILIES, delta=0.1)
        gated = Recorder(Target(claim, "smollm2-135m", "cpu")).record("rigorous", {"gap": 2.0}, small)
        assert gated.verdict is Verdict.INCONCLUSIVE and "calibrated n" in gated.reason
    assert "OWN-ATLAS" in table["claims"]  # the uncalibrated rule is in the table, at no n
