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
