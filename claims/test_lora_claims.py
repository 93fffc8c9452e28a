"""The lora block: LORA-ATLAS, LORA-LATE, LORA-OPROJ, LOCKIN (G3) and SKIP-RECOVER (G4), seed and rigorous protocol.

Each test measures with :class:`engine.lora.LoraBench` (one per model and plan, shared by the tests: the all-linear
adapter, the atlases and every training run are computed once and cached on disk) and records one verdict per
protocol; the rules are the catalogue's v2 rules, decided by ``engine.decisions`` in the procedures of
``engine.studies.lora`` (``holds`` is the decision's evidence). Sizes and budgets are the plan's
(``[plans.<plan>.<tier>.lora]`` in ``engine/data/plans.toml``, ``--plan``); deltas with their rationale and the
rules' minimum numbers of training seeds and random draws come from ``[claim.params]`` in
``engine/data/claims.toml``. A plan below a rule's minimum gives INCONCLUSIVE "below the rule's minimum n". The
seed never ran G3 and G4: their seed-protocol records are UNTESTED.
"""

from __future__ import annotations

import pytest

from claims.plugin import claim_params, record_both
from engine import lora
from engine.studies import lora as L

pytestmark = pytest.mark.slow  # every test here trains adapters on a real model (minutes on 2 cores)

_BENCHES: dict[tuple[str, lora.LoraPlan], lora.LoraBench] = {}


def per_model(claim_id: str):
    """``claim_params`` with an xdist group per model: under ``-n 2 --dist loadgroup`` each worker trains one
    model's adapters (and shares them across the five claims) instead of both workers training both."""
    return [pytest.param(*p.values, marks=[*p.marks, pytest.mark.xdist_group(p.id)], id=p.id)
            for p in claim_params(claim_id)]


@pytest.fixture(scope="module", autouse=True)
def _free_benches():
    yield
    _BENCHES.clear()


@pytest.fixture
def bench(claim, load_model):
    """The model's LoRA bench for this claim's plan (one per model and plan for the whole module)."""
    plan = L.plan_for(claim.tier, claim.params)
    key = (claim.model, plan)
    if key not in _BENCHES:
        _BENCHES[key] = lora.LoraBench(load_model(claim.model), plan, atlas=L.model_atlas(claim.tier, claim.params))
    return _BENCHES[key]


@pytest.mark.parametrize("model", per_model("LORA-ATLAS"))
def test_atlas_guided_lora_beats_random_matched_at_equal_params(claim, model, bench):
    seed, rigorous = L.lora_atlas(bench, claim.params)
    record_both(claim, seed, rigorous)


@pytest.mark.parametrize("model", per_model("LORA-OPROJ"))
def test_o_proj_is_the_most_parameter_efficient_module(claim, model, bench):
    seed, rigorous = L.lora_oproj(bench, claim.params)
    record_both(claim, seed, rigorous)


@pytest.mark.parametrize("model", per_model("LORA-LATE"))
def test_adapter_effects_concentrate_in_the_final_tenth_of_layers(claim, model, bench):
    seed, rigorous = L.lora_late(bench, claim.params)
    record_both(claim, seed, rigorous)


@pytest.mark.parametrize("model", per_model("LOCKIN"))
def test_the_atlas_locks_in_early_in_training(claim, model, bench):
    seed, rigorous = L.lockin(bench, claim.params)
    record_both(claim, seed, rigorous)


@pytest.mark.parametrize("model", per_model("SKIP-RECOVER"))
def test_atlas_guided_skip_recovers_more_than_random_skip(claim, model, bench):
    seed, rigorous = L.skip_recover(bench, claim.params)
    record_both(claim, seed, rigorous)
