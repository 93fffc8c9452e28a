"""Group-sequential looks (issue "Evidence where it is cheap, 1/2"): a claim's rigorous sample grows in stages
(nested samples, only a stage's new prompts computed), its rule is decided at each look with the error spent
evenly over the looks (Bonferroni), and it stops at its first decided look.

The bounds hold over all looks together: simulated here through the production primitives and the production
sequential driver (``engine.decisions.sequential``), at the default plan's stages."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine import decisions as D
from engine import tasks
from engine.studies.atlas.common import sizes_for

STAGES = (2, 5, 10)
FAMILIES = 12


def nested_decisions(rng, effect: float, delta: float):
    """One simulated claim: a population of 10 per family drawn once, looks at its nested prefixes."""
    shifts = rng.normal(0, 0.3, size=(FAMILIES, 1))  # families differ; the mean over family means is ``effect``
    full = rng.normal(effect, 1.0, size=(FAMILIES, STAGES[-1])) + shifts - shifts.mean()

    def at(n):
        values = full[:, :n].reshape(-1)
        groups = [f"f{i}" for i in range(FAMILIES) for _ in range(n)]
        return D.greater(values, groups, delta=delta, label="sim", n_resamples=200)
    return D.sequential(STAGES, at, lambda ev: ev.outcome)


def test_the_error_is_spent_over_the_looks_and_the_levels_are_stored():
    assert D.looked_level() == D.LEVEL
    with D.looks(3):
        assert D.looked_level() == pytest.approx(1 - 0.05 / 3)
        ev = D.greater([0.5, 0.7, 0.6, 0.4], ["a", "a", "b", "b"], delta=0.1)
    assert ev.params["level"] == pytest.approx(1 - 0.05 / 3) and D.looked_level() == D.LEVEL
    assert D.recompute(ev).outcome is ev.outcome  # an offline recompute reads the stored (spent) level


def test_a_clear_effect_stops_at_the_first_look_and_a_marginal_one_later():
    rng = np.random.default_rng(0)
    index, ev, history = nested_decisions(rng, effect=2.0, delta=0.1)
    assert index == 0 and ev.outcome is D.Outcome.FOR and history == [(2, "for")]
    stops = [nested_decisions(rng, effect=0.45, delta=0.1)[0] for _ in range(40)]
    assert max(stops) > 0, "a marginal effect never needed a second look"


def argmax_decisions(rng, lead: float):
    """One simulated hub claim ("an argmax layer exists", 6 layers): layer 3 leads by ``lead`` (0: a flat profile,
    where deciding for any layer is false), looks at nested prefixes of 10 per family."""
    layers = np.zeros(6)
    layers[3] = lead
    full = rng.normal(layers, 1.0, size=(FAMILIES, STAGES[-1], 6))

    def at(n):
        values = full[:, :n].reshape(-1, 6)
        groups = [f"f{i}" for i in range(FAMILIES) for _ in range(n)]
        return D.argmax(values, groups, label="sim", n_resamples=200)
    return D.sequential(STAGES, at, lambda ev: ev.outcome)


def test_the_hub_rule_over_all_looks_decides_a_flat_profile_for_a_layer_rarely_and_finds_a_clear_hub():
    rng = np.random.default_rng(2)
    flat = [argmax_decisions(rng, 0.0)[1] for _ in range(200)]
    rate = sum(ev.outcome is D.Outcome.FOR for ev in flat) / len(flat)
    assert rate <= 0.025 + 2 * np.sqrt(0.025 * 0.975 / len(flat)), rate
    hubs = [argmax_decisions(rng, 1.5) for _ in range(50)]
    assert np.mean([r[1].outcome is D.Outcome.FOR and r[1].estimate == 3 for r in hubs]) >= 0.8
    assert np.mean([r[0] for r in hubs]) < 1.0  # most stop before the last look


@pytest.mark.parametrize("effect, delta, wrong", [(0.0, 0.3, D.Outcome.FOR), (0.3, 0.3, D.Outcome.AGAINST),
                                                  (0.4, 0.1, D.Outcome.AGAINST)])
def test_over_all_looks_together_a_false_decision_stays_within_its_bound(effect, delta, wrong):
    """P(a false decision at any look) over 400 simulated sequential claims, at most one-sided 2.5% (+ Monte Carlo
    slack): for under the null (effect 0); against at the boundary (effect = delta) and above it."""
    rng = np.random.default_rng(1)
    outcomes = [nested_decisions(rng, effect, delta)[1].outcome for _ in range(400)]
    rate = sum(o is wrong for o in outcomes) / len(outcomes)
    assert rate <= 0.025 + 2 * np.sqrt(0.025 * 0.975 / len(outcomes)), rate


def test_nested_samples_contain_every_smaller_stage():
    small = tasks.sample(per_family=2, seed=42, split="short", nested=True)
    large = tasks.sample(per_family=5, seed=42, split="short", nested=True)
    assert {ex.id for ex in small} <= {ex.id for ex in large}
    assert tasks.sample(per_family=2, seed=42, split="short") == tasks.sample(per_family=2, seed=42, split="short")


def test_a_plan_with_stages_is_checked():
    from engine import plans

    base = sizes_for("cpu", {"rigorous_per_family": 5})
    import dataclasses

    assert dataclasses.replace(base, stages=(2, 5, 10)).looks == (2, 5)  # capped at rigorous_per_family = 5
    assert dataclasses.replace(base, stages=(2, 10)).looks == (2, 5)
    assert dataclasses.replace(base, stages=None).looks == (5,)
    with pytest.raises(plans.PlanError):
        dataclasses.replace(base, stages=(5, 2))


def test_a_staged_claim_stops_at_its_first_decided_look_and_reports_its_looks(tmp_path):
    """A planted hub (tiny Llama, layer 2 x2) through the production template and the claims plugin under the
    default plan's looks (2 -> 5 per family): CONFIRMED at its layer, FAILED at another, the looks in its figures,
    and each look measuring only the prompts it adds."""
    import json
    import subprocess
    import sys

    from test_claims_file import planted_model_dir, row

    model = planted_model_dir(tmp_path / "planted-l2", 2)
    claims = tmp_path / "c.toml"
    claims.write_text(row("MY-HUB", model, layer=2).replace("prompts = { per_family = 10 }\n", "")
                      + row("MY-HUB-WRONG", model, layer=1).replace("prompts = { per_family = 10 }\n", ""))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MI_ATLAS_RESULTS_CACHE": str(tmp_path / "cache")}
    assert sizes_for("cpu", {}, "default").stages == (2, 5)
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "pytest", str(root / "claims"), "--claims-file", str(claims),
                             "--claims-results", str(tmp_path / "res"), "-p", "no:cacheprovider", "-q"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    [run] = (tmp_path / "res" / "runs").iterdir()
    records = {r["claim_id"]: r for r in json.loads((run / "claims.json").read_text())["records"]}
    assert records["MY-HUB"]["verdict"] == "CONFIRMED" and records["MY-HUB-WRONG"]["verdict"] == "FAILED", \
        result.stdout[-3000:]
    looks = records["MY-HUB"]["figures"]["looks"]
    assert looks["stages_per_family"] == [2, 5] and looks["stopped_at_look"] == 2
    assert looks["history"] == [[2, "undecided"], [5, "for"]]  # 2/family at 97.5% is not enough; 5 is
    assert looks["level_per_look"] == pytest.approx(1 - 0.05 / 2)
    assert records["MY-HUB"]["figures"]["n_examples"] == 60
    out = result.stdout + result.stderr
    # only the prompts a stage adds are measured: 2/family, then the 3/family new at the second look
    assert "stage 1/2 atlas(zero/layer) planted-l2 n=24" in out and "stage 2/2 atlas(zero/layer) planted-l2 n=36" in out
