"""Claims as data: every catalogue row is run by a registered rule template (or a named procedure), the planner
reads the same specs the run measures, and a bad row fails at collection with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import templates
from engine.settings import RunSettings
from engine.verdicts import load_catalogue, parse_catalogue

CATALOGUE = load_catalogue()
ROOT = Path(__file__).resolve().parents[1]


def test_every_catalogue_row_names_a_template_or_a_procedure_and_the_templates_check_it():
    templates.check(CATALOGUE)
    procedures = {c.id for c in CATALOGUE if c.procedure}
    assert procedures == {"ABL-MEAN", "QUANT-SPEED", "STEER-TRANSFER", "LORA-ATLAS", "LORA-LATE", "LORA-OPROJ",
                          "LOCKIN", "SKIP-RECOVER"}  # the rules that are procedures by nature; the rest are rows
    assert all(c.template for c in CATALOGUE if c.id not in procedures)


def test_the_readme_shows_the_templates_table_as_the_registry_makes_it():
    assert templates.table(CATALOGUE) in (ROOT / "README.md").read_text(encoding="utf-8")


def test_there_is_one_generic_claim_test_and_no_test_function_per_claim():
    tests = sorted(p.name for p in (ROOT / "claims").glob("test_*.py"))
    assert tests == ["test_claims.py"]


@pytest.mark.parametrize("claim_id", [c.id for c in CATALOGUE if c.template])
def test_a_rows_specs_are_what_the_planner_sees(claim_id):
    """The planner's needs are the specs' own descriptions (no second description)."""
    claim = CATALOGUE[claim_id]
    ctx = templates.ClaimContext(claim, tuple(CATALOGUE.cpu_targets(claim)[0].split("+")), "cpu",
                                 RunSettings(plan="smoke"))
    template = templates.template_of(claim)
    specs = template.specs(ctx)
    assert templates.declared(ctx).needs == tuple(s.need for s in specs.values())
    if not claim.args.get("untested"):
        assert specs, f"{claim_id} measures nothing on the cpu tier"


BAD_ROWS = {
    "unknown template": ('template = "argmax_iz"', "template: unknown template 'argmax_iz'"),
    "unknown parameter": ('template = "argmax_is"\nlayr = 2', "layr: not a parameter of template 'argmax_is'"),
    "mistyped parameter": ('template = "argmax_is"\nlayer = 2.5', "layer = 2.5: expected int or str"),
    "missing parameter": ('template = "argmax_differs"', "between: missing"),
    "bad procedure": ('procedure = "engine.studies.nothing:run"', "cannot import it"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_row_is_one_line_naming_the_file_the_claim_and_the_field(case):
    fields, message = BAD_ROWS[case]
    text = f'''[catalogue]
cpu_models = ["smollm2-135m"]

[[claim]]
id = "MY-HUB"
block = "atlas"
statement = "s"
rule = "r"
tiers = ["cpu"]
models = ["smollm2-135m"]
tolerance = {{ abs = 0 }}
{fields}
'''
    with pytest.raises(templates.TemplateError) as info:
        templates.check(parse_catalogue(text, "my-claims.toml"))
    text = str(info.value)
    assert "\n" not in text and text.startswith("my-claims.toml: claim MY-HUB") and message in text, text


# ------------------------------------------------------------------------------------------------ stand-ins

CODER = "qwen2.5-coder-0.5b-instruct"
STAND_IN_ROW = '''[catalogue]
cpu_models = ["smollm2-135m", "qwen2.5-coder-0.5b-instruct"]

[[claim]]
id = "MY-CODER"
block = "atlas"
statement = "s"
rule = "r"
tiers = ["gpu", "cpu"]
models = ["qwen2.5-coder-0.5b+qwen2.5-0.5b"]
tolerance = { abs = 0 }
template = "argmax_differs"
between = "models"
cpu_models = CPU_MODELS
[claim.stand_in."KEY"]
FIELDS
'''
GOOD = {"of": '"qwen2.5-coder-0.5b"', "layer": "22", "versus": "2", "withheld": '"other weights"'}


def _stand_in_row(key=CODER, cpu_models=f'["{CODER}"]', **changes) -> str:
    fields = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    return (STAND_IN_ROW.replace("KEY", key).replace("CPU_MODELS", cpu_models)
            .replace("FIELDS", "".join(f"{k} = {v}\n" for k, v in fields.items())))


def test_the_catalogues_stand_in_is_the_registrys_and_a_good_row_passes():
    from engine import models

    row = CATALOGUE["HUB-CODER"].args["stand_in"]
    assert list(row) == [CODER] and row[CODER]["of"] == models.REGISTRY[CODER].stand_in_for
    seed = CATALOGUE["HUB-CODER"].seed["qwen2.5-coder-0.5b+qwen2.5-0.5b"]
    assert (row[CODER]["layer"], row[CODER]["versus"]) == (seed["hub_layer"], seed["base_hub_layer"])
    assert "untested" not in CATALOGUE["HUB-CODER"].args  # the cpu tier is the stand-in's record now
    templates.check(parse_catalogue(_stand_in_row(), "my-claims.toml"))


@pytest.mark.parametrize("changes, message", [
    ({"layer": "24"}, "stand_in.qwen2.5-coder-0.5b-instruct.layer = 24: beyond the model (qwen2.5-coder-0.5b-instruct: "
                      "layers 0-23)"),
    ({"layer": '"22"'}, "stand_in.qwen2.5-coder-0.5b-instruct.layer = '22': expected int"),
    ({"withheld": None}, "stand_in.qwen2.5-coder-0.5b-instruct.withheld: missing (why the seed's figure is not"),
    ({"colour": '"red"'}, "stand_in.qwen2.5-coder-0.5b-instruct.colour: unknown field"),
    ({"of": '"qwen2.5-0.5b"'}, "not a registry stand-in for 'qwen2.5-0.5b' (its stand_in_for is 'qwen2.5-coder-0.5b'"),
    ({"key": "smollm2-135m", "cpu_models": '["smollm2-135m"]'},
     "stand_in.smollm2-135m: not a registry stand-in for 'qwen2.5-coder-0.5b' (its stand_in_for is None"),
    ({"cpu_models": '["smollm2-135m"]'}, "not one of the row's cpu_models (smollm2-135m): a stand-in is measured as a "
                                         "target of its own"),
])
def test_a_bad_stand_in_is_one_line_naming_the_file_the_claim_and_the_field(changes, message):
    changes = dict(changes)
    key, cpu_models = changes.pop("key", CODER), changes.pop("cpu_models", f'["{CODER}"]')
    with pytest.raises(templates.TemplateError) as info:
        templates.check(parse_catalogue(_stand_in_row(key, cpu_models, **changes), "my-claims.toml"))
    text = str(info.value)
    assert "\n" not in text and text.startswith("my-claims.toml: claim MY-CODER: stand_in.") and message in text, text


def test_every_multi_model_row_with_a_cpu_tier_names_its_cpu_models():
    """A third cpu model changed the default "all cpu models as one group": each multi-model row says which."""
    multi = {c.id for c in CATALOGUE if "cpu" in c.tiers and any("+" in m for m in c.models)}
    assert multi == {"HUB-CODER", "HUB-MIGRATE", "OWN-ATLAS", "STEER-TRANSFER"}
    assert all(CATALOGUE[c].cpu_models for c in multi)
    assert CATALOGUE["STEER-TRANSFER"].cpu_models == ("smollm2-135m+gemma3-270m",)  # source -> target


@pytest.mark.parametrize("line, message", [
    ('cpu_models = "smollm2-135m"', "field 'cpu_models' must be a list of distinct registry keys"),
    ('cpu_models = ["smollm2-135m", "smollm2-135m"]', "field 'cpu_models' must be a list of distinct"),
    ('cpu_models = ["qwen2.5-0.5b"]', "cpu_models 'qwen2.5-0.5b': 'qwen2.5-0.5b' is not a cpu model of the catalogue"),
])
def test_a_bad_cpu_models_field_is_one_line(line, message):
    from engine import verdicts

    text = f'''[catalogue]
cpu_models = ["smollm2-135m", "gemma3-270m"]

[[claim]]
id = "MY-PAIR"
block = "atlas"
statement = "s"
rule = "r"
tiers = ["cpu"]
models = ["qwen2.5-0.5b+qwen2.5-1.5b"]
tolerance = {{ abs = 0 }}
{line}
'''
    with pytest.raises(verdicts.ClaimError) as info:
        verdicts.check_catalogue(verdicts.parse_catalogue(text, "c.toml"))
    assert "\n" not in str(info.value) and message in str(info.value), str(info.value)


def test_a_rows_cpu_groups_keep_the_members_the_plan_runs_and_a_lone_member_is_no_target(tmp_path, monkeypatch):
    from engine import plans, verdicts

    text = '''[catalogue]
cpu_models = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"]

[[claim]]
id = "MY-GROUPS"
block = "atlas"
statement = "s"
rule = "r"
tiers = ["cpu"]
models = ["qwen2.5-0.5b+qwen2.5-1.5b"]
tolerance = { abs = 0 }
cpu_models = ["gemma3-270m+smollm2-135m", "smollm2-135m+gemma3-270m+qwen2.5-coder-0.5b-instruct",
              "qwen2.5-coder-0.5b-instruct"]
'''
    catalogue = verdicts.check_catalogue(verdicts.parse_catalogue(text, "c.toml"))
    claim = catalogue["MY-GROUPS"]
    assert catalogue.cpu_targets(claim, "default") == ["gemma3-270m+smollm2-135m", "smollm2-135m+gemma3-270m"]
    assert catalogue.cpu_targets(claim, "full") == ["gemma3-270m+smollm2-135m", "smollm2-135m+gemma3-270m"]
    extra = ('\n[plans.one.cpu]\nmodels = ["smollm2-135m"]\n'
             '\n[plans.all3.cpu]\nmodels = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"]\n')
    path = tmp_path / "plans.toml"
    path.write_text(Path(plans.__file__).with_name("data").joinpath("plans.toml").read_text() + extra)
    monkeypatch.setenv(plans.PLANS_ENV, str(path))
    assert catalogue.cpu_targets(claim, "one") == []  # a pair needs both sides
    assert catalogue.cpu_targets(claim, "all3") == list(claim.cpu_models)  # the row's order (gemma3 -> smollm2)
