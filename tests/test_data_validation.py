"""Data files are validated on load (issue #25, item 4): the whole plans file (every plan, tier and block) and every
claim's [claim.params] of the catalogue, every value by type, range and finiteness. Each fault is one line naming
the file, the table and the key; the pytest plugin turns it into a usage error (exit 2, no traceback) before
anything runs. A plan whose estimated core time exceeds the limit asks for --yes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import engine.templates  # noqa: F401 (every block registers its sizes with engine.plans)
from engine import planner, plans
from engine.verdicts import CatalogueError, ClaimError, load_catalogue

ROOT = Path(__file__).resolve().parents[1]
PLANS_TOML = ROOT / "engine" / "data" / "plans.toml"
CLAIMS_TOML = ROOT / "engine" / "data" / "claims.toml"


def _variant(source: Path, tmp_path: Path, old: str, new: str, after: str = "") -> Path:
    """A copy of ``source`` with the first ``old`` after ``after`` replaced by ``new`` (one fault)."""
    text = source.read_text(encoding="utf-8")
    start = text.index(after) if after else 0
    at = text.index(old, start)
    path = tmp_path / source.name
    path.write_text(text[:at] + new + text[at + len(old):], encoding="utf-8")
    return path


def _one_line(exc: BaseException, *parts: str) -> str:
    message = str(exc)
    assert "\n" not in message and len(message) < 600, message
    for part in parts:
        assert part in message, (part, message)
    return message


# ------------------------------------------------------------------------------------------------ the files as committed


def test_the_committed_data_files_pass():
    where, table = plans.validate()
    assert where == plans.PLANS_FILE and {"default", "smoke", "full"} <= set(table)
    assert len(load_catalogue(CLAIMS_TOML)) == len(load_catalogue())
    planner.check_session(None)
    planner.check_session("smoke")


# ------------------------------------------------------------------------------------------------ plans.toml


# (old, new, after, the table and key the message names); every block and every plan, not only the default one
PLAN_FAULTS = {
    "negative stride": ("layer_stride = 3", "layer_stride = -3", "[plans.smoke.cpu.atlas]",
                        "'plans.smoke.cpu.atlas.layer_stride' = -3"),
    "zero stride": ("layer_stride = 1", "layer_stride = 0", "[plans.full.cpu.atlas]",
                    "'plans.full.cpu.atlas.layer_stride' = 0"),
    "absurd steps": ("steps = 6", "steps = 100000000", "[plans.default.cpu.lora]",
                     "'plans.default.cpu.lora.steps' = 100000000"),
    "zero size": ("n_test = 3", "n_test = 0", "[plans.smoke.cpu.steer]", "'plans.smoke.cpu.steer.n_test' = 0"),
    "resamples below the floor": ("n_resamples = 500", "n_resamples = 5", "[plans.smoke.cpu.atlas]",
                                  "'plans.smoke.cpu.atlas.n_resamples' = 5"),
    "NaN": ("percentile = 95.0", "percentile = nan", "[plans.default.gpu.steer]",
            "'plans.default.gpu.steer.percentile' = nan: not a finite number"),
    "NaN in an inheriting table": ("steps = 15", "steps = nan", "[plans.full.cpu.lora]",
                                   "'plans.full.cpu.lora.steps' = nan: not a finite number"),
    "inf in an array": ("lock_per_family = 1\n", "lock_per_family = 1\ncheckpoints = [0.1, inf]\n",
                        "\n[plans.smoke.cpu.lora]", "'plans.smoke.cpu.lora.checkpoints[1]' = inf"),
    "fraction above 1": ("n_eval = 20\n", "n_eval = 20\nskip_fraction = 1.5\n", "[plans.full.gpu.lora]",
                         "'plans.full.gpu.lora.skip_fraction' = 1.5"),
    "empty array": ('precisions = ["fp32", "bf16", "nf4-bf16", "int8"]', "precisions = []",
                    "[plans.smoke.cpu.quant]", "'plans.smoke.cpu.quant.precisions': an empty array"),
    "wrong type": ("n_eval = 2", 'n_eval = "two"', "[plans.smoke.cpu.quant]",
                   "'plans.smoke.cpu.quant.n_eval': expected int"),
    "missing key": ("n_resamples = 500\n", "", "[plans.smoke.cpu.atlas]",
                    "missing key 'plans.smoke.cpu.atlas.n_resamples'"),
    "unknown key": ("lock_per_family = 1\n", "lock_per_family = 1\nstepz = 3\n", "\n[plans.smoke.cpu.lora]",
                    "unknown key 'plans.smoke.cpu.lora.stepz'"),
    "syntax error": ("n_eval = 2", "n_eval = = 2", "[plans.smoke.cpu.quant]", "not valid TOML"),
}


@pytest.mark.parametrize("fault", list(PLAN_FAULTS))
def test_a_bad_plans_file_is_one_line_naming_file_table_and_key(tmp_path, fault):
    old, new, after, named = PLAN_FAULTS[fault]
    path = _variant(PLANS_TOML, tmp_path, old, new, after)
    with pytest.raises(plans.PlanError) as err:
        plans.validate(path)
    _one_line(err.value, str(path), named)
    assert isinstance(err.value, ValueError)


def test_a_range_fault_anywhere_stops_every_loader_not_only_the_whole_file_check(tmp_path):
    """A block that reads only its own table still refuses the file: `layer_stride = -3` in the smoke plan stops a
    load of the default plan's steer sizes (read() checks every value of every table)."""
    from engine.studies import steer as S

    path = _variant(PLANS_TOML, tmp_path, "layer_stride = 3", "layer_stride = -3", "[plans.smoke.cpu.atlas]")
    with pytest.raises(plans.PlanError, match=r"plans.smoke.cpu.atlas.layer_stride' = -3: out of range, expected a "
                                              r"number in \[1, 1000\]"):
        plans.load("steer", S.SteerSizes, "cpu", path=path)


def test_a_size_override_of_a_claim_is_range_checked_too():
    from engine.studies import atlas as A

    with pytest.raises(plans.PlanError, match=r"\[claim.params\] layer_stride = -3: out of range"):
        A.sizes_for("cpu", {"layer_stride": -3})
    with pytest.raises(plans.PlanError, match=r"\[claim.params\] n_resamples = nan: not a finite number"):
        A.sizes_for("cpu", {"cpu": {"n_resamples": float("nan")}})


def test_the_plans_file_can_be_replaced_by_the_environment(tmp_path, monkeypatch):
    path = _variant(PLANS_TOML, tmp_path, "layer_stride = 3", "layer_stride = -3", "[plans.smoke.cpu.atlas]")
    monkeypatch.setenv(plans.PLANS_ENV, str(path))
    with pytest.raises(plans.PlanError, match="layer_stride' = -3") as err:
        plans.read()
    assert str(path) in str(err.value)
    monkeypatch.delenv(plans.PLANS_ENV)
    assert plans.read()[0] == plans.PLANS_FILE


# ------------------------------------------------------------------------------------------------ cost


def test_a_plan_estimated_above_the_limit_asks_for_yes(tmp_path):
    assert planner.estimate("default") is not None and planner.estimate("default") < planner.COST_LIMIT_S
    assert planner.estimate("smoke") < planner.estimate("default") < planner.estimate("full")
    with pytest.raises(plans.PlanError) as err:
        planner.check_session("full")
    _one_line(err.value, "--plan full: estimated", "h of core time", "pass --yes")
    planner.check_session("full", yes=True)
    # a size within its range bound but far above the measured plan: priced by the estimate, not the stale timings
    path = _variant(PLANS_TOML, tmp_path, "steps = 6", "steps = 60000", "[plans.default.cpu.lora]")
    assert planner.estimate("default", path=path) > 1000 * planner.estimate("default")
    # without measured timings there is no estimate (and nothing to refuse)
    assert planner.estimate("full", timings=tmp_path / "none.json") is None
    planner.check_session("full", timings=tmp_path / "none.json")


# ------------------------------------------------------------------------------------------------ claims.toml


CLAIM_FAULTS = {
    "NaN threshold": ("delta = 0.05", "delta = nan", 'id = "POS-ANSWER"',
                      "claim POS-ANSWER: [claim.params] delta = nan: not a finite number"),
    "inf threshold": ("keep_threshold = 0.2", "keep_threshold = inf", 'id = "SKIP-ALL"',
                      "claim SKIP-ALL: [claim.params] keep_threshold = inf"),
    "negative delta": ("delta = 0.1", "delta = -0.1", 'id = "STEER-ALL"',
                       "claim STEER-ALL: [claim.params] delta = -0.1: out of range"),
    "threshold out of range": ("rank_rho_threshold = 0.8", "rank_rho_threshold = 1.8", 'id = "ABL-MEAN"',
                               "claim ABL-MEAN: [claim.params] rank_rho_threshold = 1.8"),
    "wrong type": ("min_random = 100", 'min_random = "100"', 'id = "STEER-RANDOM"',
                   "claim STEER-RANDOM: [claim.params] min_random = '100': expected an integer"),
    "float minimum n": ("min_draws = 10", "min_draws = 10.5", 'id = "SKIP-RECOVER"',
                        "claim SKIP-RECOVER: [claim.params] min_draws = 10.5: expected an integer"),
    "unknown key": ("delta = 0.05", "detla = 0.05", 'id = "POS-ANSWER"',
                    "claim POS-ANSWER: [claim.params] detla: unknown key"),
    "empty rationale": ('delta_rationale = "', 'delta_rationale = "" # ', 'id = "STEER-ALL"',
                        "claim STEER-ALL: [claim.params] delta_rationale = '': expected a non-empty string"),
    "bad size override": ("[claim.params]", "[claim.params]\nlayer_stride = -3", 'id = "POS-ANSWER"',
                          "claim POS-ANSWER: [claim.params] layer_stride = -3: out of range"),
    "unknown plan": ("[claim.params]", '[claim.params]\nplan = "nowhere"', 'id = "POS-ANSWER"',
                     "claim POS-ANSWER: [claim.params] plan = 'nowhere': not a plan"),
    "infinite tolerance": ("tolerance = { abs = 0 }", "tolerance = { abs = inf }", 'id = "HUB-Q05"',
                           "claim HUB-Q05: tolerance = {'abs': inf, 'rel': 0.0}: not finite"),
}


@pytest.mark.parametrize("fault", list(CLAIM_FAULTS))
def test_a_bad_rule_parameter_is_one_line_naming_file_claim_and_key(tmp_path, fault):
    old, new, after, named = CLAIM_FAULTS[fault]
    path = _variant(CLAIMS_TOML, tmp_path, old, new, after)
    with pytest.raises(CatalogueError) as err:
        load_catalogue(path)
    _one_line(err.value, str(path), named)
    assert isinstance(err.value, ClaimError)  # the plugin and the CLI already turn a ClaimError into one line


# ------------------------------------------------------------------------------------------------ the plugin


def _pytest(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "claims", "-p", "no:cacheprovider", "-q", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _usage_error(result: subprocess.CompletedProcess, *parts: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, out[-2000:]  # pytest's usage error (the CLI: 2)
    assert "Traceback" not in out and "INTERNALERROR" not in out, out[-2000:]
    errors = [line for line in out.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, out[-2000:]
    for part in parts:
        assert part in errors[0], (part, errors[0])


def test_the_plugin_refuses_a_bad_data_file_before_anything_runs(tmp_path):
    bad_plans = _variant(PLANS_TOML, tmp_path, "layer_stride = 3", "layer_stride = -3", "[plans.smoke.cpu.atlas]")
    _usage_error(_pytest("--plan", "smoke", "--collect-only", env={plans.PLANS_ENV: str(bad_plans)}),
                 str(bad_plans), "'plans.smoke.cpu.atlas.layer_stride' = -3")
    bad_claims = _variant(CLAIMS_TOML, tmp_path, "delta = 0.05", "delta = nan", 'id = "POS-ANSWER"')
    # -m selects nothing: were the file accepted, nothing would run either
    _usage_error(_pytest("--plan", "smoke", "-m", "no_such_marker", f"--claims-catalogue={bad_claims}"),
                 str(bad_claims), "claim POS-ANSWER: [claim.params] delta = nan")
    _usage_error(_pytest("--plan", "full", "-m", "no_such_marker"), "--plan full: estimated", "pass --yes")
