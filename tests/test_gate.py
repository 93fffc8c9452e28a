"""The CI regression gate (issue #19): gated vs reported-only figures, baselines per plan pinned from several runs
(spread -> tolerance) with a required reason, the gate's table, the record count check and the CI guard.

Toy catalogue and constructed measurements only: no model is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from toy_catalogue import HEADER
from typer.testing import CliRunner

from engine import decisions, results
from engine.verdicts import Recorder, Target, Verdict, parse_catalogue

pytest_plugins = ["pytester"]

CATALOGUE = HEADER + """
[[claim]]
id = "G-EV"
block = "atlas"
statement = "A beats B."
rule = "A - B > 0 (greater, delta 0.05)"
tiers = ["cpu"]
models = []
key = ""
tolerance = { abs = 0 }
"""

# A claim test decided by evidence; the environment plays the engine: OFFSET moves the statistic, NOISE is the
# run-to-run jitter of a real machine, SECONDS a timing figure (never gated). Both protocols on both models (every
# record the catalogue declares: the gate expects each), gemma3-270m's in two tests of one protocol each.
GATED = '''
import os

import numpy as np
import pytest

from engine import decisions


def measure(claim, protocol):
    i = np.arange(20)
    values = float(os.environ.get("OFFSET", "0.5")) + 0.1 * (i % 5) + float(os.environ.get("NOISE", "0")) * np.sin(i)
    evidence = decisions.greater(values, [f"fam{k % 2}" for k in i], delta=0.05, label="A - B", n_resamples=200,
                                 rationale="toy")
    claim.record(protocol, {"train_seconds": float(os.environ.get("SECONDS", "1")), "peak_rss_mb": 100.0,
                            "mean_gap": float(values.mean())}, holds=evidence, plan="smoke")


@pytest.mark.claim("G-EV", model="smollm2-135m")
def test_both(claim):
    measure(claim, "seed")
    measure(claim, "rigorous")


@pytest.mark.claim("G-EV", model="gemma3-270m", protocols=("seed",))
def test_seed_only(claim):
    measure(claim, "seed")


@pytest.mark.claim("G-EV", model="gemma3-270m", protocols=("rigorous",))
def test_rigorous_only(claim):
    measure(claim, "rigorous")
'''

QUIET = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider", "-p", "no:xdist")


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")


# ------------------------------------------------------------------------------------------------ figures


def recorder(model: str = "smollm2-135m") -> Recorder:
    claim = parse_catalogue(CATALOGUE)["G-EV"]
    return Recorder(Target(claim=claim, model=model, tier="cpu"), git_commit="abc123", test="t::x")


def evidence_record(offset: float = 0.5, noise: float = 0.0, seconds: float = 1.0, protocol: str = "seed"):
    i = np.arange(20)
    values = offset + 0.1 * (i % 5) + noise * np.sin(i)
    evidence = decisions.greater(values, [f"fam{k % 2}" for k in i], delta=0.05, label="A - B", n_resamples=200)
    return recorder().record(protocol, {"train_seconds": seconds, "peak_rss_mb": 512.0, "gap": float(values.mean())},
                             holds=evidence, plan="smoke")


def run_of(*records, name: str = "r1", commit: str = "abc123", plan: str = "smoke") -> results.Run:
    return results.Run(name, {"git_commit": commit, "plan": plan, "machine": "m", "cpu_count": 2}, list(records))


def test_gated_figures_are_verdict_outcome_estimate_and_ci_bounds_timings_are_reported_only():
    record = evidence_record()
    gated, reported, deltas = results.split_figures(record)
    assert set(gated) == {"verdict", "evidence[A - B].outcome", "evidence[A - B].estimate",
                          "evidence[A - B].ci_low", "evidence[A - B].ci_high"}
    assert gated["verdict"] == "CONFIRMED" and gated["evidence[A - B].ci_low"] == record.evidence[0]["ci"][0]
    assert set(reported) == {"figures.train_seconds", "figures.peak_rss_mb", "figures.gap"}  # no decision uses them
    assert deltas == {"evidence[A - B].estimate": 0.05, "evidence[A - B].ci_low": 0.05,
                      "evidence[A - B].ci_high": 0.05}
    # A legacy bool record gates its figures, minus timings and memory (matched per name token).
    legacy = recorder().record("seed", {"hub": 3, "effects": {"mean": [1.0, 2.0]}, "train_seconds": 127.8,
                                        "peak_rss_mb": 3745.0, "tokens_per_s": 9.0, "throughput": 1.0,
                                        "speed_ratio_s": 2.0}, holds=True)
    gated, reported, _ = results.split_figures(legacy)
    assert set(gated) == {"verdict", "figures.hub", "figures.effects.mean"}
    assert set(reported) == {"figures.train_seconds", "figures.peak_rss_mb", "figures.tokens_per_s",
                             "figures.throughput", "figures.speed_ratio_s"}
    assert not any(map(results.reported_only, ("hub", "effects", "layers", "seeds", "kl_ratio", "hub_std")))


def test_spread_across_runs_gives_the_tolerance_and_a_figure_swamping_delta_is_flagged():
    exact = results.pinned_figure([0.3, 0.3, 0.3], delta=0.05)
    assert exact["value"] == 0.3 and exact["tolerance"] == 0.0 and "flag" not in exact
    assert results.describe_tolerance(exact).startswith("bit-for-bit here")
    # reproduced exactly here: another CPU may move the last bits (relative floor), a real move fails
    assert results.figure_within(exact, 0.3) and results.figure_within(exact, 0.3 * (1 + 0.5 * results.FLOAT_REL))
    assert not results.figure_within(exact, 0.3 * (1 + 2 * results.FLOAT_REL))
    spread = results.pinned_figure([0.30, 0.31, 0.32], delta=0.05)
    assert spread["value"] == pytest.approx(0.31) and spread["tolerance"] == pytest.approx(0.02)
    assert results.figure_within(spread, 0.329) and not results.figure_within(spread, 0.335)
    assert "flag" not in spread
    swamped = results.pinned_figure([0.1, 0.2], delta=0.05)
    assert "spread swamps the claim's delta" in swamped["flag"]
    # a threshold part (delta 0): a spread far from the threshold is no flag, one reaching it is
    assert "flag" not in results.pinned_figure([-0.66, -0.66 + 3e-8], delta=0.0)
    assert "spread reaches the threshold" in results.pinned_figure([-0.01, 0.01], delta=0.0)["flag"]
    assert "flag" not in results.pinned_figure([[-0.5, -0.3], [-0.5, -0.3001]], delta=-0.1)
    assert "spread reaches" in results.pinned_figure([-0.1001, -0.0999], delta=-0.1)["flag"]  # at the boundary
    listed = results.pinned_figure([[1.0, 2.0], [1.0, 2.5]])
    assert listed["value"] == [1.0, 2.25] and listed["tolerance"] == 0.5
    words = results.pinned_figure(["CONFIRMED", "FAILED", "CONFIRMED"])
    assert words["allowed"] == ["CONFIRMED", "FAILED"] and "varies across the pinned runs" in words["flag"]
    assert results.figure_within(words, "FAILED") and not results.figure_within(words, "REVISED")


def test_pin_from_several_runs_then_gate_passes_within_spread_and_names_what_moved(tmp_path):
    runs = [run_of(evidence_record(noise=n, seconds=s), name=f"r{k}") for k, (n, s) in
            enumerate([(0.0, 10.0), (1e-3, 30.0), (2e-3, 20.0)])]
    written = results.pin_plan_baselines(tmp_path, "smoke", runs, "first pin of the smoke plan")
    assert written == [tmp_path / "smoke" / "smollm2-135m.json"]
    data = json.loads(written[0].read_text())
    assert data["reason"] == "first pin of the smoke plan" and data["commit"] == "abc123" and data["format"] == 2
    assert [r["run"] for r in data["runs"]] == ["r0", "r1", "r2"]
    figures = data["entries"]["G-EV/seed"]["figures"]
    assert figures["verdict"]["tolerance"] == 0.0 and figures["evidence[A - B].estimate"]["tolerance"] > 0
    assert len(figures["evidence[A - B].estimate"]["runs"]) == 3
    pinned = results.load_plan_baselines(tmp_path, "smoke")

    same = results.gate(pinned, [evidence_record(noise=1e-3, seconds=999.0)], plan="smoke")  # timing moved: fine
    assert same.passed and same.compared == same.expected == 1 and same.gated == 5 and same.reported_only == 3
    assert "1 of 1 pinned record(s) compared, 5 gated figure(s), 3 reported-only" in same.summary()

    moved = results.gate(pinned, [evidence_record(offset=0.8)], plan="smoke")
    assert not moved.passed
    names = {c.figure for c in moved.changes}
    assert names == {"evidence[A - B].estimate", "evidence[A - B].ci_low", "evidence[A - B].ci_high"}
    header, rows = moved.table()
    assert header == ["claim", "model", "protocol", "figure", "baseline", "new", "tolerance", "verdict before",
                      "verdict after", "pinned at"]
    row = next(r for r in rows if r[3] == "evidence[A - B].estimate")
    assert row[:3] == ["G-EV", "smollm2-135m", "seed"] and row[6].endswith("(other CPUs)")
    assert row[7:] == ["CONFIRMED", "CONFIRMED", "abc123"]
    text = "\n".join(moved.lines())
    assert "evidence[A - B].estimate" in text and "pinned at" in text

    flipped = results.gate(pinned, [evidence_record(offset=-0.5)], plan="smoke")
    flip = next(c for c in flipped.changes if c.kind == "flip")
    assert (flip.before, flip.after, flip.verdict_before, flip.verdict_after) == ("CONFIRMED", "FAILED",
                                                                                 "CONFIRMED", "FAILED")
    assert any(r[3] == "verdict" for r in flipped.table()[1])


def test_fewer_records_than_the_plan_expects_fail_the_gate(tmp_path):
    pinned_runs = [run_of(evidence_record(), evidence_record(protocol="rigorous"))]
    results.pin_plan_baselines(tmp_path, "smoke", pinned_runs, "two records")
    pinned = results.load_plan_baselines(tmp_path, "smoke")
    partial = results.gate(pinned, [evidence_record()], plan="smoke")
    assert not partial.passed and partial.missing == [("G-EV", "smollm2-135m", "rigorous")]
    assert "FAIL: fewer records compared (1) than the plan's baselines expect (2)" in partial.lines()
    assert ["G-EV", "smollm2-135m", "rigorous", "(record)", "pinned", "not measured"] == partial.table()[1][0][:6]
    nothing = results.gate(pinned, [], plan="smoke")
    assert not nothing.passed and nothing.compared == 0


def test_pin_refuses_bad_input_in_one_line(tmp_path):
    good = run_of(evidence_record())
    cases = [
        ([good], "  ", "needs a reason"),
        ([], "why", "no run to pin from"),
        ([good, run_of(evidence_record(), name="r2", commit="def456")], "why", "runs of different commits"),
        ([run_of(evidence_record(), plan="default")], "why", "measured plan 'default', not 'smoke'"),
        ([good, run_of(evidence_record(), evidence_record(protocol="rigorous"), name="r2")], "why",
         "measured different records"),
        ([run_of(evidence_record(), evidence_record())], "why", "holds two records"),
    ]
    for runs, reason, message in cases:
        with pytest.raises(results.BaselineError, match=message):
            results.pin_plan_baselines(tmp_path, "smoke", runs, reason)
    (tmp_path / "smoke").mkdir(exist_ok=True)
    (tmp_path / "smoke" / "x.json").write_text('{"format": 1}')
    with pytest.raises(results.BaselineError, match="not a format-2 baseline file"):
        results.load_plan_baselines(tmp_path, "smoke")


def test_a_re_pin_replaces_the_plan_directory(tmp_path):
    both = run_of(evidence_record(), recorder("gemma3-270m").record("seed", {"x": 1.0}, holds=True, plan="smoke"))
    assert len(results.pin_plan_baselines(tmp_path, "smoke", [both], "two models")) == 2
    results.pin_plan_baselines(tmp_path, "smoke", [run_of(evidence_record())], "one model now")
    assert [p.name for p in results.baseline_files(tmp_path, "smoke")] == ["smollm2-135m.json"]
    assert results.baseline_files(tmp_path, "default") == []


def test_widening_adds_another_machines_runs_to_the_pinned_values(tmp_path):
    """A figure reproduced bit-for-bit on one CPU moves in its third digit on another (LoRA training amplifies an
    AVX2 / AVX-512 reduction-order difference): --widen adds that machine's run, the spread across the two
    machines becomes the tolerance, both machines then pass, a real move still fails, a differing verdict is
    refused, and the earlier pin's runs, commit and reason stay on record."""
    results.pin_plan_baselines(tmp_path, "smoke", [run_of(evidence_record(), name="intel")], "first pin")
    other_cpu = evidence_record(noise=2e-3)  # same verdict, figures moved beyond the 1e-4 floor
    pinned = results.load_plan_baselines(tmp_path, "smoke")
    assert not results.gate(pinned, [other_cpu], plan="smoke").passed  # the CI failure this fixes
    amd = run_of(other_cpu, name="amd", commit="def456")
    amd.meta.update(cpu="AMD EPYC", cpu_capability="AVX2")
    written = results.widen_plan_baselines(tmp_path, "smoke", [amd], "AVX2 host: measured cross-CPU spread")
    data = json.loads(written[0].read_text())
    assert [r["run"] for r in data["runs"]] == ["intel", "amd"] and data["runs"][1]["cpu_capability"] == "AVX2"
    assert data["commit"] == "abc123+def456" and "widened the pin at abc123: first pin" in data["reason"]
    estimate = data["entries"]["G-EV/seed"]["figures"]["evidence[A - B].estimate"]
    assert len(estimate["runs"]) == 2 and estimate["tolerance"] > 0
    widened = results.load_plan_baselines(tmp_path, "smoke")
    assert results.gate(widened, [other_cpu], plan="smoke").passed
    assert results.gate(widened, [evidence_record()], plan="smoke").passed
    assert not results.gate(widened, [evidence_record(offset=0.8)], plan="smoke").passed
    flipped = run_of(evidence_record(offset=-0.5), name="flip", commit="def456")
    with pytest.raises(results.BaselineError, match="FAILED on run flip, pinned CONFIRMED"):
        results.widen_plan_baselines(tmp_path, "smoke", [flipped], "why")
    with pytest.raises(results.BaselineError, match="hold different records"):
        results.widen_plan_baselines(tmp_path, "smoke", [run_of(evidence_record(protocol="rigorous"))], "why")
    with pytest.raises(results.BaselineError, match="no baselines pinned"):
        results.widen_plan_baselines(tmp_path / "none", "smoke", [amd], "why")
    with pytest.raises(results.BaselineError, match="needs a reason"):
        results.widen_plan_baselines(tmp_path, "smoke", [amd], " ")
    with pytest.raises(results.BaselineError, match="runs of different commits"):
        results.widen_plan_baselines(tmp_path, "smoke", [amd, run_of(other_cpu, name="amd2", commit="fff000")], "x")
    # a decision part whose outcome differs, verdict unchanged: a change, never a spread
    record = evidence_record(noise=2e-3)
    record.evidence[0]["outcome"] = "undecided"
    with pytest.raises(results.BaselineError, match=r"evidence\[A - B\]\.outcome is undecided on run odd"):
        results.widen_plan_baselines(tmp_path, "smoke", [run_of(record, name="odd", commit="def456")], "x")
    # widening is for another machine, of the pinned code (when the pinned runs recorded it)
    again = run_of(evidence_record(noise=3e-3), name="amd-again", commit="def456")
    again.meta.update(cpu="AMD EPYC", simd="avx2 fma", engine_code="c0de")
    other = run_of(evidence_record(noise=1e-3), name="xeon", commit="def456")
    other.meta.update(cpu="Intel Xeon", simd="avx2 fma avx512f", engine_code="c0de")
    results.widen_plan_baselines(tmp_path, "smoke", [other], "an AVX-512 host")
    again.meta["engine_code"] = "beef"
    with pytest.raises(results.BaselineError, match="engine code beef, pinned run xeon's c0de"):
        results.widen_plan_baselines(tmp_path, "smoke", [again], "x")
    with pytest.raises(results.BaselineError, match="ran on the CPU of pinned run xeon"):
        results.widen_plan_baselines(tmp_path, "smoke", [other], "x")
    assert json.loads(written[0].read_text())["commit"] == "abc123+def456"
    # the command line: `mi-atlas baselines pin --widen`, and a refusal is one line, exit 2
    root = tmp_path / "results"
    results.write_run(root / "runs" / "amd", amd)
    out = cli("baselines", "pin", "--widen", "--plan", "smoke", "--reason", "AVX2 host again", "--results",
              str(root), "--baselines", str(tmp_path), "amd")
    assert out.exit_code == 0 and "pinned" in out.output and "now have a spread" in out.output, out.output
    assert json.loads(written[0].read_text())["runs"][-1]["run"] == "amd"
    refused = cli("baselines", "pin", "--widen", "--plan", "smoke", "--reason", "x", "--results", str(root),
                  "--baselines", str(tmp_path / "none"), "amd")
    assert refused.exit_code == 2 and "no baselines pinned" in refused.output


# ------------------------------------------------------------------------------------------------ pytest + CLI


def inner(pytester: pytest.Pytester, root: Path, *args: str, **env: str) -> pytest.RunResult:
    """One claims session in its own process (scipy cannot be re-imported inline), writing under ``root``."""
    for key, value in {"OFFSET": "0.5", "NOISE": "0", "SECONDS": "1", **env}.items():
        os.environ[key] = value
    return pytester.runpytest_subprocess("-p", "claims.plugin", f"--claims-catalogue={pytester.path / 'cat.toml'}",
                                         f"--claims-results={root}", "--plan", "smoke", *QUIET, *args)


def cli(*args: str):
    from engine.cli.app import app

    return CliRunner().invoke(app, list(args))


def test_ci_flow_pin_three_runs_then_gate_a_moved_figure(pytester, monkeypatch):
    """Three runs (jitter, other timings) -> `mi-atlas baselines pin` -> the gated session passes, fails on a moved
    figure with the reviewer's table, fails on a missing record; the CI run writes only under its results root."""
    for key in ("OFFSET", "NOISE", "SECONDS"):
        monkeypatch.setenv(key, "")
    pytester.makepyfile(test_gated=GATED)
    (pytester.path / "cat.toml").write_text(CATALOGUE)
    pins = pytester.path / "pinned-results"
    baselines = pytester.path / "tracked" / "baselines"
    run_dirs = []
    for noise, seconds in (("0", "5"), ("0.001", "50"), ("0.002", "7")):
        result = inner(pytester, pins, NOISE=noise, SECONDS=seconds)
        assert result.ret == 0, result.stdout.str()
        result.stdout.fnmatch_lines(["gate [[]plan smoke[]]: no baselines pinned under*"])
        run_dirs.append(str(results.run_dir(pins)))

    no_reason = cli("baselines", "pin", "--plan", "smoke", "--baselines", str(baselines), *run_dirs)
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    bad_run = cli("baselines", "pin", "--plan", "smoke", "--reason", "x", "--baselines", str(baselines),
                  str(pytester.path / "nope"))
    assert bad_run.exit_code == 2 and bad_run.output.count("\n") == 1 and "error:" in bad_run.output
    wrong_plan = cli("baselines", "pin", "--plan", "default", "--reason", "x", "--baselines", str(baselines),
                     *run_dirs)
    assert wrong_plan.exit_code == 2 and "measured plan 'smoke', not 'default'" in wrong_plan.output
    pinned = cli("baselines", "pin", "--plan", "smoke", "--reason", "first smoke pin", "--baselines",
                 str(baselines), *run_dirs)
    assert pinned.exit_code == 0, pinned.output
    assert "2 baseline file(s) of plan smoke from 3 run(s)" in pinned.output
    assert json.loads((baselines / "smoke" / "smollm2-135m.json").read_text())["reason"] == "first smoke pin"

    ci_root = pytester.path / "ci-tmp"
    gate = ("--claims-baseline-gate", f"--claims-baselines={baselines}")
    passed = inner(pytester, ci_root, *gate, NOISE="0.001", SECONDS="99")
    assert passed.ret == 0, passed.stdout.str()
    passed.stdout.fnmatch_lines([("gate [[]plan smoke[]]: 4 of 4 pinned record(s) compared, 20 gated figure(s), "
                                  "12 reported-only*0 moved, 0 missing*pinned at nogit (first smoke pin)")])
    assert sorted(p.name for p in pytester.path.joinpath("tracked").rglob("*.json")) == [
        "gemma3-270m.json", "smollm2-135m.json"]  # CI wrote its run under ci-tmp only (locks are git-ignored)
    assert (ci_root / "latest" / "claims.json").is_file()
    checked = cli("baselines", "check", "--plan", "smoke", "--results", str(ci_root), "--baselines", str(baselines))
    assert checked.exit_code == 0 and "4 of 4 pinned record(s) compared" in checked.output

    moved = inner(pytester, ci_root, *gate, OFFSET="0.9")
    assert moved.ret == pytest.ExitCode.TESTS_FAILED
    moved.stdout.fnmatch_lines([
        "*claim*model*protocol*figure*baseline*new*tolerance*verdict before*verdict after*pinned at*",
        "*G-EV*smollm2-135m*rigorous*evidence[[]A - B[]].estimate*(spread)*CONFIRMED*CONFIRMED*nogit*",
        "*--claims-baseline-gate: the session fails because of these changes*",
    ])
    report = (ci_root / "latest" / "report.md").read_text()
    assert "| G-EV | smollm2-135m | seed | evidence[A - B].estimate |" in report
    assert cli("baselines", "check", "--plan", "smoke", "--results", str(ci_root), "--baselines",
               str(baselines)).exit_code == 1
    reported = inner(pytester, ci_root, f"--claims-baselines={baselines}", OFFSET="0.9")
    assert reported.ret == 0 and "reported only; --claims-baseline-gate makes them fail" in reported.stdout.str()

    partial = inner(pytester, ci_root, *gate, "-k", "seed_only")
    assert partial.ret == pytest.ExitCode.TESTS_FAILED
    partial.stdout.fnmatch_lines(["*1 of 4 pinned record(s) compared*",
                                  "*FAIL: fewer records compared (1) than the plan's baselines expect (4)*",
                                  "*G-EV*smollm2-135m*seed*(record)*pinned*not measured*"])


def test_the_gate_without_baselines_and_a_re_pin_without_reason_are_one_line_usage_errors(pytester):
    pytester.makepyfile(test_gated=GATED)
    (pytester.path / "cat.toml").write_text(CATALOGUE)
    root = pytester.path / "r"
    missing = inner(pytester, root, "--claims-baseline-gate", f"--claims-baselines={pytester.path / 'none'}")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines([("ERROR: --claims-baseline-gate: no baselines pinned for plan 'smoke' under *: "
                                   "pin them with `mi-atlas baselines pin --plan smoke --reason*")])
    assert not root.exists()  # nothing ran
    unreasoned = inner(pytester, root, "--claims-update-baseline")
    assert unreasoned.ret == pytest.ExitCode.USAGE_ERROR
    assert "--claims-update-baseline needs --claims-pin-reason" in unreasoned.stderr.str()
    repinned = inner(pytester, root, "--claims-update-baseline", "--claims-pin-reason", "local re-pin",
                     "--claims-baseline-gate")
    assert repinned.ret == 0, repinned.stdout.str()
    data = json.loads((root / "baselines" / "smoke" / "smollm2-135m.json").read_text())
    assert data["reason"] == "local re-pin" and data["pinned_by"] == "pytest --claims-update-baseline"
    assert inner(pytester, root, "--claims-baseline-gate").ret == 0  # reproduces bit-for-bit
    assert Verdict.CONFIRMED.value in (root / "latest" / "report.md").read_text()
