"""Sample plans as data (engine/data/plans.toml, engine/plans.py): the data reproduces the four tables the blocks
used to hard-code, a claim's [claim.params] reach the sizes, and a malformed plans file names the file and key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine import decisions as D
from engine import lora, plans
from engine.studies import atlas as A
from engine.studies import quant as Q
from engine.studies import steer as S
from engine.verdicts import load_catalogue, parse_catalogue

# ------------------------------------------------------------------------------------------------ the plans
# The redesign moved the hard-coded tables here unchanged (an oracle test held them equal then); verdicts v2 and
# the measurement plans have since changed sizes on purpose. What must hold now: every plan loads for every block
# on the tiers it declares, and the powered plan ("full") reaches every rule's calibrated n (catalogue v3: no
# minimum-n constant; each rule's smallest n is where its calibration held its error bounds, in
# engine/data/calibration.json, read by the Recorder's gate) and every rule's minimum number of controls and runs,
# so a verdict of the full plan is never "below the rule's calibrated n" by construction.

SIZES_FOR = {"atlas": A.sizes_for, "steer": S.sizes_for, "quant": Q.quant_sizes_for, "lora": lora.plan_for}
CLASSES = {"atlas": A.Sizes, "steer": S.SteerSizes, "quant": Q.QuantSizes, "lora": lora.LoraPlan}
PLANS_TOML = Path(plans.__file__).parent / "data" / "plans.toml"
PLAN_TIERS = {"default": plans.TIERS, "full": plans.TIERS, "smoke": ("cpu",)}


@pytest.mark.parametrize("block", list(SIZES_FOR))
@pytest.mark.parametrize("plan", list(PLAN_TIERS))
def test_every_plan_loads_for_every_block_on_its_tiers(plan, block):
    assert set(PLAN_TIERS) <= set(plans.read()[1]), "a plan the suite documents is missing"
    for tier in PLAN_TIERS[plan]:
        sizes = SIZES_FOR[block](tier, {"plan": plan})
        assert isinstance(sizes, CLASSES[block]) and sizes.name == plan
        assert plans.values(sizes) == {k: v for k, v in dataclasses.asdict(sizes).items() if k != "name"}


@pytest.mark.parametrize("tier", plans.TIERS)
def test_the_full_plan_reaches_every_rules_calibrated_n(tier):
    from engine import calibration as C
    from engine import decisions as D

    catalogue = load_catalogue()
    table = D.calibration_table()["rules"]
    assert table, "no calibration table (engine/data/calibration.json): python -m engine.calibration --write"
    for name, rule in C.rules().items():
        entry = table.get(name)
        assert entry is not None, f"{name} is not in engine/data/calibration.json"
        if rule.data == "not simulated":  # an uncalibrated rule: the gate holds its claim INCONCLUSIVE at every n
            continue
        block, key = rule.sizes
        n = getattr(SIZES_FOR[block](tier, {"plan": "full"}), key)
        if n is None:  # a field only some models' tables set (HUB-BREADTH's 4-family look: Gemma's, per_model), a
            assert not rule.gates  # look whose rule gates no record (tests/test_breadth_look.py checks its n)
            continue
        per_family = max(1, n // 11) if block in ("steer", "quant") else n  # steer/quant: over 11 families
        assert entry["min_n"] is not None and per_family >= entry["min_n"], (name, tier, per_family, entry["min_n"])
    atlas = A.sizes_for(tier, {"plan": "full"})
    steer = S.sizes_for(tier, {"plan": "full"})
    assert steer.n_random >= int(catalogue["STEER-RANDOM"].params.get("min_random", 100))
    plan = lora.plan_for(tier, {"plan": "full"})
    assert plan.n_train_seeds >= 3 and plan.n_random >= 10 and plan.n_skip_random >= 10
    assert set(plan.sweep_modules) >= {"o", "q", "k", "v", "gate", "up", "down"}  # LORA-OPROJ: every module
    for smaller in ("default", "smoke"):
        if tier in PLAN_TIERS[smaller]:
            assert A.sizes_for(tier, {"plan": smaller}).rigorous_per_family <= atlas.rigorous_per_family


@pytest.mark.parametrize("plan", ["default", "full"])
def test_no_cpu_plan_pays_for_a_count_its_rule_cannot_decide_from(plan):
    """#29 item 4: a count below the smallest at which its rule can decide at all buys no decision, only a figure
    for the report: such a count is cut to 1 (what the report shows). The smoke plan is exempt (fixed CI sizes).
    A sign-flip test over one prompt per family reaches 2.5% only from 6 families (1/64); the LoRA draws and skips
    count from the catalogue's minimums; LOCKIN's early checkpoint must lie after the warm-up."""
    catalogue = load_catalogue()
    steer = S.sizes_for("cpu", {"plan": plan})
    quant = Q.quant_sizes_for("cpu", {"plan": plan})
    plan_ = lora.plan_for("cpu", {"plan": plan})
    assert steer.n_random >= int(catalogue["STEER-RANDOM"].params["min_random"])
    assert steer.n_random >= int(catalogue["STEER-TRANSFER"].params["min_random"])
    assert quant.n_eval >= 6 and steer.n_test >= quant.n_eval  # QUANT-KL reads the steer plan's test prompts
    atlas_rule, skip_rule = catalogue["LORA-ATLAS"].params, catalogue["SKIP-RECOVER"].params
    first_holm = (1 - D.LEVEL) / 2 / len(plan_.families)  # LORA-ATLAS: one member per LoRA family, Holm

    def floor(draws: int) -> float:  # the exact rank p-value's smallest value (engine.decisions.beats_draws)
        return (1.0 / (draws + 1)) ** plan_.n_train_seeds

    decidable = (plan_.n_train_seeds >= int(atlas_rule["min_seeds"]) and plan_.n_random >= int(atlas_rule["min_draws"])
                 and floor(plan_.n_random) <= first_holm)
    assert decidable or plan_.n_random == 1, (plan, plan_.n_train_seeds, plan_.n_random)
    skip_decidable = plan_.n_skip_random >= int(skip_rule["min_draws"]) and floor(plan_.n_skip_random) <= (1 - D.LEVEL) / 2  # one member
    assert skip_decidable or plan_.n_skip_random == 1, (plan, plan_.n_train_seeds, plan_.n_skip_random)
    early = plan_.train_config().checkpoint_steps()[min(plan_.checkpoints)]
    assert early > plan_.warmup_steps or plan_.lock_per_family == 1, (plan, early, plan_.warmup_steps)
    if plan == "full":
        assert early > plan_.warmup_steps, "the powered plan must be able to decide LOCKIN"


def test_the_module_tables_are_the_default_plan():
    assert A.SIZES == {t: A.sizes_for(t) for t in plans.TIERS}
    assert S.SIZES == {t: S.sizes_for(t) for t in plans.TIERS}
    assert Q.QUANT_SIZES == {t: Q.quant_sizes_for(t) for t in plans.TIERS}
    assert lora.CPU_PLAN == lora.plan_for("cpu") and lora.GPU_PLAN == lora.plan_for("gpu")
    assert A.sizes_for("anything-but-gpu") == A.SIZES["cpu"]  # as before: only "gpu" reads the gpu sizes


THRESHOLDS = ("hub_delta", "hub_delta_rationale")  # rule thresholds the atlas Sizes carry to the hub rules


def test_no_claim_of_the_catalogue_overrides_a_size():
    """Today every [claim.params] key is a rule threshold: each claim runs with its block's default plan. The hub
    rules' ``hub_delta`` (catalogue v3) reaches them through the atlas Sizes, set by [claim.params] and never by a
    plan."""
    catalogue = load_catalogue()
    for claim in catalogue:
        for tier in claim.tiers:
            sizes, default = SIZES_FOR[claim.block](tier, claim.params), SIZES_FOR[claim.block](tier)
            if isinstance(sizes, A.Sizes):
                assert (sizes.hub_delta, sizes.hub_delta_rationale) == tuple(claim.params.get(k) for k in THRESHOLDS)
                sizes = dataclasses.replace(sizes, **{k: getattr(default, k) for k in THRESHOLDS})
            assert sizes == default, claim.id
    assert all(claim.params.get("hub_delta") == 1.0 and claim.params.get("hub_delta_rationale")
               for claim in catalogue if claim.id.startswith("HUB-") and claim.id != "HUB-MIGRATE")
    for plan, tiers in PLAN_TIERS.items():
        for tier in tiers:
            assert all(getattr(A.sizes_for(tier, {"plan": plan}), k) is None for k in THRESHOLDS), (plan, tier)


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
    values = plans.values(A.SIZES["cpu"]) | changes
    return "".join(f"{k} = {list(v) if isinstance(v, tuple) else v}\n" for k, v in values.items() if v is not None)


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
    path = _broken(tmp_path, f"n_select = {S.SIZES['cpu'].n_select}\n", "")
    with pytest.raises(plans.PlanError, match=r"missing key 'plans.default.cpu.steer.n_select'"):
        plans.load("steer", S.SteerSizes, "cpu", path=path)
    path = _broken(tmp_path, f"steps = {lora.CPU_PLAN.steps}\n", 'steps = "twelve"\n')
    with pytest.raises(plans.PlanError, match=r"'plans.default.cpu.lora.steps': expected int"):
        plans.load("lora", lora.LoraPlan, "cpu", path=path)
    path = _broken(tmp_path, f"skip_single_layers = {A.SIZES['cpu'].skip_single_layers}", "tier = \"gpu\"")
    with pytest.raises(plans.PlanError, match=r"unknown key 'plans.default.cpu.atlas.tier'"):
        plans.load("atlas", A.Sizes, "cpu", path=path)
    # a field whose default is None may be left out (TOML has no null): the gpu atlas plan does so
    assert A.sizes_for("gpu").skip_single_layers is None


# ------------------------------------------------------------------------------------------------ inheritance


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_an_inheriting_table_is_its_base_with_its_own_keys_replaced(tmp_path):
    """`inherits = "default"` copies the base plan's table of the same tier and block, then the keys it lists; a
    chain resolves base first; the committed file's inheriting tables are their base with only those keys changed."""
    extra = ('\n[plans.big.cpu.atlas]\ninherits = "default"\nrigorous_per_family = 7\nfamilies = ["copying"]\n'
             '\n[plans.bigger.cpu.atlas]\ninherits = "big"\nbatch_size = 2\n')
    path = _write(tmp_path, PLANS_TOML.read_text(encoding="utf-8") + extra)
    default = plans.load("atlas", A.Sizes, "cpu", path=path)
    big = plans.load("atlas", A.Sizes, "cpu", {"plan": "big"}, path=path)
    bigger = plans.load("atlas", A.Sizes, "cpu", {"plan": "bigger"}, path=path)
    assert big == dataclasses.replace(default, name="big", rigorous_per_family=7, families=("copying",))
    assert bigger == dataclasses.replace(big, name="bigger", batch_size=2)
    assert "inherits" not in plans.read(path)[1]["bigger"]["cpu"]["atlas"]
    assert plans.validate(path)[1]["big"]["cpu"]["atlas"]["rigorous_per_family"] == 7

    import tomllib

    raw = tomllib.loads(PLANS_TOML.read_text(encoding="utf-8"))["plans"]
    inheriting = [(name, tier, block) for name, tiers in raw.items() for tier, blocks in tiers.items()
                  for block, table in blocks.items() if isinstance(table, dict) and "inherits" in table]
    assert {name for name, _, _ in inheriting} == {"smoke", "full", "full-coder"} and len(inheriting) >= 10
    for name, tier, block in inheriting:
        own = {k: v for k, v in raw[name][tier][block].items() if k not in ("inherits", plans.PER_CLAIM)}
        base = raw[name][tier][block]["inherits"]
        resolved = SIZES_FOR[block](tier, {"plan": name})
        expected = dataclasses.replace(SIZES_FOR[block](tier, {"plan": base}), name=name, **{
            k: plans.coerce(v, getattr(resolved, k), k) for k, v in own.items()})
        assert resolved == expected, (name, tier, block)


@pytest.mark.parametrize("extra, named", [
    ('[plans.x.cpu.atlas]\ninherits = "nope"\n', r"'plans.x.cpu.atlas.inherits' = 'nope': no such plan \(plans: "),
    ('[plans.x.cpu.atlas]\ninherits = "smoke"\n[plans.x.cpu.lora]\ninherits = "y"\n'
     '[plans.y.cpu.lora]\ninherits = "x"\n',
     r"'plans.\w.cpu.lora.inherits' = '\w': inheritance cycle \((x -> y -> x|y -> x -> y), each "),
    ('[plans.x.cpu.steer]\ninherits = "x"\n', r"'plans.x.cpu.steer.inherits' = 'x': inheritance cycle \(x -> x"),
    ('[plans.x.gpu.atlas]\ninherits = "smoke"\n',
     r"'plans.x.gpu.atlas.inherits' = 'smoke': plan 'smoke' has no table \[plans.smoke.gpu.atlas\]"),
    ('[plans.x.cpu.atlas]\ninherits = 3\n', r"'plans.x.cpu.atlas.inherits' = 3: expected a plan name"),
    ('[plans.x.cpu.atlas]\ninherits = "default"\nbatch_size = 0\n', r"'plans.x.cpu.atlas.batch_size' = 0: out of range"),
])
def test_a_bad_inherits_is_one_line_naming_the_file_and_key(tmp_path, extra, named):
    path = _write(tmp_path, PLANS_TOML.read_text(encoding="utf-8") + "\n" + extra)
    with pytest.raises(plans.PlanError, match=named) as err:
        plans.read(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ cpu models

ALL_CPU = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b-instruct")


def test_each_plan_names_its_cpu_models_and_a_plan_without_a_list_runs_every_one():
    catalogue = load_catalogue()
    assert catalogue.cpu_models == ALL_CPU
    assert plans.cpu_models("default", ALL_CPU) == plans.cpu_models("smoke", ALL_CPU) == ALL_CPU[:2]
    assert plans.cpu_models("full", ALL_CPU) == ALL_CPU[:2]  # #30: the coder's full sizes run under full-coder
    assert plans.cpu_models("full-coder", ALL_CPU) == ALL_CPU[2:]
    assert plans.cpu_models("smoke", tuple(reversed(ALL_CPU))) == ("gemma3-270m", "smollm2-135m")  # catalogue order
    single, group = catalogue["HUB-SMOL"], catalogue["OWN-ATLAS"]
    assert catalogue.cpu_targets(single, "smoke") == list(ALL_CPU[:2])
    assert catalogue.cpu_targets(single, "full") == list(ALL_CPU[:2])
    assert catalogue.cpu_targets(single, "full-coder") == list(ALL_CPU[2:])
    assert catalogue.cpu_targets(single) == list(ALL_CPU)
    assert catalogue.cpu_targets(group, "default") == catalogue.cpu_targets(group, "full") == ["smollm2-135m+gemma3-270m"]
    assert catalogue.cpu_targets(group, "full-coder") == []  # a group claim needs two of the plan's models


def test_the_smoke_and_default_record_sets_are_the_two_small_models_only():
    from engine import results

    catalogue = load_catalogue()
    for plan in ("smoke", "default"):
        models = {m for _, target, _ in results.declared_records(catalogue, plan) for m in target.split("+")}
        assert models == set(ALL_CPU[:2]), plan
    full = {target for _, target, _ in results.declared_records(catalogue, "full-coder")}
    assert full == {"qwen2.5-coder-0.5b-instruct"}


@pytest.mark.parametrize("table, named", [
    ('[plans.x.cpu]\nmodels = ["smollm2-135m", "smollm2-135m"]\n', r"'plans.x.cpu.models': 'smollm2-135m' is listed twice"),
    ('[plans.x.cpu]\nmodels = []\n', r"'plans.x.cpu.models' = \[\]: expected a non-empty array of model keys"),
    ('[plans.x.cpu]\nmodels = "smollm2-135m"\n', r"'plans.x.cpu.models' = 'smollm2-135m': expected a non-empty array"),
    ('[plans.x.gpu]\nmodels = ["qwen2.5-0.5b"]\n', r"'plans.x.gpu.models': only the cpu tier lists its models"),
])
def test_a_malformed_model_list_is_one_line_naming_the_file_and_key(tmp_path, table, named):
    path = _write(tmp_path, PLANS_TOML.read_text(encoding="utf-8") + "\n" + table)
    with pytest.raises(plans.PlanError, match=named) as err:
        plans.read(path)
    assert str(err.value).startswith(f"{path}: ")


def test_a_model_list_naming_no_cpu_model_of_the_catalogue_is_refused(tmp_path, monkeypatch):
    from engine import verdicts

    path = _write(tmp_path, PLANS_TOML.read_text(encoding="utf-8") + '\n[plans.x.cpu]\nmodels = ["qwen2.5-0.5b"]\n')
    with pytest.raises(plans.PlanError, match=r"'plans.x.cpu.models': 'qwen2.5-0.5b' is not a cpu model of the "
                                              r"catalogue \(cpu_models: smollm2-135m, gemma3-270m, qwen2.5-coder"):
        plans.cpu_models("x", ALL_CPU, path=path)
    with pytest.raises(plans.PlanError, match=r"no plan 'nope'"):
        plans.cpu_models("nope", ALL_CPU, path=path)
    monkeypatch.setenv(plans.PLANS_ENV, str(path))  # the catalogue's check (every load) refuses it too
    with pytest.raises(plans.PlanError, match=r"'plans.x.cpu.models': 'qwen2.5-0.5b' is not a cpu model"):
        verdicts.load_catalogue(Path(verdicts.__file__).parent / "data" / "claims.toml")


def test_a_catalogue_without_a_plans_model_loads_and_the_plan_is_refused_only_when_run():
    """full-coder lists the coder; a claims file of its own with only the two small models still loads (the plan
    is checked against the registry's cpu models there), and running full-coder on it is the one-line PlanError."""
    from engine import verdicts

    text = CATALOGUE.split("[claim.params]")[0]  # the two small models only
    small = verdicts.check_catalogue(parse_catalogue(text, "toy.toml"))
    assert tuple(small.cpu_models) == ALL_CPU[:2]
    assert plans.cpu_models("full", small.cpu_models) == ALL_CPU[:2]
    with pytest.raises(plans.PlanError, match=r"'plans.full-coder.cpu.models': 'qwen2.5-coder-0.5b-instruct' is not "
                                              r"a cpu model of the catalogue \(cpu_models: smollm2-135m, gemma3-270m\)"):
        plans.cpu_models("full-coder", small.cpu_models)


# ------------------------------------------------------------------------------------------------ per-block models

CODER = ALL_CPU[2]
COMPLETE_X = ('\n[plans.x.cpu]\nmodels = ["smollm2-135m", "gemma3-270m"]\n'
              + "".join(f'\n[plans.x.cpu.{block}]\ninherits = "default"\n' for block in ("steer", "quant", "lora")))


def _plan_x(tmp_path: Path, atlas: str = "", tail: str = "") -> Path:
    """A plan ``x`` whose cpu tier runs the two small models, every block as default's; ``atlas``: lines of its
    atlas table after ``inherits = "default"``; ``tail``: more tables."""
    return _write(tmp_path, PLANS_TOML.read_text(encoding="utf-8") + COMPLETE_X
                  + f'\n[plans.x.cpu.atlas]\ninherits = "default"\n{atlas}\n{tail}')


def test_a_block_may_run_its_own_models_and_the_claims_of_that_block_target_them(tmp_path, monkeypatch):
    """[plans.x.cpu.atlas] models = [...] replaces the tier's list for the atlas block only: the atlas claims gain the
    coder (a single-model claim one target more, a multi-model one a member more), the other blocks do not; a row's
    own cpu_models are filtered by the block's list."""
    path = _plan_x(tmp_path, f'models = {list(ALL_CPU)!r}'.replace("'", '"'))
    assert plans.cpu_models("x", ALL_CPU, "atlas", path=path) == ALL_CPU
    assert plans.cpu_models("x", ALL_CPU, "steer", path=path) == ALL_CPU[:2]
    assert plans.cpu_models("x", ALL_CPU, path=path) == ALL_CPU[:2]
    plans.check_models("x", ALL_CPU, path=path)
    monkeypatch.setenv(plans.PLANS_ENV, str(path))
    catalogue = load_catalogue(Path(plans.__file__).parent / "data" / "claims.toml")
    assert catalogue.cpu_targets(catalogue["HUB-SMOL"], "x") == list(ALL_CPU)
    assert catalogue.cpu_targets(catalogue["HUB-CODER"], "x") == [CODER]
    assert catalogue.cpu_targets(catalogue["OWN-ATLAS"], "x") == ["+".join(ALL_CPU)]
    assert catalogue.cpu_targets(catalogue["STEER-ALL"], "x") == list(ALL_CPU[:2])
    assert catalogue.cpu_targets(catalogue["STEER-TRANSFER"], "x") == ["smollm2-135m+gemma3-270m"]
    assert catalogue.cpu_targets(catalogue["LORA-ATLAS"], "x") == list(ALL_CPU[:2])


def test_a_plans_model_lists_are_not_inherited(tmp_path):
    path = _plan_x(tmp_path, f'models = {list(ALL_CPU)!r}'.replace("'", '"'),
                   '[plans.y.cpu.atlas]\ninherits = "x"\n')
    assert plans.cpu_models("y", ALL_CPU, "atlas", path=path) == ALL_CPU  # y lists none: every cpu model
    path = _plan_x(tmp_path, 'models = ["smollm2-135m"]', '[plans.y.cpu]\nmodels = ["gemma3-270m"]\n'
                   '[plans.y.cpu.atlas]\ninherits = "x"\n')
    assert plans.cpu_models("y", ALL_CPU, "atlas", path=path) == ("gemma3-270m",)  # the tier's list, not x's


def test_a_model_may_be_sized_apart_in_the_atlas_block_and_a_claims_override_comes_after(tmp_path):
    """per_model replaces fields of the plan's cpu atlas table for one model (the coder's seed protocol at 2 per
    family); the other models and the gpu tier keep the table; a claim's [claim.params] still overrides last."""
    path = _plan_x(tmp_path, f'models = {list(ALL_CPU)!r}'.replace("'", '"'),
                   f'[plans.x.cpu.atlas.per_model."{CODER}"]\nseed_per_family = 2\nbatch_size = 2\n')
    plans.validate(path)
    plans.check_models("x", ALL_CPU, path=path)
    coder = plans.load("atlas", A.Sizes, "cpu", {"plan": "x"}, path=path, model=CODER)
    small = plans.load("atlas", A.Sizes, "cpu", {"plan": "x"}, path=path, model="smollm2-135m")
    assert (coder.seed_per_family, coder.batch_size) == (2, 2) and coder.name == "x"
    assert small == plans.load("atlas", A.Sizes, "cpu", {"plan": "x"}, path=path) == dataclasses.replace(
        A.SIZES["cpu"], name="x")
    assert plans.load("atlas", A.Sizes, "cpu", {"plan": "x", "seed_per_family": 3}, path=path,
                      model=CODER).seed_per_family == 3
    assert plans.load("atlas", A.Sizes, "cpu", {"plan": "x"}, path=path, model=f"smollm2-135m+{CODER}") == small
    assert plans.model_fields("x", "atlas", CODER, path=path) == {"seed_per_family": 2, "batch_size": 2}


def test_a_claim_may_be_sized_apart_in_the_lora_block_and_the_others_keep_the_table(tmp_path):
    """per_claim replaces fields of the plan's cpu lora table for one claim's measurements (fresh training seeds for a
    question the last run left close); the other claims, other plans and the gpu tier keep their tables; a claim's
    [claim.params] still overrides last; the work model prices that claim's part at its own sizes."""
    from engine import planner

    path = _plan_x(tmp_path, tail='[plans.x.cpu.lora.per_claim."LORA-OPROJ"]\ntrain_seed = 3\nn_train_seeds = 5\n')
    plans.validate(path)
    oproj = plans.load("lora", lora.LoraPlan, "cpu", {"plan": "x"}, path=path, claim="LORA-OPROJ")
    other = plans.load("lora", lora.LoraPlan, "cpu", {"plan": "x"}, path=path, claim="LORA-ATLAS")
    assert oproj.train_seeds == (3, 4, 5, 6, 7) and other.train_seeds == (0,)
    assert other == plans.load("lora", lora.LoraPlan, "cpu", {"plan": "x"}, path=path)
    assert plans.load("lora", lora.LoraPlan, "cpu", {"plan": "default"}, path=path, claim="LORA-OPROJ").train_seeds \
        == (0,)
    assert plans.load("lora", lora.LoraPlan, "gpu", {"plan": "full"}, path=path, claim="LORA-OPROJ").train_seeds \
        == (0, 1, 2)
    assert plans.load("lora", lora.LoraPlan, "cpu", {"plan": "x", "n_train_seeds": 2}, path=path,
                      claim="LORA-OPROJ").train_seeds == (3, 4)
    assert plans.per_claim("x", "lora", path=path) == {"LORA-OPROJ": {"train_seed": 3, "n_train_seeds": 5}}
    table = plans.read(path)[1]["x"]["cpu"]["lora"]
    assert planner.lora_work(table, {}) == planner.block_work("lora", table)
    extra = planner.lora_work(table, plans.per_claim("x", "lora", path=path)) - planner.block_work("lora", table)
    assert extra == 4 * planner.lora_claim_work("LORA-OPROJ", table)  # 5 seeds instead of 1, nothing else


@pytest.mark.parametrize("tail, named", [
    ('[plans.x.cpu.steer.per_claim."STEER-ALL"]\nn_test = 2\n',
     r"'plans.x.cpu.steer.per_claim': only the lora block reads per-claim sizes"),
    ('[plans.x.cpu.lora.per_claim."LORA-OPROJ"]\nsteps = 0\n',
     r"""'plans.x.cpu.lora.per_claim."LORA-OPROJ".steps' = 0: out of range"""),
    ('[plans.x.cpu.lora.per_claim."LORA-OPROJ"]\nname = "y"\n', "not a field that can be set for one claim"),
])
def test_a_malformed_per_claim_table_is_one_line_naming_the_file_and_key(tmp_path, tail, named):
    with pytest.raises(plans.PlanError, match=named):
        plans.validate(_plan_x(tmp_path, tail=tail))


def test_every_claim_a_plan_sizes_apart_is_a_catalogue_claim_of_that_block():
    catalogue = load_catalogue()
    for plan in plans.read()[1]:
        for block in plans.PER_CLAIM_BLOCKS:
            for key in plans.per_claim(plan, block):
                claim, model = plans.split_claim_key(key)
                assert catalogue[claim].block == block, (plan, key)
                assert model is None or model in (catalogue[claim].cpu_models or catalogue.cpu_models), (plan, key)


def test_a_claim_may_be_sized_apart_on_one_model_after_its_own_table(tmp_path):
    """per_claim."CLAIM-ID[model]" (the record's name) replaces fields for that claim on that model only, after the
    claim's own table: the other model keeps the claim's table; the work model prices each model's part at its own
    sizes (the mean over the plan's models)."""
    from engine import planner

    path = _plan_x(tmp_path, tail=('[plans.x.cpu.lora.per_claim."SKIP-RECOVER"]\ntrain_seed = 7\nn_train_seeds = 3\n'
                                   '[plans.x.cpu.lora.per_claim."SKIP-RECOVER[gemma3-270m]"]\ntrain_seed = 12\n'
                                   'n_train_seeds = 5\n'))
    plans.validate(path)
    at = {m: plans.load("lora", lora.LoraPlan, "cpu", {"plan": "x"}, path=path, claim="SKIP-RECOVER", model=m)
          for m in ("smollm2-135m", "gemma3-270m")}
    assert at["smollm2-135m"].train_seeds == (7, 8, 9) and at["gemma3-270m"].train_seeds == (12, 13, 14, 15, 16)
    assert plans.load("lora", lora.LoraPlan, "cpu", {"plan": "x"}, path=path, claim="LORA-ATLAS",
                      model="gemma3-270m").train_seeds == (0,)
    table = plans.read(path)[1]["x"]["cpu"]["lora"]
    apart = plans.per_claim("x", "lora", path=path)
    one = planner.lora_claim_work("SKIP-RECOVER", table)  # one seed's skip trainings
    both = planner.lora_work(table, apart, ["smollm2-135m", "gemma3-270m"]) - planner.block_work("lora", table)
    assert both == pytest.approx(((3 - 1) + (5 - 1)) * one / 2)
    with pytest.raises(plans.PlanError, match="SKIP-RECOVER"):
        plans.validate(_plan_x(tmp_path, tail='[plans.x.cpu.lora.per_claim."SKIP-RECOVER[gemma3-270m]"]\nsteps = 0\n'))
    # an unknown field is named in the table it is written in: the per-model one, or the claim's own
    with pytest.raises(plans.PlanError, match=r'per_claim\."SKIP-RECOVER\[gemma3-270m\]"\.no_such_field'):
        plans.validate(_plan_x(tmp_path, tail='[plans.x.cpu.lora.per_claim."SKIP-RECOVER[gemma3-270m]"]\n'
                                              'no_such_field = 1\n'))
    with pytest.raises(plans.PlanError, match=r'per_claim\."SKIP-RECOVER"\.no_such_field'):
        plans.validate(_plan_x(tmp_path, tail='[plans.x.cpu.lora.per_claim."SKIP-RECOVER"]\nno_such_field = 1\n'))


def test_every_atlas_template_sizes_its_model_with_the_plans_per_model_fields(tmp_path, monkeypatch):
    from engine import templates
    from engine.settings import RunSettings

    path = _plan_x(tmp_path, f'models = {list(ALL_CPU)!r}'.replace("'", '"'),
                   f'[plans.x.cpu.atlas.per_model."{CODER}"]\nseed_per_family = 2\n')
    monkeypatch.setenv(plans.PLANS_ENV, str(path))
    catalogue = load_catalogue(Path(plans.__file__).parent / "data" / "claims.toml")
    for claim in (c for c in catalogue if c.block == "atlas" and "cpu" in c.tiers):
        for target in catalogue.cpu_targets(claim, "x"):
            ctx = templates.ClaimContext(claim, tuple(target.split("+")), "cpu", RunSettings(plan="x"))
            for name, spec in templates.template_of(claim).specs(ctx).items():
                if getattr(spec, "sample", None) == "first" and spec.per_family is None:
                    assert spec.k == (2 if spec.model == CODER else 1), (claim.id, target, name)


@pytest.mark.parametrize("tail, named", [
    ('[plans.x.cpu.steer.per_model."smollm2-135m"]\nn_test = 2\n',
     r"'plans.x.cpu.steer.per_model': only the atlas block reads per-model sizes"),
    ('[plans.x.gpu.atlas]\ninherits = "default"\n[plans.x.gpu.atlas.per_model."smollm2-135m"]\nbatch_size = 2\n',
     r"'plans.x.gpu.atlas.per_model': only the cpu tier sizes a model apart"),
    ('[plans.x.cpu.atlas.per_model."smollm2-135m"]\nbatch_size = 0\n',
     r"""'plans.x.cpu.atlas.per_model."smollm2-135m".batch_size' = 0: out of range"""),
    ('[plans.x.cpu.atlas.per_model]\n"smollm2-135m" = 3\n',
     r"""'plans.x.cpu.atlas.per_model."smollm2-135m"' = 3: expected a table of atlas fields"""),
    ('[plans.x.cpu.atlas.per_model."smollm2-135m"]\ninherits = "default"\n',
     r"""'plans.x.cpu.atlas.per_model."smollm2-135m".inherits': not a field that can be set for one model"""),
    ('[plans.x.gpu.atlas]\ninherits = "default"\nmodels = ["qwen2.5-0.5b"]\n',
     r"'plans.x.gpu.atlas.models': only the cpu tier lists its models"),
    ('[plans.x.cpu.quant.models]\nx = 1\n', r"'plans.x.cpu.quant.models' = \{'x': 1\}: expected a non-empty array"),
])
def test_a_malformed_block_model_list_or_per_model_table_is_one_line_naming_the_file_and_key(tmp_path, tail, named):
    path = _plan_x(tmp_path, tail=tail)
    with pytest.raises(plans.PlanError, match=named) as err:
        plans.read(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("atlas, tail, named", [
    ('models = ["qwen2.5-0.5b"]', "",
     r"'plans.x.cpu.atlas.models': 'qwen2.5-0.5b' is not a cpu model of the catalogue"),
    ("", '[plans.x.cpu.atlas.per_model."qwen2.5-0.5b"]\nbatch_size = 2\n',
     r"'plans.x.cpu.atlas.per_model': 'qwen2.5-0.5b' is not a cpu model of the catalogue"),
    ("", f'[plans.x.cpu.atlas.per_model."{CODER}"]\nbatch_size = 2\n',
     rf"""'plans.x.cpu.atlas.per_model."{CODER}"': the plan does not run '{CODER}' in its atlas block \(it runs """
     r"smollm2-135m, gemma3-270m\): sizes for a model never measured"),
])
def test_a_model_the_catalogue_or_the_block_does_not_run_is_refused_by_the_catalogues_check(
        tmp_path, monkeypatch, atlas, tail, named):
    from engine import verdicts

    path = _plan_x(tmp_path, atlas, tail)
    with pytest.raises(plans.PlanError, match=named):
        plans.check_models("x", ALL_CPU, path=path)
    monkeypatch.setenv(plans.PLANS_ENV, str(path))
    with pytest.raises(plans.PlanError, match=named):
        verdicts.load_catalogue(Path(verdicts.__file__).parent / "data" / "claims.toml")


def test_a_per_model_field_that_is_no_field_of_the_block_is_refused_when_the_file_is_validated(tmp_path):
    path = _plan_x(tmp_path, f'models = {list(ALL_CPU)!r}'.replace("'", '"'),
                   f'[plans.x.cpu.atlas.per_model."{CODER}"]\nseed_per_famly = 2\n')
    with pytest.raises(plans.PlanError, match=rf"""unknown key 'plans.x.cpu.atlas.per_model."{CODER}".seed_per_famly'"""
                                              r" \(fields of Sizes: seed_per_family"):
        plans.validate(path)


def test_every_plan_that_runs_the_coder_runs_its_seed_protocol_at_two_prompts_per_family_or_more():
    """The coder (Qwen2: residual zeroing separates its layers, unlike the bias-free models) gets a seed protocol
    that can form a CI: >= 2 prompts per family in every plan that runs it (full: 5; default and smoke do not run
    it: its atlas block alone took 27 min on one worker at the default sizes, README)."""
    for name in plans.read()[1]:
        if CODER in plans.cpu_models(name, ALL_CPU, "atlas"):
            assert A.sizes_for("cpu", None, name, CODER).seed_per_family >= 2, name
    assert CODER in plans.cpu_models("full-coder", ALL_CPU, "atlas")


def test_the_plan_line_names_the_cpu_models_a_plan_leaves_out_and_the_plans_that_run_them(tmp_path):
    assert plans.left_out("default", ALL_CPU) == f"not in plan default: {CODER} runs under --plan full-coder"
    assert plans.left_out("smoke", ALL_CPU) == f"not in plan smoke: {CODER} runs under --plan full-coder"
    assert plans.left_out("full", ALL_CPU) == f"not in plan full: {CODER} runs under --plan full-coder"
    path = _plan_x(tmp_path, f'models = {list(ALL_CPU)!r}'.replace("'", '"'))
    assert plans.left_out("x", ALL_CPU, path=path) == (f"not in plan x: {CODER} in steer, quant, lora runs under "
                                                       "--plan full-coder")


def test_the_plan_fingerprint_follows_sizes_not_comments(tmp_path):
    """What a timings file records (claims/progress.py: an ETA timed under other sizes says so)."""
    text = (Path(plans.__file__).parent / "data" / "plans.toml").read_text(encoding="utf-8")
    base = plans.fingerprint("full")
    assert base and plans.fingerprint("no-such-plan") == ""

    def variant(edited: str) -> str:
        path = tmp_path / f"plans-{len(list(tmp_path.iterdir()))}.toml"
        path.write_text(edited, encoding="utf-8")
        return plans.fingerprint("full", path=path)

    assert variant(text.replace("# Powered sizes", "# Powered sizes (a comment edited)", 1)) == base
    assert "[plans.full.cpu.quant]\ninherits = \"default\"\nn_eval = 44" in text
    assert variant(text.replace("[plans.full.cpu.quant]\ninherits = \"default\"\nn_eval = 44",
                                "[plans.full.cpu.quant]\ninherits = \"default\"\nn_eval = 33", 1)) != base
    assert variant(text.replace("budget_core_s = { atlas = 5900,", "budget_core_s = { atlas = 4000,", 1)) != base
    assert variant(text.replace("n_train_seeds = 5", "n_train_seeds = 6", 1)) != base  # a per-claim size


def test_lockin_sized_apart_trains_an_all_linear_adapter_of_its_own_and_is_priced_so(tmp_path):
    """LOCKIN shares LORA-LATE's all-linear adapter unless a plan sizes it apart (more steps): then the work model adds
    one all-linear training at LOCKIN's sizes, and LOCKIN's early checkpoint still lies after the warm-up."""
    from engine import planner

    path = _plan_x(tmp_path, tail='[plans.x.cpu.lora.per_claim."LOCKIN"]\nsteps = 100\n')
    plans.validate(path)
    lock = plans.load("lora", lora.LoraPlan, "cpu", {"plan": "x"}, path=path, claim="LOCKIN")
    assert lock.steps == 100 and plans.load("lora", lora.LoraPlan, "cpu", {"plan": "x"}, path=path).steps != 100
    table = plans.read(path)[1]["x"]["cpu"]["lora"]
    extra = planner.lora_work(table, plans.per_claim("x", "lora", path=path)) - planner.block_work("lora", table)
    assert extra == planner.lora_claim_work("LORA-LATE", {**table, "steps": 100}) > 0


def test_the_full_plan_lockin_runs_past_its_warm_up_at_its_own_steps():
    lock = lora.plan_for("cpu", plan="full", claim="LOCKIN")
    early = lock.train_config().checkpoint_steps()[min(lock.checkpoints)]
    assert early > lock.warmup_steps


def test_the_full_cpu_plan_computes_every_precision_a_quant_kl_rule_reads_and_no_reported_only_one():
    """Spend compute where a question is: the rigorous rule reads NF4-bf16 vs bf16 (noise floor vs fp32), the seed
    protocol NF4-fp16 vs the fp32 reference; fp16 and int8 decide nothing on cpu (QUANT-SPEED is UNTESTED there) and
    are among the dearest to run there."""
    full = Q.quant_sizes_for("cpu", {"plan": "full"})
    assert set(full.precisions) == {"fp32", "bf16", "nf4-bf16", "nf4-fp16"}
    assert {"fp16", "int8"} <= set(Q.quant_sizes_for("gpu", {"plan": "full"}).precisions)  # the gpu tier: every one


def test_quant_speed_on_cpu_reports_what_it_has_without_int8(tmp_path):
    """The full cpu plan's study has no int8 row: QUANT-SPEED (UNTESTED on cpu) still reports the ratios it has."""
    rows = {n: {"ok": True, "error": "", "times_s": [t], "cold_s": t, "tokens": 8, "footprint_mb": 1.0}
            for n, t in (("fp32", 1.0), ("bf16", 2.0), ("nf4-bf16", 2.2), ("nf4-fp16", 1.8))}
    study = {"speed": {"model": "smollm2-135m", "device": "cpu", "batch_size": 4, "seq_len": 8, "rounds": 1,
                       "warmup": 1, "reference": "bf16", "rows": rows}, "sizes": "test"}
    seed, rigorous = Q.quant_speed_findings(study, tmp_path)
    assert "int8" not in rigorous.untested and "nf4-bf16 +10%" in rigorous.untested and "fp32 -50%" in seed.untested


def test_only_the_full_cpu_plan_upcasts_half_precision_gemms_and_a_bad_value_names_the_plan():
    assert Q.quant_sizes_for("cpu", {"plan": "full"}).half_matmul == "upcast"
    assert "half-precision matrix products as fp32 GEMMs" in Q.quant_sizes_for("cpu", {"plan": "full"}).describe()
    for tier, plan in (("cpu", "default"), ("cpu", "smoke"), ("gpu", "default"), ("gpu", "full")):
        sizes = Q.quant_sizes_for(tier, {"plan": plan})
        assert sizes.half_matmul == "native" and "fp32 GEMMs" not in sizes.describe()
    with pytest.raises(plans.PlanError, match="plan 'full': quant half_matmul = 'fast'"):
        Q.QuantSizes(half_matmul="fast", name="full")
