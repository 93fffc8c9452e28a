"""The lora block's v2 rules reach each outcome they claim from constructed measurements (no training).

Each rule's production decision (``engine.studies.lora.decide_*``) and its claim procedure (``lora_atlas`` and the
like, on a stand-in bench that serves constructed per-example measurements) are driven to CONFIRMED, FAILED and
INCONCLUSIVE, including INCONCLUSIVE "below the rule's minimum n" (too few examples, training seeds or draws).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from engine import decisions as D
from engine import lora
from engine.studies import lora as L
from engine.studies.findings import Finding
from engine.verdicts import Recorder, Target, Verdict, load_catalogue

FAMILIES = ("json_schema", "factual_recall", "code_syntax")
CATALOGUE = load_catalogue()


def groups_of(per_family: int) -> list[str]:
    return [f for f in FAMILIES for _ in range(per_family)]


def verdict(claim_id: str, finding: Finding) -> Verdict:
    """The verdict the framework records for ``finding`` (cpu tier: the rule alone decides)."""
    if finding.untested:
        return Verdict.UNTESTED
    kwargs = finding.record()
    recorder = Recorder(Target(claim=CATALOGUE[claim_id], model="smollm2-135m", tier="cpu"))
    return recorder.record(**kwargs).verdict


def test_finding_record_keeps_the_evidence():
    ev = L.decide_skip([1.0] * 6, np.ones((2, 6)), groups_of(2), delta=0.05)
    assert Finding("rigorous", {}, holds=ev).record()["holds"] is ev


def params(claim_id: str) -> dict:
    return dict(CATALOGUE[claim_id].params)


def plan(**changes) -> lora.LoraPlan:
    return lora.plan_for("cpu").with_params(changes)


# ------------------------------------------------------------------------------------------------ LORA-ATLAS


def atlas_data(effect: float, *, seeds: int = 3, draws: int = 10, per_family: int = 12, noise: float = 0.02,
               example_noise: float = 0.0, rng: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Losses [seeds, n] for the atlas adapter and [seeds, draws, n] for random draws ``effect`` nats worse
    (``example_noise``: a per-example gap that no averaging over seeds or draws removes)."""
    g = np.random.default_rng(rng)
    groups = groups_of(per_family)
    atlas = 1.0 + 0.1 * g.standard_normal((seeds, len(groups)))
    random = (atlas[:, None, :] + effect + noise * g.standard_normal((seeds, draws, len(groups)))
              + example_noise * g.standard_normal(len(groups)))
    return atlas, random, groups


class FakeTargeting:
    def __init__(self, rigorous, seed=None):
        self.data = {"rigorous": rigorous, "seed": seed or atlas_data(0.3, seeds=1, draws=1, per_family=4)}

    def losses(self, protocol):
        return self.data[protocol]

    def figures(self, protocol):
        return {"atlas_params": 100, "random_params": 100, "metric": "held-out loss per example",
                "training_seeds": list(range(self.data[protocol][0].shape[0]))}


def bench(**parts) -> SimpleNamespace:
    return SimpleNamespace(plan=plan(), common_figures=dict, **parts)


@pytest.mark.parametrize("case, expected", [
    (dict(effect=0.3), Verdict.CONFIRMED),
    (dict(effect=0.0), Verdict.FAILED),
    (dict(effect=0.1, example_noise=0.4), Verdict.INCONCLUSIVE),
    (dict(effect=0.3, seeds=1), Verdict.INCONCLUSIVE),  # one training seed: below the rule's minimum
    (dict(effect=0.3, draws=3), Verdict.INCONCLUSIVE),  # "percentile > 0.5 of 3 draws" is no longer a verdict
    (dict(effect=0.3, per_family=3), Verdict.INCONCLUSIVE),  # 3 held-out examples per family
])
def test_lora_atlas_reaches_each_outcome(case, expected):
    seed_finding, rigorous = L.lora_atlas(bench(targeting=FakeTargeting(atlas_data(**case))), params("LORA-ATLAS"))
    assert verdict("LORA-ATLAS", rigorous) is expected, rigorous.holds.statement
    if {"seeds", "draws", "per_family"} & set(case):
        assert "below the rule's minimum n" in rigorous.holds.undecided
    # the seed's method (one seed, one draw) is always below the rule's minimum, and says what it cannot test
    assert verdict("LORA-ATLAS", seed_finding) is Verdict.INCONCLUSIVE
    assert "below the rule's minimum n" in seed_finding.holds.undecided
    assert any("cannot test" in n for n in seed_finding.notes)


def test_lora_atlas_fails_when_one_family_is_no_better():
    atlas, random, groups = atlas_data(0.3)
    random[:, :, np.asarray(groups) == "code_syntax"] -= 0.3  # code: random = atlas
    ev = L.decide_atlas(atlas, random, groups, delta=0.05, min_seeds=3, min_draws=10)
    assert ev.outcome is D.Outcome.AGAINST and "code_syntax" in ev.statement


def test_below_minimum_evidence_recomputes_to_the_same_outcome():
    atlas, random, groups = atlas_data(0.3, draws=3)
    ev = L.decide_atlas(atlas, random, groups, delta=0.05, min_seeds=3, min_draws=10)
    assert ev.outcome is D.Outcome.UNDECIDED and "3 random-matched draws (the rule needs >= 10)" in ev.undecided
    assert D.recompute(ev.to_dict()).outcome is D.Outcome.UNDECIDED


# ------------------------------------------------------------------------------------------------ LORA-OPROJ

MODULES = ("o", "q", "k", "v", "gate", "up", "down")


class FakeSweep:
    def __init__(self, gaps: dict, *, per_family=12, noise=0.02, seeds=1, counts=None):
        g = np.random.default_rng(1)
        self.groups = groups_of(per_family)
        o = 1.0 + 0.1 * g.standard_normal((seeds, len(self.groups)))
        self.loss = {m: o + gaps.get(m, 0.0) + (0 if m == "o" else noise * g.standard_normal(o.shape))
                     for m in MODULES}
        self.base = np.full(len(self.groups), 2.0)
        self.counts = counts or {m: 10_000 + 50 * i for i, m in enumerate(MODULES)}  # within 5%

    def losses(self, protocol):
        return self.loss, self.base, self.groups

    def params(self, protocol):
        return self.counts

    def figures(self, protocol):
        return {"ranks": {m: 8 for m in MODULES}, "training_seeds": [0]}


@pytest.mark.parametrize("gaps, expected", [
    ({m: 0.3 for m in MODULES if m != "o"}, Verdict.CONFIRMED),
    ({**{m: 0.3 for m in MODULES if m != "o"}, "v": -0.2}, Verdict.FAILED),  # v_proj CI-better than o_proj
    ({**{m: 0.3 for m in MODULES if m != "o"}, "v": 0.0}, Verdict.FAILED),  # v_proj equivalent within delta
    ({m: 0.1 for m in MODULES if m != "o"}, Verdict.INCONCLUSIVE),
])
def test_lora_oproj_reaches_each_outcome(gaps, expected):
    noise = 0.3 if expected is Verdict.INCONCLUSIVE else 0.02
    seed_finding, rigorous = L.lora_oproj(bench(sweep=FakeSweep(gaps, noise=noise)), params("LORA-OPROJ"))
    assert verdict("LORA-OPROJ", rigorous) is expected, rigorous.holds.statement
    assert set(rigorous.holds.data["members"]) == {f"{L.MODULE_LEAF[m]} - o_proj" for m in MODULES if m != "o"}
    assert any("cannot test" in n for n in seed_finding.notes)


def test_lora_oproj_below_minimum_n_and_unmatched_parameters():
    _, rigorous = L.lora_oproj(bench(sweep=FakeSweep({m: 0.3 for m in MODULES}, per_family=4)),
                               params("LORA-OPROJ"))
    assert verdict("LORA-OPROJ", rigorous) is Verdict.INCONCLUSIVE
    assert "below the rule's minimum n" in rigorous.holds.undecided
    unmatched = FakeSweep({m: 0.3 for m in MODULES}, counts={m: 10_000 * (2 if m == "gate" else 1) for m in MODULES})
    with pytest.raises(ValueError, match="matched trainable parameters"):
        L.lora_oproj(bench(sweep=unmatched), params("LORA-OPROJ"))


def test_lora_oproj_with_fewer_modules_than_the_rule_names_is_below_minimum_n():
    sweep = FakeSweep({m: 0.3 for m in MODULES})
    some = {m: sweep.loss[m] for m in ("o", "v", "gate")}
    ev = L.decide_oproj(some, sweep.groups, {m: sweep.counts[m] for m in some}, delta=0.05)
    assert ev.outcome is D.Outcome.UNDECIDED and "2 other modules compared (the rule needs >= 6)" in ev.undecided


def test_the_seed_ratio_is_decided_per_parameter_not_by_the_count_alone():
    # equal losses: the seed's efficiency favours the module with fewer parameters, as its ratio did
    sweep = FakeSweep({}, noise=0.0, counts={m: 100_000 if m == "o" else 300_000 for m in MODULES})
    ev = L.decide_oproj_seed(sweep.loss, sweep.base, sweep.groups, sweep.counts, delta=0.1)
    assert ev.outcome is D.Outcome.FOR  # ... which is why the rigorous rule matches the parameter counts
    with pytest.raises(ValueError):
        L.decide_oproj(sweep.loss, sweep.groups, sweep.counts, delta=0.05)


# ------------------------------------------------------------------------------------------------ LORA-LATE


def late_data(last_weight: float, *, n_layers: int = 30, per_family: int = 12, noise: float = 0.05):
    """Per-example per-layer effects: the last decile's layers ``last_weight`` times the others (times a per-example
    log-normal factor of spread ``noise``)."""
    g = np.random.default_rng(2)
    groups = groups_of(per_family)
    effect = np.abs(1.0 + 0.05 * g.standard_normal((len(groups), n_layers)))
    effect[:, -3:] *= last_weight * np.exp(noise * g.standard_normal((len(groups), 1)))
    return effect, groups


def fake_localisation(effect, groups):
    return SimpleNamespace(per_example=effect.tolist(), families=groups, effect=list(effect.mean(0)), total=1.0,
                           decile_share=[0.1] * 10, deciles=lora.depth_deciles(effect.shape[1]), share_last10=0.1,
                           largest_decile=9, n_examples=len(groups))


@pytest.mark.parametrize("weight, noise, per_family, expected", [
    (3.0, 0.05, 12, Verdict.CONFIRMED),
    (1.0, 0.05, 12, Verdict.FAILED),  # uniform: the last decile's share equals the others'
    (1.0, 1.0, 12, Verdict.INCONCLUSIVE),
    (3.0, 0.05, 3, Verdict.INCONCLUSIVE),  # below the rule's minimum n
])
def test_lora_late_reaches_each_outcome(weight, noise, per_family, expected):
    effect, groups = late_data(weight, noise=noise, per_family=per_family)
    b = bench(localisation=lambda protocol: fake_localisation(effect, groups))
    seed_finding, rigorous = L.lora_late(b, params("LORA-LATE"))
    assert verdict("LORA-LATE", rigorous) is expected, rigorous.holds.statement
    assert verdict("LORA-LATE", seed_finding) is expected
    if per_family < D.MIN_N:
        assert "below the rule's minimum n" in rigorous.holds.undecided


def test_decile_shares_sum_to_one_and_skip_empty_deciles():
    effect, groups = late_data(2.0, n_layers=18)
    shares = L.decile_shares(effect, 18)
    assert np.allclose(shares.sum(1), 1.0)
    ev = L.decide_late(effect, groups, delta=0.05)
    assert len(ev.data["members"]) == 9


# ------------------------------------------------------------------------------------------------ LOCKIN


def fake_lock(early: list[float], base: list[float]):
    return SimpleNamespace(fractions=[0.1, 0.5, 1.0], steps=[1, 5, 10], k=5, top=[], overlap=[0.8, 0.9, 1.0],
                           base_overlap=0.6, spearman=[], base_spearman=0.0,
                           prompt_overlap=[early, early, [1.0] * len(early)], base_prompt_overlap=base)


def lock_bench(early, base, per_family):
    prompts = [SimpleNamespace(family=f) for f in groups_of(per_family)]
    return bench(lock=lambda k: fake_lock(early, base), lock_prompts=prompts)


def overlaps(mean: float, n: int, rng: int, spread: float = 0.2) -> list[float]:
    g = np.random.default_rng(rng)
    return list(np.clip(np.round((mean + spread * g.standard_normal(n)) * 5) / 5, 0, 1))


@pytest.mark.parametrize("early, base, expected, why", [
    (0.9, 0.3, Verdict.CONFIRMED, ""),
    (0.3, 0.3, Verdict.FAILED, ""),  # the early checkpoint agrees no better than the untrained model
    (1.0, 1.0, Verdict.INCONCLUSIVE, "failed control"),  # training never moved the atlas: never REVISED
    (0.5, 0.4, Verdict.INCONCLUSIVE, "straddles"),
])
def test_lockin_reaches_each_outcome(early, base, expected, why):
    n = 36
    spread = 0.0 if early == base == 1.0 else (0.5 if why == "straddles" else 0.2)
    b = lock_bench(overlaps(early, n, 3, spread), overlaps(base, n, 4, spread), 12)
    seed_finding, rigorous = L.lockin(b, params("LOCKIN"))
    assert verdict("LOCKIN", rigorous) is expected, (rigorous.holds.statement, rigorous.undecided)
    if why == "failed control":
        assert "failed control" in rigorous.undecided
    assert seed_finding.untested.startswith("the seed never ran this")


def test_lockin_below_minimum_n_and_needs_an_early_checkpoint():
    b = lock_bench(overlaps(0.9, 9, 3), overlaps(0.3, 9, 4), 3)
    _, rigorous = L.lockin(b, params("LOCKIN"))
    assert verdict("LOCKIN", rigorous) is Verdict.INCONCLUSIVE
    with pytest.raises(ValueError, match="no checkpoint"):
        L._early_checkpoint([0.5, 1.0], 0.1)


# ------------------------------------------------------------------------------------------------ SKIP-RECOVER


class FakeSkip:
    k = 3

    def __init__(self, effect, *, draws=10, per_family=12, noise=0.02, example_noise=0.0):
        g = np.random.default_rng(5)
        self.groups = groups_of(per_family)
        self.atlas = 1.0 + 0.1 * g.standard_normal(len(self.groups))
        self.random = (self.atlas + effect + noise * g.standard_normal((draws, len(self.groups)))
                       + example_noise * g.standard_normal(len(self.groups)))

    def losses(self):
        return self.atlas, self.random, self.groups

    def damage(self):
        return self.atlas * 0 + 0.5, self.random * 0 + 0.7

    def figures(self):
        return {"k": 3}


@pytest.mark.parametrize("case, expected", [
    (dict(effect=0.3), Verdict.CONFIRMED),
    (dict(effect=-0.1), Verdict.FAILED),
    (dict(effect=0.05, example_noise=0.4), Verdict.INCONCLUSIVE),
    (dict(effect=0.3, draws=2), Verdict.INCONCLUSIVE),  # fewer random skips than the rule's minimum
    (dict(effect=0.3, per_family=2), Verdict.INCONCLUSIVE),
])
def test_skip_recover_reaches_each_outcome(case, expected):
    seed_finding, rigorous = L.skip_recover(bench(skip=FakeSkip(**case)), params("SKIP-RECOVER"))
    assert verdict("SKIP-RECOVER", rigorous) is expected, rigorous.holds.statement
    if "draws" in case or "per_family" in case:
        assert "below the rule's minimum n" in rigorous.holds.undecided
    assert "random_minus_atlas_damage" in rigorous.ci  # damage before recovery, reported beside the decision
    assert seed_finding.untested.startswith("the seed never ran this")


def test_every_lora_delta_has_a_rationale():
    for claim_id in ("LORA-ATLAS", "LORA-OPROJ", "LORA-LATE", "LOCKIN", "SKIP-RECOVER"):
        p = params(claim_id)
        deltas = [k for k in p if k.endswith("delta")]
        assert deltas, claim_id
        assert all(p.get(f"{k}_rationale") for k in deltas), claim_id
