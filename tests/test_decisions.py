"""The decision primitives of catalogue v2: every outcome each one claims is reachable, and each is calibrated.

Reachability: constructed measurements drive each primitive to for / against / undecided (and "no CI", "below the
rule's minimum n", an exact tie). Calibration: measurements simulated from the per-family variance, skew and
pairing of the committed CPU-tier atlases (``results/calibration/atlas-layer-effects.json``) go through the
production decision functions, with no effect and with the smallest effect of interest, and the rates are
printed and held to their bounds: P(for | no effect) <= the primitive's bound, P(against | delta) <= 0.05. The
power at delta is printed per sample size (it is a property of the data and delta, not a pass/fail figure),
and the power projection's n is shown to decide >= 80% of the time when simulated at that n.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine import decisions as D
from engine.decisions import Outcome

CALIBRATION = Path(__file__).resolve().parents[1] / "results" / "calibration" / "atlas-layer-effects.json"
FAMILIES = [f"f{i}" for i in range(4)]


def _groups(per_family: int, families=FAMILIES) -> list[str]:
    return [f for f in families for _ in range(per_family)]


def _values(mean: float, sd: float, per_family: int, seed: int = 0) -> np.ndarray:
    return mean + sd * np.random.default_rng(seed).standard_normal(len(FAMILIES) * per_family)


# ------------------------------------------------------------------------------------------------ reachability


def test_greater_reaches_for_against_and_undecided():
    n = D.MIN_N
    assert D.greater(_values(1.0, 0.5, n), _groups(n), delta=0.3).outcome is Outcome.FOR
    assert D.greater(_values(0.0, 0.1, n), _groups(n), delta=0.3).outcome is Outcome.AGAINST
    undecided = D.greater(_values(0.15, 1.0, n, seed=3), _groups(n), delta=0.3)
    assert undecided.outcome is Outcome.UNDECIDED and "straddles" in undecided.undecided
    assert undecided.n_to_decide and undecided.n_to_decide > n and undecided.ci is not None


def test_greater_gives_no_ci_below_two_per_family_and_is_undecided_below_the_minimum_n():
    groups = ["a", "a", "b"]  # family b has one example
    ev = D.greater([1.0, 1.2, 0.9], groups, delta=0.3)
    assert ev.outcome is Outcome.UNDECIDED and ev.ci is None and "no CI" in ev.statement
    small = D.greater(_values(5.0, 0.1, 3), _groups(3), delta=0.3)  # a clear effect on too little data
    assert small.outcome is Outcome.UNDECIDED and "below the rule's minimum n" in small.undecided
    assert small.ci is not None and small.ci[0] > 0 and small.n_to_decide == D.MIN_N
    # one example per family: no CI, and the reason given is the rule's minimum n (not just "no CI")
    single = D.greater([1.0, 1.2, 0.9], ["a", "b", "c"], delta=0.3)
    assert single.ci is None and "below the rule's minimum n" in single.undecided
    lone = D.argmax([[1.0, 0.0], [2.0, 0.5]], ["a", "b"])
    assert lone.outcome is Outcome.UNDECIDED and "below the rule's minimum n" in lone.undecided


def test_a_failed_precondition_is_undecided_whatever_the_ci_and_recomputes_the_same():
    n = D.MIN_N
    ev = D.greater(_values(1.0, 0.5, n), _groups(n), delta=0.3, precondition="below the rule's minimum n (controls)")
    assert ev.outcome is Outcome.UNDECIDED and ev.undecided.startswith("below the rule's minimum n (controls")
    assert ev.ci is not None and ev.ci[0] > 0  # the figures stay
    again = D.recompute(json.loads(json.dumps(ev.to_dict())))
    assert again.outcome is Outcome.UNDECIDED and again.undecided == ev.undecided


def test_argmax_reaches_for_against_tie_and_undecided():
    n = D.MIN_N
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 0.2, (len(FAMILIES) * n, 6))
    values[:, 2] += 2.0
    groups = _groups(n)
    assert D.argmax(values, groups).outcome is Outcome.FOR  # an argmax exists
    found = D.argmax(values, groups, claimed=2)
    assert found.outcome is Outcome.FOR and found.estimate == 2 and found.details["p_best"] >= D.P_CLAIMED
    assert D.argmax(values, groups, claimed=4).outcome is Outcome.AGAINST  # another layer is the argmax
    tied = D.argmax(np.zeros((len(groups), 6)), groups)
    assert tied.outcome is Outcome.AGAINST and "exact tie" in tied.statement  # decisive: no single argmax
    close = rng.normal(0.0, 1.0, (len(groups), 6))
    close[:, 1] += 0.2
    close[:, 3] += 0.2
    undecided = D.argmax(close, groups)
    assert undecided.outcome is Outcome.UNDECIDED and undecided.details["p_best"] < D.P_EXISTS


def test_holm_steps_down():
    assert D.holm([0.001, 0.02, 0.04], alpha=0.05) == [True, True, True]  # 0.001<.0167, 0.02<.025, 0.04<.05
    assert D.holm([0.001, 0.03, 0.04], alpha=0.05) == [True, False, False]  # 0.03 > 0.025 stops the steps
    assert D.holm([0.2, 0.001], alpha=0.05) == [False, True]


def test_for_every_reaches_for_against_and_undecided():
    n = D.MIN_N
    groups = _groups(n)
    strong = {f"L{i}": (_values(1.0, 0.3, n, seed=i), groups) for i in range(5)}
    assert D.for_every(strong, delta=0.3).outcome is Outcome.FOR
    one_flat = dict(strong, L9=(_values(0.0, 0.05, n, seed=9), groups))
    against = D.for_every(one_flat, delta=0.3)
    assert against.outcome is Outcome.AGAINST and "L9" in against.statement
    wide = _values(0.0, 1.0, n, seed=7)
    one_open = dict(strong, L7=(wide - wide.mean() + 0.15, groups))  # mean 0.15: CI spans 0 and delta
    assert D.for_every(one_open, delta=0.3).outcome is Outcome.UNDECIDED


def test_every_evidence_recomputes_identically_from_its_stored_data():
    n = D.MIN_N
    groups = _groups(n)
    values = np.random.default_rng(1).normal(0.0, 0.2, (len(groups), 5))
    values[:, 1] += 1.0
    for ev in (D.greater(_values(0.15, 1.0, n, seed=3), groups, delta=0.3),
               D.argmax(values, groups, claimed=1),
               D.for_every({"a": (_values(1.0, 0.3, n), groups), "b": (_values(0.2, 1.0, n, 5), groups)}, delta=0.3)):
        again = D.recompute(json.loads(json.dumps(ev.to_dict())))
        assert (again.outcome, again.statement, again.n_to_decide) == (ev.outcome, ev.statement, ev.n_to_decide)


# ------------------------------------------------------------------------------------------------ calibration


def _committed(model: str = "smollm2-135m") -> tuple[np.ndarray, np.ndarray]:
    data = json.loads(CALIBRATION.read_text())["models"][model]
    return np.asarray(data["per_example"], dtype=np.float64), np.asarray(data["families"])


def _paired_null(model: str):
    """Per-family paired differences of the committed top two layers, centred within each family (no effect),
    keeping each family's variance and skew."""
    effects, families = _committed(model)
    top, second = np.argsort(-effects.mean(0))[:2]
    diff = effects[:, top] - effects[:, second]
    names = list(dict.fromkeys(families.tolist()))
    return {f: diff[families == f] - diff[families == f].mean() for f in names}


def _draw(null: dict, per_family: int, shift: float, rng) -> tuple[np.ndarray, list[str]]:
    values, groups = [], []
    for f, centred in null.items():
        values.append(rng.choice(centred, size=per_family, replace=True) + shift)
        groups += [f] * per_family
    return np.concatenate(values), groups


REPS = 300  # per condition, fixed seeds (deterministic): the rates' simulation SE is ~0.011 at p = 0.035


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_greater_is_calibrated_on_the_committed_variance(model, capsys):
    null = _paired_null(model)
    delta = float(np.median([np.std(v, ddof=1) for v in null.values()]))  # one per-example SD: a moderate effect
    rng = np.random.default_rng(7)
    lines = []
    for per_family in (D.MIN_N, 2 * D.MIN_N):
        none = [D.greater(*_draw(null, per_family, 0.0, rng), delta=delta, n_resamples=999, seed=i).outcome
                for i in range(REPS)]
        at_delta = [D.greater(*_draw(null, per_family, delta, rng), delta=delta, n_resamples=999, seed=i).outcome
                    for i in range(REPS)]
        false_for = none.count(Outcome.FOR) / REPS
        false_against = at_delta.count(Outcome.AGAINST) / REPS
        power = at_delta.count(Outcome.FOR) / REPS
        lines.append(f"greater on {model}, {per_family}/family, delta {delta:.3g}: P(for|0) = {false_for:.3f}, "
                     f"P(against|delta) = {false_against:.3f}, power P(for|delta) = {power:.2f}")
        assert false_for <= D.FALSE_CONFIRM_BOUND["greater"], lines[-1]  # the catalogue's 5%
        assert false_against <= 0.05, lines[-1]
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_the_power_projection_decides_at_the_projected_n(capsys):
    null = _paired_null("smollm2-135m")
    sd = float(np.median([np.std(v, ddof=1) for v in null.values()]))
    se = sd / np.sqrt(len(null) * D.MIN_N)  # the SE of the mean at the minimum n, roughly
    delta, effect = 3.0 * se, 1.0 * se  # a small true effect: the pilot at the minimum n cannot decide it
    rng = np.random.default_rng(11)
    pilots = (D.greater(*_draw(null, D.MIN_N, effect, rng), delta=delta, n_resamples=999) for _ in range(20))
    pilot = next(p for p in pilots if p.outcome is Outcome.UNDECIDED)  # a pilot run that could not decide
    assert pilot.n_to_decide and pilot.n_to_decide > D.MIN_N, pilot.statement
    projected = pilot.n_to_decide
    decided = [D.greater(*_draw(null, projected, effect, rng), delta=delta, n_resamples=999, seed=i).decided
               for i in range(REPS // 2)]
    share = sum(decided) / len(decided)
    with capsys.disabled():
        print(f"\npower projection: pilot {pilot.outcome.value} at {D.MIN_N}/family -> projected {projected}/family; "
              f"decided {share:.2f} of {len(decided)} simulated runs at that n")
    assert share >= 0.8


def test_argmax_is_calibrated_when_the_top_two_layers_are_exchangeable(capsys):
    """No effect: the committed top two layers made exchangeable (same family means, values swapped at random);
    "an argmax exists" and "the argmax is the first of them" must not be confirmed more often than 5%."""
    effects, families = _committed("smollm2-135m")
    effects = effects[:, np.argsort(-effects.mean(0))[:6]]  # the six leading layers carry the argmax's mass
    names = list(dict.fromkeys(families.tolist()))
    rng = np.random.default_rng(5)

    def draw(per_family: int) -> tuple[np.ndarray, list[str]]:
        rows, groups = [], []
        for f in names:
            own = effects[families == f]
            sample = own[rng.integers(0, len(own), per_family)].copy()
            a = sample[:, 0] + own[:, 1].mean() - own[:, 0].mean()
            b = sample[:, 1].copy()
            swap = rng.random(per_family) < 0.5
            sample[:, 0], sample[:, 1] = np.where(swap, b, a), np.where(swap, a, b)
            rows.append(sample)
            groups += [f] * per_family
        return np.vstack(rows), groups

    reps = 150
    exists = [D.argmax(*draw(D.MIN_N), n_resamples=999, seed=i).outcome is Outcome.FOR for i in range(reps)]
    claimed = [D.argmax(*draw(D.MIN_N), claimed=0, n_resamples=999, seed=i).outcome is Outcome.FOR
               for i in range(reps)]
    rate_exists, rate_claimed = sum(exists) / reps, sum(claimed) / reps
    with capsys.disabled():
        print(f"\nargmax, {D.MIN_N}/family, top two exchangeable: P(exists) = {rate_exists:.3f} at P >= {D.P_EXISTS}, "
              f"P(is L) = {rate_claimed:.3f} at P >= {D.P_CLAIMED}")
    assert rate_exists <= D.FALSE_CONFIRM_BOUND["argmax"]
    assert rate_claimed <= D.FALSE_CONFIRM_BOUND["argmax"]


def test_for_every_is_calibrated_on_the_committed_variance(capsys):
    """Three members drawn from the committed paired differences: all without effect (a false "for" needs all
    three to clear 0 after Holm), then one of them without effect and two at delta (still no claim: not every
    member has the effect), then all at delta (the claim holds: power)."""
    null = _paired_null("smollm2-135m")
    delta = float(np.median([np.std(v, ddof=1) for v in null.values()]))
    rng = np.random.default_rng(13)
    reps, n = 150, D.MIN_N

    def rate(shifts, outcome):
        hits = 0
        for i in range(reps):
            members = {f"m{j}": _draw(null, n, shift, rng) for j, shift in enumerate(shifts)}
            hits += D.for_every(members, delta=delta, n_resamples=999, seed=i).outcome is outcome
        return hits / reps

    none_for, one_null_for = rate((0.0, 0.0, 0.0), Outcome.FOR), rate((0.0, delta, delta), Outcome.FOR)
    all_against, power = rate((delta, delta, delta), Outcome.AGAINST), rate((delta, delta, delta), Outcome.FOR)
    with capsys.disabled():
        print(f"\nfor_every, 3 members, {n}/family, delta {delta:.3g}: P(for | all 0) = {none_for:.3f}, "
              f"P(for | one member 0) = {one_null_for:.3f}, P(against | all delta) = {all_against:.3f}, "
              f"power = {power:.2f}")
    assert none_for <= D.FALSE_CONFIRM_BOUND["for_every"] and one_null_for <= D.FALSE_CONFIRM_BOUND["for_every"]
    assert all_against <= 0.05


# ------------------------------------------------------------------------------------------------ planted effects


def _planted_atlas(factor: float, layer: int = 2, seed: int = 2):
    """A tiny random Llama whose layer ``layer`` contribution is scaled by ``factor`` (o_proj and down_proj
    weights), swept by the real atlas engine on 10 prompts in each of 4 families."""
    import torch

    from engine import models
    from engine.atlas import atlas
    from engine.tasks import Example

    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    examples = [Example(id=f"f{f}-{k}", family=f"fam{f}", split="short", target=" x", scorer="exact",
                        prompt=f"Item {f} {k}: " + " ".join(words[(3 * f + k + j) % 10] for j in range(2 + k % 4)))
                for f in range(4) for k in range(D.MIN_N)]
    lm = models.tiny("llama", n_layers=6, seed=seed)
    with torch.no_grad():
        block = lm.adapter.layers(lm.model)[layer]
        lm.adapter.module(block, "o").weight.mul_(factor)
        lm.adapter.module(block, "down").weight.mul_(factor)
    result = atlas(lm, examples, template="none", cache=False)
    return np.asarray(result.per_example), result.example_families


def test_a_planted_hub_is_confirmed_at_its_layer_and_its_unplanted_twin_is_not():
    """Planted: the layer's contribution doubled; the twin: the same random model, unscaled."""
    planted = D.argmax(*_planted_atlas(2.0), claimed=2)
    twin = D.argmax(*_planted_atlas(1.0), claimed=2)
    assert planted.outcome is Outcome.FOR and planted.estimate == 2, planted.statement
    assert twin.outcome is not Outcome.FOR, twin.statement  # its own argmax is another layer


def test_a_negated_reading_recomputes_to_the_same_outcome():
    """HUB-BREADTH / HUB-CODER read "the argmax is the other suite's layer" for as "the hubs differ" against."""
    from engine.studies.atlas.common import negate

    n = D.MIN_N
    ev = D.greater(_values(1.0, 0.5, n), _groups(n), delta=0.3)
    flipped = negate(ev, "the hubs differ")
    assert (ev.outcome, flipped.outcome) == (Outcome.FOR, Outcome.AGAINST)
    assert D.recompute(json.loads(json.dumps(flipped.to_dict()))).outcome is Outcome.AGAINST


def test_a_precondition_the_test_reports_makes_the_recomputed_verdict_inconclusive_too():
    """HUB-SEEDS' seed protocol: the argmax evidence is an exact tie (against), but the seeds change nothing
    (the test's precondition): INCONCLUSIVE when recorded, and when decided again offline."""
    from engine.verdicts import Recorder, Target, Verdict, load_catalogue, recompute

    tie = D.argmax([[1.0, 1.0]] * 20, ["a"] * 10 + ["b"] * 10)
    assert tie.outcome is Outcome.AGAINST
    recorder = Recorder(Target(claim=load_catalogue()["HUB-SEEDS"], model="smollm2-135m", tier="cpu"))
    record = recorder.record("seed", {"x": 1}, tie, undecided="seeds change nothing")
    assert record.verdict is Verdict.INCONCLUSIVE
    again = json.loads(json.dumps(record.to_dict()))
    from engine.verdicts import VerdictRecord

    assert recompute(VerdictRecord.from_dict(again), load_catalogue()["HUB-SEEDS"]) is Verdict.INCONCLUSIVE
