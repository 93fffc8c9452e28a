"""Sample plans as data (engine/data/plans.toml, engine/plans.py): the data reproduces the four tables the blocks
used to hard-code, a claim's [claim.params] reach the sizes, and a malformed plans file names the file and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine import lora, plans
from engine.studies import atlas as A
from engine.studies import quant as Q
from engine.studies import steer as S
from engine.verdicts import load_catalogue, parse_catalogue

# ------------------------------------------------------------------------------------------------ the oracle
# The tables as they were hard-coded before they moved to engine/data/plans.toml (atlas SIZES, steer SIZES,
# quant QUANT_SIZES, lora CPU_PLAN / GPU_PLAN), every field written out. The data must reproduce them exactly.

OLD_ATLAS = {
    "gpu": dict(seed_per_family=5, rigorous_per_family=10, nl_per_family=50, noop_examples=24,
                skip_single_layers=None, n_resamples=2000, batch_size=32),
    "cpu": dict(seed_per_family=1, rigorous_per_family=2, nl_per_family=2, noop_examples=4,
                skip_single_layers=5, n_resamples=2000, batch_size=4),
}
_STEER_CPU = dict(family="uncertainty_expression", n_positive=6, per_negative_family=1, n_select=4, n_test=6,
                  scales=(-1.0, 0.5, 1.0), units="relative", n_random=32, percentile=95.0, n_seed_prompts=3,
                  n_seed_random=16, seed_scale=-4.0, n_pairs=36, template="none", seed=0)
OLD_STEER = {
    "cpu": _STEER_CPU,
    "gpu": _STEER_CPU | dict(n_positive=24, per_negative_family=4, n_select=24, n_test=48,
                             scales=(-8.0, -4.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 4.0, 8.0), n_random=200,
                             n_seed_prompts=15, n_seed_random=64, n_pairs=400),
}
_QUANT_CPU = dict(n_eval=4, scale=-4.0, units="absolute", seed_layer=2, seed_n_layers=24,
                  precisions=("fp32", "bf16", "fp16", "nf4-bf16", "nf4-fp16", "int8"), reference="bf16",
                  speed_batch=4, rounds=3, warmup=1)
OLD_QUANT = {"cpu": _QUANT_CPU, "gpu": _QUANT_CPU | dict(n_eval=24, speed_batch=8, rounds=20, warmup=3)}
_LORA_CPU = dict(tier="cpu", families=("json_schema", "factual_recall", "code_syntax"), split="short", n_train=4,
                 n_eval=3, data_seed=0, max_len=40, steps=12, batch_size=4, lr=2e-3, warmup_steps=2, train_seed=0,
                 r=8, alpha=16, k=3, n_random=3, checkpoints=(0.1, 0.25, 0.5, 1.0),
                 sweep_modules=("o", "v", "q", "k", "gate", "up", "down"), atlas_per_family=1,
                 seed_atlas_per_family=1, lock_per_family=2, lock_k=5, skip_fraction=0.1, n_skip_random=2,
                 generate=True)
OLD_LORA = {
    "cpu": _LORA_CPU,
    "gpu": _LORA_CPU | dict(tier="gpu", n_train=6, n_eval=4, max_len=256, steps=100, batch_size=4, lr=2e-4,
                            warmup_steps=10, n_random=8, atlas_per_family=5, seed_atlas_per_family=5,
                            lock_per_family=5, n_skip_random=5),
}

SIZES_FOR = {"atlas": A.sizes_for, "steer": S.sizes_for, "quant": Q.quant_sizes_for, "lora": lora.plan_for}
OLD = {"atlas": OLD_ATLAS, "steer": OLD_STEER, "quant": OLD_QUANT, "lora": OLD_LORA}
CLASSES = {"atlas": A.Sizes, "steer": S.SteerSizes, "quant": Q.QuantSizes, "lora": lora.LoraPlan}
PLANS_TOML = Path(plans.__file__).parent / "data" / "plans.toml"


def typed(values: dict) -> dict:
    """Values with their types, so 4 and 4.0 (or a list and a tuple) do not compare equal."""
    return {k: (type(v).__name__, tuple((type(x).__name__, x) for x in v) if isinstance(v, tuple) else v)
            for k, v in values.items()}


@pytest.mark.parametrize("block", list(OLD))
@pytest.mark.parametrize("tier", plans.TIERS)
def test_the_plans_data_reproduces_the_old_tables_exactly(block, tier):
    sizes = SIZES_FOR[block](tier)
    got = dataclasses.asdict(sizes)
    assert got.pop("name") == "default"
    assert typed(got) == typed(OLD[block][tier])
    assert plans.values(sizes) == got  # what the studies' cache keys hold: the numbers, not the plan's name
    assert sizes == CLASSES[block](**OLD[block][tier])  # the dataclass default for ``name`` is the default plan


def test_the_module_tables_are_the_default_plan():
    assert A.SIZES == {t: A.sizes_for(t) for t in plans.TIERS}
    assert S.SIZES == {t: S.sizes_for(t) for t in plans.TIERS}
    assert Q.QUANT_SIZES == {t: Q.quant_sizes_for(t) for t in plans.TIERS}
    assert lora.CPU_PLAN == lora.plan_for("cpu") and lora.GPU_PLAN == lora.plan_for("gpu")
    assert A.sizes_for("anything-but-gpu") == A.SIZES["cpu"]  # as before: only "gpu" reads the gpu sizes


def test_no_claim_of_the_catalogue_overrides_a_size():
    """Today every [claim.params] key is a rule threshold: each claim runs with its block's default plan."""
    catalogue = load_catalogue()
    for claim in catalogue:
        for tier in claim.tiers:
            assert SIZES_FOR[claim.block](tier, claim.params) == SIZES_FOR[claim.block](tier), claim.id
    assert lora.plan_for("cpu", catalogue["LOCKIN"].params).lock_k == 5  # top_k is LOCKIN's threshold, not lock_k


# ------------------------------------------------------------------------------------------------ overrides

CATALOGUE = """
[catalogue]
cpu_models = ["smollm2-135m", "gemma3-270m"]

[[claim]]
id = "TOY"
block = "atlas"
statement = "a toy claim"
rule = "a toy rule"
tiers = ["gpu", "cpu"]
models = ["qwen2.5-0.5b"]
tolerance = { abs = 0 }
[claim.params]
agreement_threshold = 0.75   # a rule threshold: no size has this name
rigorous_per_family = 3      # every tier
[claim.params.cpu]
batch_size = 2               # the cpu tier only
"""


def test_a_claim_param_override_reaches_the_sizes():
    claim = parse_catalogue(CATALOGUE, "toy.toml")["TOY"]
    cpu, gpu = A.sizes_for("cpu", claim.params), A.sizes_for("gpu", claim.params)
    assert cpu == dataclasses.replace(A.SIZES["cpu"], rigorous_per_family=3, batch_size=2)
    assert gpu == dataclasses.replace(A.SIZES["gpu"], rigorous_per_family=3)
    assert claim.params["agreement_threshold"] == 0.75  # left to the procedure
    # the same rule for every block; arrays become tuples, an int where a float is expected a float
    steer = S.sizes_for("gpu", {"n_random": 10, "scales": [-1, 2], "gpu": {"percentile": 90}})
    assert steer.n_random == 10 and steer.scales == (-1.0, 2.0) and steer.percentile == 90.0
    assert isinstance(steer.percentile, float) and all(isinstance(s, float) for s in steer.scales)
    assert Q.quant_sizes_for("cpu", {"n_eval": 2, "steering_scale": -4.0}).n_eval == 2
    assert Q.steer_sizes_for("cpu", {"n_test": 2}) == S.SIZES["cpu"]  # a quant claim's params size QuantSizes only
    plan = lora.plan_for("cpu", {"steps": 5, "min_percentile": 0.5, "cpu": {"n_eval": 2}, "gpu": {"n_eval": 9}})
    assert (plan.steps, plan.n_eval, plan.tier) == (5, 2, "cpu")


def test_overrides_that_cannot_be_sizes_are_errors():
    with pytest.raises(plans.PlanError, match=r"\[claim.params.cpu\].*'bogus'.*Sizes"):
        A.sizes_for("cpu", {"cpu": {"bogus": 1}})
    with pytest.raises(plans.PlanError, match="batch_size.*expected int"):
        A.sizes_for("cpu", {"batch_size": "four"})
    with pytest.raises(plans.PlanError, match=r"plans.toml: no plan 'nope'"):
        A.sizes_for("cpu", {"plan": "nope"})
    assert A.sizes_for("cpu", {"tier": "gpu", "name": "x"}) == A.SIZES["cpu"]  # set by the loader, never overridden


def test_the_plan_is_named_and_a_claim_may_select_another(tmp_path):
    assert {A.sizes_for("gpu").name, S.sizes_for("cpu").name, Q.quant_sizes_for("cpu").name,
            lora.plan_for("gpu").name} == {"default"}
    text = PLANS_TOML.read_text(encoding="utf-8").replace("[plans.default.cpu.atlas]",
                                                          "[plans.small.cpu.atlas]\n" + _atlas_table(batch_size=1)
                                                          + "\n[plans.default.cpu.atlas]")
    path = tmp_path / "plans.toml"
    path.write_text(text, encoding="utf-8")
    small = plans.load("atlas", A.Sizes, "cpu", {"plan": "small"}, path=path)
    assert small.name == "small" and small.batch_size == 1 and small.seed_per_family == 1
    assert plans.load("atlas", A.Sizes, "cpu", path=path) == A.SIZES["cpu"]


def _atlas_table(**changes) -> str:
    values = OLD_ATLAS["cpu"] | changes
    return "".join(f"{k} = {v}\n" for k, v in values.items() if v is not None)


# ------------------------------------------------------------------------------------------------ malformed files


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = PLANS_TOML.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "plans.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_an_unknown_key_in_the_plans_file_is_an_error_naming_the_file_and_key(tmp_path):
    path = _broken(tmp_path, "[plans.default.cpu.atlas]\n", "[plans.default.cpu.atlas]\nbatch_sise = 4\n")
    with pytest.raises(plans.PlanError) as err:
        plans.load("atlas", A.Sizes, "cpu", path=path)
    assert str(path) in str(err.value) and "'plans.default.cpu.atlas.batch_sise'" in str(err.value)
    assert "batch_size" in str(err.value)  # the known fields are listed


@pytest.mark.parametrize("old, new, key", [
    ("[plans.default.gpu.lora]", "[plans.default.tpu.lora]", "plans.default.tpu"),
    ("[plans.default.cpu.quant]", "[plans.default.cpu.quants]", "plans.default.cpu.quants"),
    ("# ------", "[extra]\nx = 1\n# ------", "'extra'"),
])
def test_an_unknown_tier_block_or_table_is_an_error_naming_the_file_and_key(tmp_path, old, new, key):
    path = _broken(tmp_path, old, new)
    with pytest.raises(plans.PlanError, match=key) as err:
        plans.read(path)
    assert str(path) in str(err.value)


def test_a_missing_field_or_a_wrong_type_is_an_error(tmp_path):
    path = _broken(tmp_path, "n_select = 4\n", "")
    with pytest.raises(plans.PlanError, match=r"missing key 'plans.default.cpu.steer.n_select'"):
        plans.load("steer", S.SteerSizes, "cpu", path=path)
    path = _broken(tmp_path, "steps = 12\n", 'steps = "twelve"\n')
    with pytest.raises(plans.PlanError, match=r"'plans.default.cpu.lora.steps': expected int"):
        plans.load("lora", lora.LoraPlan, "cpu", path=path)
    path = _broken(tmp_path, "skip_single_layers = 5", "tier = \"gpu\"")
    with pytest.raises(plans.PlanError, match=r"unknown key 'plans.default.cpu.atlas.tier'"):
        plans.load("atlas", A.Sizes, "cpu", path=path)
    # a field whose default is None may be left out (TOML has no null): the gpu atlas plan does so
    assert A.sizes_for("gpu").skip_single_layers is None
