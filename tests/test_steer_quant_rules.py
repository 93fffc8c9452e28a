"""The catalogue v3 rules of STEER-ALL, STEER-RANDOM, STEER-TRANSFER and QUANT-KL reach each outcome they claim
(CONFIRMED, FAILED, INCONCLUSIVE) from constructed measurements, through the production decision functions of the
studies (``engine.studies.steer`` / ``engine.studies.quant``) and the verdict layer (``engine.verdicts.Recorder``);
and a tiny model with a planted steering direction gives CONFIRMED for STEER-RANDOM's rule through the production
study function, where its unplanted twin at the same n does not.

Catalogue v3: AGAINST (the CI's upper bound below delta: a real but negligible effect) is decided before FOR; there
is no minimum n of prompts (a clear effect at 1-3 prompts per family is decided: the stratified t-interval, or the
sign-flip test of the family means at one prompt per family); too few controls stays a failed precondition.

The constructed studies have the shape the studies store (per-prompt values, the prompts' families); the thresholds
are the catalogue's (``engine/data/claims.toml``), so a changed delta or control minimum shows here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import decisions as D
from engine import models
from engine import steering as st
from engine.studies import quant as Q
from engine.studies import steer as S
from engine.studies.findings import Finding
from engine.tasks import Example
from engine.verdicts import Recorder, Target, Verdict, load_catalogue

FAMILIES = [f"fam{i}" for i in range(11)]  # the 11 "other" families of a steering contrast
CATALOGUE = load_catalogue()
SIZES = S.SteerSizes()


def params(claim_id: str, **changes) -> dict:
    return {**CATALOGUE[claim_id].params, **changes}


def groups(per_family: int) -> list[str]:
    return [f for f in FAMILIES for _ in range(per_family)]


def sample(mean: float, sd: float, per_family: int, seed: int = 0) -> np.ndarray:
    """Normal per-prompt values with exactly this mean and SD (so a constructed case sits where it is meant to)."""
    z = np.random.default_rng(seed).normal(size=len(FAMILIES) * per_family)
    return mean + sd * (z - z.mean()) / (z.std() if z.size > 1 else 1.0)


@pytest.fixture(autouse=True)
def no_calibration_table(monkeypatch):
    """The rules are decided from constructed data at chosen n, whatever the committed calibration table
    (``engine/data/calibration.json``) holds: the Recorder's calibration gate is tested with the decisions
    (tests/test_decisions.py), not here."""
    monkeypatch.setattr(D, "calibration_table", lambda: {"rules": {}, "claims": {}})


def verdict(claim_id: str, finding: Finding, model: str = "smollm2-135m"):
    """The verdict of a finding, recorded as the claims plugin records it (``holds`` is the rule's Evidence)."""
    assert isinstance(finding.holds, D.Evidence), "v2: holds is the Evidence of the rule, never a bool"
    record = Recorder(Target(CATALOGUE[claim_id], model, "cpu")).record(**{**finding.record(),
                                                                           "holds": finding.holds})
    return record


# ------------------------------------------------------------------------------------------------ STEER-ALL


def steer_all_study(gap: float, sd: float, per_family: int, seed_gap: float = 0.0, seed_sd: float = 1e-3,
                    seed_per_family: int = 10) -> dict:
    n_layers, guess, best = 6, 1, 4
    guess_dlogp = sample(0.5, 0.3, per_family, seed=1)
    best_dlogp = guess_dlogp + sample(gap, sd, per_family, seed=2)
    kl = np.abs(np.random.default_rng(3).normal(0.01, 0.002, size=(n_layers, len(FAMILIES) * seed_per_family)))
    kl[best] = kl[guess] + sample(seed_gap, seed_sd, seed_per_family, seed=4)
    sweep = st.Sweep("m", "c", list(range(n_layers)), [1.0], "relative", np.arange(n_layers, dtype=float)[:, None],
                     np.zeros((n_layers, 1)))
    return {"model": "m", "n_layers": n_layers, "hub_guess_layer": guess, "targets": [" x"], "sizes": "constructed",
            "rigorous": {"sweep": sweep.to_dict(), "best_layer": best, "best_scale": 1.0,
                         "best_test_effect": float(best_dlogp.mean()), "guess_test_effect": float(guess_dlogp.mean()),
                         "all_layers_effect": 0.1, "best_dlogp": best_dlogp.tolist(),
                         "guess_dlogp": guess_dlogp.tolist(), "test_groups": groups(per_family)},
            "seed": {"scale": -4.0, "kl_per_prompt": kl.tolist(), "groups": groups(seed_per_family),
                     "best_layer": best, "kl_by_layer": kl.mean(1).tolist(), "best_kl": float(kl[best].mean()),
                     "guess_kl": float(kl[guess].mean())}}


@pytest.mark.parametrize("gap, sd, per_family, expected, why", [
    (0.5, 0.2, 10, Verdict.CONFIRMED, ""),
    (0.0, 0.02, 10, Verdict.FAILED, ""),  # the gap CI lies within [-delta, delta]: steering at the hub loses nothing
    (0.029, 0.01, 10, Verdict.FAILED, "upper bound < delta"),  # a real but negligible gap: against before for
    (0.08, 0.6, 10, Verdict.INCONCLUSIVE, "straddles"),
    (0.5, 0.2, 3, Verdict.CONFIRMED, "stratified-t"),  # 3 per family: decided (v2: below the rule's minimum n)
])
def test_steer_all_reaches_each_outcome(tmp_path, gap, sd, per_family, expected, why):
    """(A gap CI of about [0.026, 0.032] with delta 0.1 is above 0 yet below delta: catalogue v3 decides AGAINST
    first, FAILED, not CONFIRMED. A 0.5 gap at 3 per family is decided: v2's minimum n said INCONCLUSIVE.)"""
    _seed, rigorous = S.steer_all_findings(steer_all_study(gap, sd, per_family), SIZES, tmp_path, params("STEER-ALL"))
    record = verdict("STEER-ALL", rigorous)
    assert record.verdict is expected, record.reason
    assert why in (rigorous.holds.undecided or rigorous.holds.statement)
    assert rigorous.figures["delta"] == CATALOGUE["STEER-ALL"].params["delta"]
    assert rigorous.holds.params["rationale"] == CATALOGUE["STEER-ALL"].params["delta_rationale"]
    assert len(rigorous.holds.data["values"]) == len(FAMILIES) * per_family  # kept for offline recompute
    assert D.recompute(rigorous.holds).ci == rigorous.holds.ci


@pytest.mark.parametrize("seed_gap, seed_sd, per_family, expected", [
    (0.05, 1e-3, 10, Verdict.CONFIRMED), (0.0, 1e-3, 10, Verdict.FAILED),
    (0.05, 1e-3, 1, Verdict.CONFIRMED),  # one prompt per family: the sign-flip test (v2: never a verdict)
    (0.005, 0.05, 1, Verdict.INCONCLUSIVE),  # ... which still needs the family means to agree in sign
])
def test_steer_all_seed_protocol_is_decided_by_the_same_rule(tmp_path, seed_gap, seed_sd, per_family, expected):
    """At one prompt per family (the seed's sample) catalogue v3 decides with the exact sign-flip test of the 11
    family means: a KL gap in every family is CONFIRMED (v2's minimum n said INCONCLUSIVE); a gap well inside the
    spread of the family means is not decided, with a projected n."""
    study = steer_all_study(0.5, 0.2, 10, seed_gap=seed_gap, seed_sd=seed_sd, seed_per_family=per_family)
    seed, _ = S.steer_all_findings(study, SIZES, tmp_path, params("STEER-ALL"))
    record = verdict("STEER-ALL", seed)
    assert record.verdict is expected, record.reason
    assert any("held-out" in part for part in seed.figures["not_decided"])
    assert seed.holds.params["method"] == ("sign-flip" if per_family == 1 else "stratified-t")
    assert "minimum" not in seed.holds.undecided
    if expected is Verdict.INCONCLUSIVE:
        assert seed.holds.n_to_decide is not None and seed.holds.n_to_decide > 1


# ------------------------------------------------------------------------------------------------ STEER-RANDOM


def steer_random_study(effect: float, per_family: int, n_random: int = 100, random_mean: float = 0.0,
                       off_target_mean: float = 0.0, n_off_target: int = 11, sd: float = 0.3) -> dict:
    dlogp = sample(effect, sd, per_family, seed=5)
    rng = np.random.default_rng(6)
    return {"model": "m", "n_layers": 6, "hub_guess_layer": 1, "targets": [" x"], "sizes": "constructed",
            "rigorous": {"best_layer": 4, "best_scale": 1.0, "best_test_effect": float(dlogp.mean()),
                         "best_dlogp": dlogp.tolist(), "test_groups": groups(per_family),
                         "random_effects": rng.normal(random_mean, 0.2, n_random).tolist(),
                         "off_target_effects": {f"f{i}": float(x) for i, x in
                                                enumerate(rng.normal(off_target_mean, 0.2, n_off_target))},
                         "vector_norm": 10.0, "resid_norm": 10.0}}


@pytest.mark.parametrize("kwargs, expected, why", [
    ({"effect": 2.0, "per_family": 10}, Verdict.CONFIRMED, ""),
    ({"effect": 0.0, "per_family": 10}, Verdict.FAILED, ""),
    ({"effect": 2.0, "per_family": 10, "off_target_mean": 2.5}, Verdict.FAILED, ""),  # not specific: off-target wins
    ({"effect": 0.38, "per_family": 10, "sd": 1.0}, Verdict.INCONCLUSIVE, "straddles"),  # ~ p95 (0.29) + delta / 2
    ({"effect": 2.0, "per_family": 10, "n_random": 32}, Verdict.INCONCLUSIVE,
     "below the rule's minimum number of controls (random: 32 < 100)"),
    ({"effect": 2.0, "per_family": 10, "n_off_target": 4}, Verdict.INCONCLUSIVE,
     "below the rule's minimum number of controls (off_target: 4 < 10)"),
    ({"effect": 2.0, "per_family": 2}, Verdict.CONFIRMED, "lower bound > 0"),  # v2: below the rule's minimum n
])
def test_steer_random_reaches_each_outcome(kwargs, expected, why):
    """(Too few controls is a failed precondition; 2 prompts per family with an effect far above the controls is
    decided: catalogue v3 has no minimum n of prompts.)"""
    seed, rigorous = S.steer_random_findings(steer_random_study(**kwargs), SIZES, params("STEER-RANDOM"))
    record = verdict("STEER-RANDOM", rigorous)
    assert record.verdict is expected, record.reason
    assert why in (rigorous.holds.undecided or rigorous.holds.statement)
    d = rigorous.holds.details
    assert set(d["thresholds"]) == {"random", "off_target"} and d["threshold"] == max(d["thresholds"].values())
    assert rigorous.figures["n_random"] == kwargs.get("n_random", 100)
    assert seed.untested.startswith(S.SEED_NEVER_RAN)  # C4: the seed never ran it


def test_control_rule_compares_the_direction_with_the_highest_control_percentile():
    """Catalogue v3 (Verdicts v3, 2/2 item 6): the random set's 95th percentile is an estimate from 101 vectors,
    so the direction is compared with the upper end of its order-statistic CI (for) and the lower end + delta
    (against); the off-target set is every other family's direction, so its percentile is exact."""
    effects, g = sample(1.0, 0.1, 10), groups(10)
    controls = {"random": np.linspace(0, 1, 101).tolist(), "off_target": [0.2] * 11}
    ev = S.control_rule(effects, g, controls, params("STEER-RANDOM"))
    low, point, high = S.percentile_ci(controls["random"], 95)
    assert ev.details["thresholds"]["random"] == pytest.approx(0.95) == pytest.approx(point)
    assert low < 0.95 < high and ev.details["threshold_ci"] == [low, high]
    np.testing.assert_allclose(ev.data["values"], effects - high)
    assert ev.params["delta"] == pytest.approx(params("STEER-RANDOM")["delta"] - (high - low))
    assert ev.details["direction_ci"][0] == pytest.approx(ev.ci[0] + high)
    assert S.percentile_ci(list(range(32)), 95)[2] == float("inf")  # 32 vectors cannot bound it from above


# ------------------------------------------------------------------------------------------------ STEER-TRANSFER


def transfer_study(effect: float, per_family: int, n_random: int = 100, released: bool = True,
                   sd: float = 0.3) -> dict:
    dlogp = sample(effect, sd, per_family, seed=7)
    return {"mapped_effect": float(dlogp.mean()), "mapped_dlogp": dlogp.tolist(), "native_effect": 1.0,
            "test_groups": groups(per_family),
            "random_effects": np.random.default_rng(8).normal(0, 0.2, n_random).tolist(),
            "source_released": released, "cosine_to_native": 0.5, "method": "lstsq", "fit_r2": 0.9,
            "heldout_r2": 0.4, "n_pairs": 36, "source_layer": 4, "target_layer": 3, "width_source": 8,
            "width_target": 12, "peak_rss_mb": 1.0, "peak_rss_delta_mb": 0.5, "source_mb": 1.0, "target_mb": 1.0,
            "both_models_mb": 2.0, "peak_is_reset": True, "sizes": "constructed"}


@pytest.mark.parametrize("effect, per_family, n_random, sd, expected", [
    (1.5, 10, 100, 0.3, Verdict.CONFIRMED), (0.0, 10, 100, 0.3, Verdict.FAILED),
    (0.38, 10, 100, 1.0, Verdict.INCONCLUSIVE), (1.5, 10, 20, 0.3, Verdict.INCONCLUSIVE),
    (1.5, 1, 100, 0.3, Verdict.CONFIRMED)])
def test_steer_transfer_reaches_each_outcome(effect, per_family, n_random, sd, expected):
    """(One held-out prompt per family with a mapped effect far above the controls: decided by the sign-flip test
    of the 11 family means, CONFIRMED; v2's minimum n said INCONCLUSIVE. 20 random controls stays a failed
    precondition.)"""
    seed, rigorous = S.steer_transfer_findings(transfer_study(effect, per_family, n_random, sd=sd), SIZES,
                                               params("STEER-TRANSFER"))
    record = verdict("STEER-TRANSFER", rigorous, model="smollm2-135m+gemma3-270m")
    assert record.verdict is expected, record.reason
    if n_random < 100:
        assert "below the rule's minimum number of controls" in rigorous.holds.undecided
    if per_family == 1:
        assert rigorous.holds.params["method"] == "sign-flip"
    assert rigorous.figures["heldout_r2"] == 0.4
    assert seed.untested.startswith(S.SEED_NEVER_RAN)  # G1: the seed never ran it


def test_steer_transfer_needs_one_model_at_a_time():
    with pytest.raises(AssertionError, match="released"):
        S.steer_transfer_findings(transfer_study(1.5, 10, released=False), SIZES, params("STEER-TRANSFER"))


# ------------------------------------------------------------------------------------------------ QUANT-KL


def quant_study(amp: float, per_family: int, effect_over_noise: float = 50.0, seed_amp: float | None = None,
                spread: float = 0.2) -> dict:
    """bf16's steering KL at two scales (the larger one ``effect_over_noise`` x its noise floor), NF4's = bf16's x
    ``amp`` x per-prompt noise; the seed's NF4-fp16 KL over its fp32 reference by ``seed_amp``."""
    n = len(FAMILIES) * per_family
    rng = np.random.default_rng(9)
    noise = np.full(n, 1e-3)
    bf16 = {"-0.5": rng.lognormal(np.log(1e-3 * effect_over_noise / 4), 0.3, n),
            "-1": rng.lognormal(np.log(1e-3 * effect_over_noise), 0.3, n)}
    nf4 = {k: v * amp * rng.lognormal(0, spread, n) for k, v in bf16.items()}
    ref = rng.lognormal(np.log(0.02), 0.3, n)
    seed_nf4 = ref * (seed_amp if seed_amp is not None else amp) * rng.lognormal(0, 0.2, n)

    def row(kl_by_scale, noise_kl, seed_kl):
        return {"ok": True, "error": "", "kl": float(np.mean(kl_by_scale["-1"])), "seed_kl": float(np.mean(seed_kl)),
                "noise_kl": float(np.mean(noise_kl)), "noise_kl_per_example": list(noise_kl),
                "kl_by_scale": {k: list(v) for k, v in kl_by_scale.items()}, "seed_kl_per_example": list(seed_kl)}

    rows = {"bf16": row(bf16, noise, ref), "nf4-bf16": row(nf4, noise * 80, seed_nf4),
            "nf4-fp16": row(nf4, noise * 90, seed_nf4)}
    return {"kl": {"precisions": rows, "scale": -4.0, "units": "absolute", "rigorous_units": "relative", "layer": 3,
                   "seed_amplification": float(np.mean(seed_nf4) / np.mean(ref)), "seed_reference_kl": float(ref.mean()),
                   "seed_reference_kl_per_example": list(ref), "seed_reference_layer": 29},
            "groups": groups(per_family), "sizes": "constructed"}


@pytest.mark.parametrize("amp, per_family, over_noise, spread, expected, why", [
    (3.0, 10, 50.0, 0.2, Verdict.CONFIRMED, ""),
    (1.0, 10, 50.0, 0.2, Verdict.FAILED, ""),
    (1.15, 10, 50.0, 0.02, Verdict.FAILED, "upper bound < delta"),  # real but below 1.5x: no amplification
    (1.2, 10, 50.0, 1.5, Verdict.INCONCLUSIVE, "straddles"),
    (3.0, 10, 5.0, 0.2, Verdict.INCONCLUSIVE, "no scale above the noise floor"),
    (3.0, 1, 50.0, 0.2, Verdict.CONFIRMED, "sign-flip"),  # one prompt per family (v2: below the minimum n)
])
def test_quant_kl_reaches_each_outcome(amp, per_family, over_noise, spread, expected, why):
    """(A ratio CI of about [1.14, 1.16] lies above 1 yet below 1 + delta = 1.5, where the rationale says there is
    no amplification: catalogue v3 decides AGAINST first, FAILED, not CONFIRMED. A 3x ratio at one prompt per family
    is decided by the sign-flip test of the family means; v2's minimum n said INCONCLUSIVE.)"""
    _seed, rigorous = Q.quant_kl_findings(quant_study(amp, per_family, over_noise, spread=spread), params("QUANT-KL"))
    record = verdict("QUANT-KL", rigorous)
    assert record.verdict is expected, record.reason
    assert why in (rigorous.holds.undecided or rigorous.holds.statement)
    f = rigorous.figures
    assert f["requantisation_kl"] == pytest.approx(0.08) and "dequantised 4-bit GGUFs" in rigorous.notes[0]
    if over_noise == 50.0:
        assert f["scale"] == -0.5 and f["effect_over_noise"]["-0.5"] == pytest.approx(12.5, rel=0.2)  # smallest >= 10x


@pytest.mark.parametrize("seed_amp, expected", [(400.0, Verdict.CONFIRMED), (1.0, Verdict.FAILED)])
def test_quant_kl_seed_protocol_is_the_mismatched_ratio_decided_by_the_same_rule(seed_amp, expected):
    seed, _ = Q.quant_kl_findings(quant_study(3.0, 10, seed_amp=seed_amp), params("QUANT-KL"))
    record = verdict("QUANT-KL", seed)
    assert record.verdict is expected, record.reason
    assert seed.figures["amplification"] == pytest.approx(seed_amp, rel=0.3)
    assert any("noise-floor" in part for part in seed.figures["not_decided"])


def test_the_ratio_ci_is_the_ci_of_the_per_prompt_log_ratio():
    """A ratio's CI: the log-ratio of paired per-prompt KLs decided by the one "A > B" primitive."""
    num, den, g = np.full(110, 3.0), np.full(110, 1.0), groups(10)
    ev = Q.amplification_rule(num * np.linspace(0.9, 1.1, 110), den, g, params("QUANT-KL"))
    assert ev.primitive == "greater" and ev.params["delta"] == pytest.approx(np.log1p(0.5))
    assert np.exp(ev.estimate) == pytest.approx(3.0, rel=0.02) and ev.outcome is D.Outcome.FOR


# ------------------------------------------------------------------------------------------------ planted direction


def _short_data(family: str = "target") -> S.SteerData:
    """Short prompts (a byte tokenizer makes suite prompts long): the target family answers "Q", the 11 other
    families answer with their own letter; 22 select and 110 test prompts of the other families (10 per family)."""
    letters = "abcdefghijk"

    def ex(fam, i, answer, tag):
        return Example(f"{fam}/{tag}{i}", fam, "short", f"{fam} {tag}{i} :", answer, "exact")

    pos = tuple(ex(family, i, "Q", "p") for i in range(6))
    neg = tuple(ex(f, i, letters[j], "n") for j, f in enumerate(FAMILIES) for i in range(2))
    select = [ex(f, i, letters[j], "s") for i in range(2) for j, f in enumerate(FAMILIES)]
    test = [ex(f, i, letters[j], "t") for i in range(10) for j, f in enumerate(FAMILIES)]
    return S.SteerData(st.Contrast(f"{family}-vs-rest", pos, neg), select, test, [])


def _planted(beta: float):
    """A tiny llama whose target-token logits read the contrast's difference-of-means direction at the last layer
    (``beta`` x its unit, through the final norm's gain): a planted steering direction. beta = 0: its twin."""
    lm = models.tiny("llama", n_layers=3, seed=0)
    data = _short_data()
    last = lm.n_layers - 1
    unit = st.diff_of_means(lm, data.contrast, [last], template="none").unit(last)
    targets = st.family_target_set(lm, data.contrast, "none")
    head = lm.model.lm_head
    weight = head.weight.detach().clone()  # untie from the embedding: the residual stream stays the same
    weight[list(targets)] += beta * unit / lm.model.model.norm.weight.detach()
    head.weight = torch.nn.Parameter(weight, requires_grad=False)
    return lm, data


PLANT_BETA = 0.07  # an effect ~1.6x delta over the controls' 95th percentile (measured: 0.063: 1.26x, 0.09: 2.9x)


@pytest.mark.slow
def test_a_planted_direction_is_confirmed_and_its_unplanted_twin_is_not():
    sizes = S.SteerSizes(family="target", scales=(1.0,), n_random=100, n_seed_prompts=2, template="none")
    p = params("STEER-RANDOM")
    outcomes = {}
    for beta in (PLANT_BETA, 0.0):
        lm, data = _planted(beta)
        study = S.steer_study(lm, sizes, data=data, progress=False)
        _, rigorous = S.steer_random_findings(study, sizes, p)
        outcomes[beta] = (verdict("STEER-RANDOM", rigorous).verdict, rigorous.holds)
    planted, twin = outcomes[PLANT_BETA], outcomes[0.0]
    assert planted[0] is Verdict.CONFIRMED, planted[1].statement
    d = planted[1].details  # the effect over the controls' p95 (its point estimate; the rule uses its CI's ends)
    over = planted[1].estimate + d["threshold_ci"][1] - d["threshold"]
    assert 1.0 <= over / p["delta"] <= 2.0, planted[1].statement  # a planted effect of 1-2x delta
    assert twin[0] is not Verdict.CONFIRMED, twin[1].statement
    assert planted[1].n == twin[1].n == 110


# ------------------------------------------------------------------------------------------------ QUANT-SPEED


def _speed_report(int8_s: float, nf4_s: float, rounds: int = 20, spread: float = 0.02, device: str = "cuda"):
    from engine.quant import SpeedReport, SpeedRow

    rng = np.random.default_rng(3)

    def row(name, t):
        return SpeedRow(name, True, times_s=list(t * np.exp(spread * rng.standard_normal(rounds))), tokens=100,
                        cold_s=t * 1.5)

    rows = {"bf16": row("bf16", 1.0), "int8": row("int8", int8_s), "nf4-bf16": row("nf4-bf16", nf4_s),
            "nf4-fp16": row("nf4-fp16", nf4_s), "fp16": row("fp16", 1.0), "fp32": row("fp32", 1.2)}
    return SpeedReport("m", device, 8, 128, rounds, 3, "bf16", rows)


@pytest.mark.parametrize("int8_s, nf4_s, spread, expected", [
    (1.52, 1.09, 0.02, D.Outcome.FOR),  # the seed's figures: 8-bit clearly slower than NF4
    (1.10, 1.09, 0.02, D.Outcome.AGAINST),  # within 10%: no speed reason to prefer NF4
    (1.20, 1.09, 0.40, D.Outcome.UNDECIDED),  # noisy rounds
])
def test_quant_speed_on_a_gpu_is_decided_by_the_ratio_ci_of_per_round_timings(int8_s, nf4_s, spread, expected):
    """Catalogue v3 (Verdicts v3, 2/2 item 7): QUANT-SPEED on the gpu tier decides through greater on the per-round
    log latency ratio int8 / NF4, not a bare bool of two medians; the seed's one cold forward has no CI."""
    from engine.studies import quant as Q

    report = _speed_report(int8_s, nf4_s, spread=spread)
    ev = Q.speed_rule(report, "nf4-bf16", "rigorous", params("QUANT-SPEED"))
    assert ev.outcome is expected, ev.statement
    assert ev.n == 20 and ev.params["delta"] == pytest.approx(np.log1p(params("QUANT-SPEED")["speed_delta"]))
    seed = Q.speed_rule(report, "nf4-fp16", "seed", params("QUANT-SPEED"))
    assert seed.outcome is D.Outcome.UNDECIDED and "no CI" in seed.undecided


def test_steer_all_scores_the_guess_layer_at_its_own_best_scale():
    """Verdicts v3, 2/2 item 5: the guess layer is scored at the scale that is best *for it* on the select prompts,
    not at the sweep winner's (which favours the sweep's pick)."""
    from engine.steering.rigorous import Sweep

    effect = np.array([[0.1, 0.2], [0.9, 0.3], [0.0, 1.5]])  # layers 0..2 x scales (0.5, 2.0)
    grid = Sweep(model="m", contrast="c", layers=[0, 1, 2], scales=[0.5, 2.0], units="relative", effect=effect,
                 kl=np.zeros_like(effect))
    assert grid.best(+1) == (2, 2.0, 1.5)  # the sweep's pick
    assert grid.best_scale_at(1, +1) == (0.5, 0.9)  # the guess layer at its own best scale, not 2.0


def test_quant_kl_excludes_prompts_whose_kl_is_zero_instead_of_flooring_them():
    """Verdicts v3, 2/2 item 7: a zero reference KL cannot form a ratio (a 1e-12 floor made it a huge log-ratio):
    the prompt is excluded and counted."""
    g = [f"f{i}" for i in range(12) for _ in range(2)]
    num = np.full(24, 2.0)
    den = np.full(24, 1.0)
    den[0] = 0.0
    ev = Q.amplification_rule(num * np.exp(0.01 * np.arange(24)), den, g, params("QUANT-KL"))
    assert ev.details["excluded_zero_kl"] == 1 and ev.n == 23 and "zero KL excluded" in ev.statement
    assert np.isfinite(ev.estimate) and ev.estimate < 1.0  # log 2 ~ 0.69, not log(2 / 1e-12) ~ 28
