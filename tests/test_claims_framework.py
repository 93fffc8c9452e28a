"""The claims framework: catalogue, verdict logic, pytest plugin (outcomes, markers, xdist), results files."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from toy_catalogue import HEADER
from typer.testing import CliRunner

from engine import ENGINE_VERSION, models, results
from engine.verdicts import (
    ClaimError,
    ClaimRevisedWarning,
    Recorder,
    Target,
    Tolerance,
    Verdict,
    VerdictRecord,
    load_catalogue,
    parse_catalogue,
)

pytest_plugins = ["pytester"]

CATALOGUE_IDS = {
    "HUB-Q05", "HUB-Q15", "HUB-Q3", "HUB-CODER", "HUB-SMOL", "HUB-MIGRATE", "HUB-SEEDS", "HUB-NL", "HUB-BREADTH",
    "OWN-ATLAS", "POS-ANSWER", "ABL-MEAN", "SKIP-ALL", "LORA-ATLAS", "LORA-LATE", "LORA-OPROJ", "LOCKIN",
    "SKIP-RECOVER", "QUANT-KL", "QUANT-SPEED", "STEER-ALL", "STEER-RANDOM", "STEER-TRANSFER",
}

# A small catalogue whose claim has a seed figure for a cpu model, so every verdict path runs without a GPU.
TEST_CATALOGUE = HEADER + """scale_05b = "Qwen2.5-0.5B"

[[claim]]
id = "T-FIG"
block = "atlas"
statement = "The figure is 10."
rule = "the figure is positive"
tiers = ["gpu", "cpu"]
models = ["smollm2-135m", "qwen2.5-0.5b"]
key = "figure"
tolerance = { abs = 1.0 }
tolerances = { layers = { abs = 0 } }
[claim.seed."smollm2-135m"]
figure = 10.0
layers = [2, 14]
"""

# The example claim test (real catalogue, cpu tier): it reads like its sentence; the verdict logic is elsewhere.
EXAMPLE_CLAIM_TEST = '''
import statistics

import pytest


def hub_of(effects):
    """The layer with the largest ablation effect."""
    return max(range(len(effects)), key=effects.__getitem__)


@pytest.mark.claim("HUB-SEEDS", model="smollm2-135m")
def test_hub_is_stable_across_seeds(claim):
    # Stand-in for the per-layer ablation effects measured on prompts resampled per seed.
    effects = {42: [0.1, 0.9, 0.2], 137: [0.2, 0.8, 0.1], 256: [0.1, 0.7, 0.3]}
    hubs = [hub_of(profile) for profile in effects.values()]
    std = statistics.pstdev(hubs)
    claim.record(protocol="seed", figures={"hub_std": std, "hubs": hubs}, holds=std == 0, seeds=list(effects),
                 suite_hash="example")
    # The rigorous protocol decides with a calibrated primitive: P(argmax = layer) over stratified resamples.
    from engine import decisions

    per_example = [[0.1 + 0.01 * (i % 3), 0.9 - 0.01 * (i % 5), 0.2] for i in range(40)]
    families = [f"fam{i % 4}" for i in range(40)]
    hub = decisions.argmax(per_example, families)
    claim.record(protocol="rigorous", figures={"hub_layer": hub.estimate}, holds=hub, seeds=[42])
'''

# One test per verdict path and outcome, on the test catalogue.
OUTCOMES = '''
import os
import pytest


@pytest.mark.claim("T-FIG", model="smollm2-135m")
def test_confirmed_and_revised(claim):
    claim.record("seed", {"figure": 10.4, "layers": [2, 14]}, holds=True, seeds=[1, 2], ci={"figure": (9.9, 10.9)})
    claim.record("rigorous", {"figure": 7.5}, holds=True, notes="careful re-measurement")


@pytest.mark.claim("T-FIG", model="smollm2-135m", protocols=("seed",))
def test_failed(claim):
    claim.record("seed", {"figure": -3.25}, holds=False)


@pytest.mark.claim("T-FIG", model="gemma3-270m", protocols=("seed",))
def test_documented_revision(claim):
    claim.record("seed", {"figure": 4.0}, holds=True, revised=True, reason="identical on this model")


@pytest.mark.claim("T-FIG", model="gemma3-270m", protocols=("rigorous",))
def test_untested(claim):
    claim.untested("budget: the rigorous sweep needs 2 GPU hours")


@pytest.mark.claim("T-FIG", model="smollm2-135m", protocols=("rigorous",))
def test_plain_skip_is_untested(claim):
    pytest.skip("tokenizer missing")


@pytest.mark.claim("T-FIG", model="gemma3-270m", protocols=("seed",))
def test_records_nothing(claim):
    pass
'''


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    """The summary table shortens its last column to the terminal width; tests read it whole."""
    monkeypatch.setenv("COLUMNS", "250")


# Plugins the inner sessions do not use stay off: pytester drops modules an inner run imports, so hypothesis
# (imported by its terminal summary) would be imported and assertion-rewritten again by every run.
QUIET = ("-p", "no:hypothesispytest", "-p", "no:benchmark", "-p", "no:cacheprovider")


def run_inline(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "claims.plugin", f"--claims-results={pytester.path / 'results'}", *QUIET, *args)


def write_catalogue(pytester: pytest.Pytester) -> str:
    path = pytester.path / "catalogue.toml"
    path.write_text(TEST_CATALOGUE)
    return f"--claims-catalogue={path}"


def outcomes(result: pytest.RunResult) -> dict[str, int]:
    """The session's outcome counts, including the REVISED status ('revised')."""
    return {k: v for k, v in result.parseoutcomes().items() if k not in ("seconds",)}


def run_file(root: Path) -> dict:
    return json.loads((root / "latest" / "claims.json").read_text())


# ------------------------------------------------------------------------------------------------ catalogue


def test_catalogue_holds_every_claim_with_registry_models_and_scales():
    catalogue = load_catalogue()
    assert set(catalogue.claims) == CATALOGUE_IDS
    assert set(catalogue.cpu_models) == {"smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"}
    for model in catalogue.cpu_models:
        assert models.REGISTRY[model].tier == "cpu"
        assert models.REGISTRY[model].scale in catalogue.scales
    for claim in catalogue:
        assert claim.block in ("atlas", "lora", "steer", "quant") and claim.statement and claim.rule
        assert set(claim.tiers) == {"gpu", "cpu"}
        keys = {key for group in claim.models for key in group.split("+")}
        assert all(models.REGISTRY[key].tier == "gpu" for key in keys), claim.id
        assert set(claim.scales) == {models.REGISTRY[key].scale for key in keys}, claim.id
        assert set(claim.scales) <= set(catalogue.scales)
    assert catalogue["HUB-Q05"].seed_figure("qwen2.5-0.5b", "hub_layer") == 2
    assert catalogue["HUB-Q15"].seed_figure("qwen2.5-1.5b", "hub_layer") == 14
    assert catalogue["QUANT-KL"].seed_figure("qwen2.5-0.5b", "amplification") == 476.0
    assert catalogue["HUB-Q05"].seed_figure("smollm2-135m", "hub_layer") is None  # cpu tier: no seed figures


def test_catalogue_errors_name_the_file_claim_and_field():
    broken = TEST_CATALOGUE.replace("tolerance = { abs = 1.0 }\n", "")
    with pytest.raises(ClaimError, match=r"x\.toml: claim #1 \(T-FIG\): missing field\(s\) tolerance"):
        parse_catalogue(broken, "x.toml")
    with pytest.raises(ClaimError, match=r"field 'block' is 'atlass'"):
        parse_catalogue(TEST_CATALOGUE.replace('block = "atlas"', 'block = "atlass"'), "x.toml")
    with pytest.raises(ClaimError, match="lack the key figure 'figure'"):
        parse_catalogue(TEST_CATALOGUE.replace("figure = 10.0", "figur = 10.0"), "x.toml")
    with pytest.raises(ClaimError, match="unknown claim id 'T-NOPE'"):
        parse_catalogue(TEST_CATALOGUE, "x.toml")["T-NOPE"]


# ------------------------------------------------------------------------------------------------ verdict logic


def recorder(model: str = "smollm2-135m", tier: str = "cpu") -> Recorder:
    claim = parse_catalogue(TEST_CATALOGUE)["T-FIG"]
    return Recorder(Target(claim=claim, model=model, tier=tier), git_commit="abc123", test="t::x")


def test_a_failed_reason_without_a_key_figure_says_what_was_decided_against():
    """No key figure to show (a rule decided by its evidence alone): the reason is the evidence's own statement,
    never a bare "the measurement" (full run 7bc301d printed "falsifier fired: the measurement")."""
    from engine import decisions as D

    groups = ["a"] * 6 + ["b"] * 6
    against = D.greater([0.01, -0.01, 0.0, 0.02, -0.02, 0.01] * 2, groups, delta=1.0, label="early - base")
    assert against.outcome is D.Outcome.AGAINST
    record = recorder("gemma3-270m").record("rigorous", {"n": 12}, holds=against)
    assert record.verdict is Verdict.FAILED
    assert record.reason == f"falsifier fired: {against.statement}" and "early - base" in record.reason


def test_verdict_paths_follow_the_catalogue_definitions():
    with pytest.warns(ClaimRevisedWarning, match="figure = 12 vs the seed's 10"):
        revised = recorder().record("seed", {"figure": 12}, holds=True)
    assert revised.verdict is Verdict.REVISED and revised.expected == 10.0 and revised.measured == 12
    assert recorder().record("seed", {"figure": 10.9}, holds=True).verdict is Verdict.CONFIRMED
    assert recorder().record("seed", {"figure": 10.9}, holds=False).verdict is Verdict.FAILED
    assert recorder().record("seed", {"figure": 10.0, "layers": [2, 14]}, holds=True, key="layers").verdict \
        is Verdict.CONFIRMED
    with pytest.warns(ClaimRevisedWarning):
        assert recorder().record("seed", {"layers": [2, 15]}, holds=True, key="layers").verdict is Verdict.REVISED
        documented = recorder().record("seed", {"figure": 10.0}, holds=True, revised=True, reason="same hub")
    assert documented.verdict is Verdict.REVISED and "same hub" in documented.reason
    no_seed = recorder("gemma3-270m").record("seed", {"figure": 99.0}, holds=True)
    assert no_seed.verdict is Verdict.CONFIRMED and no_seed.expected is None
    assert "no figure" in no_seed.reason
    assert recorder("gemma3-270m").record("seed", {"figure": 99.0}, holds=False).verdict is Verdict.FAILED
    untested = recorder().untested("no weights")
    assert [r.verdict for r in untested] == [Verdict.UNTESTED, Verdict.UNTESTED]
    assert Tolerance(rel=0.1).within(109, 100) and not Tolerance(rel=0.1).within(111, 100)


def test_a_record_carries_its_provenance_and_rejects_bad_input():
    rec = recorder()
    record = rec.record("rigorous", {"figure": 10.2, "n": 3}, holds=True, seeds=(42, 137), suite_hash="s1",
                        ci={"figure": (9.8, 10.6)})
    assert (record.claim_id, record.model, record.tier, record.protocol) == ("T-FIG", "smollm2-135m", "cpu",
                                                                             "rigorous")
    assert record.engine_version == ENGINE_VERSION and record.git_commit == "abc123" and record.test == "t::x"
    assert record.seeds == [42, 137] and record.suite_hash == "s1" and record.ci == {"figure": [9.8, 10.6]}
    assert record.tolerance == {"abs": 1.0, "rel": 0.0} and record.duration_s >= 0 and record.timestamp
    assert VerdictRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    with pytest.raises(ClaimError, match="recorded twice"):
        rec.record("rigorous", {"figure": 10.2}, holds=True)
    with pytest.raises(ClaimError, match="must report figure 'figure'"):
        recorder().record("seed", {"other": 1.0}, holds=True)
    with pytest.raises(ClaimError, match="non-finite"):
        recorder().record("seed", {"figure": float("nan")}, holds=True)
    with pytest.raises(ClaimError, match="holds must be True or False"):
        recorder().record("seed", {"figure": 10.0}, holds=0.5)
    with pytest.raises(ClaimError, match="low <= high"):
        recorder().record("seed", {"figure": 10.0}, holds=True, ci={"figure": (2, 1)})
    with pytest.raises(ClaimError, match="protocol 'fast'"):
        recorder().record("fast", {"figure": 10.0}, holds=True)


# ------------------------------------------------------------------------------------------------ registry


def _append_many(root: str, worker: int, count: int) -> None:
    for i in range(count):
        results.append_registry(Path(root), {"worker": worker, "i": i, "pad": "x" * (i * 37 % 3000)})


def _append_forever(root: str) -> None:
    i = 0
    while True:
        results.append_registry(Path(root), {"i": i, "pad": "y" * 5000})
        i += 1


def test_registry_parallel_writers_leave_every_line_whole(tmp_path):
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 50)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    lines = results.read_registry(tmp_path)
    assert len(lines) == 200
    assert sorted((line["worker"], line["i"]) for line in lines) == [(w, i) for w in range(4) for i in range(50)]


def test_registry_survives_a_killed_writer(tmp_path):
    process = multiprocessing.get_context("fork").Process(target=_append_forever, args=(str(tmp_path),))
    process.start()
    registry = tmp_path / results.REGISTRY_FILE
    deadline = time.time() + 30
    while (not registry.exists() or registry.stat().st_size < 200_000) and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.join(10)
    assert process.exitcode == -signal.SIGKILL
    # Linux may end a write short when SIGKILL arrives between pages (a fatal signal stops generic_perform_write),
    # so the killed writer can leave a torn last line: it is skipped when read and cut by the next append
    torn = not registry.read_bytes().endswith(b"\n")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        lines = results.read_registry(tmp_path)
    assert len(lines) >= 30 and [line["i"] for line in lines] == list(range(len(lines)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results.append_registry(tmp_path, {"i": len(lines)})
    assert any("torn last line" in str(w.message) for w in caught) == torn
    assert registry.read_bytes().endswith(b"\n")
    assert [line["i"] for line in results.read_registry(tmp_path)] == list(range(len(lines) + 1))


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path):
    results.append_registry(tmp_path, {"i": 0})
    with open(tmp_path / results.REGISTRY_FILE, "ab") as handle:
        handle.write(b'{"i": 1, "trunc')  # what a power cut mid-write could leave
    with pytest.warns(UserWarning, match="skipping a torn last line"):
        assert [line["i"] for line in results.read_registry(tmp_path)] == [0]
    with pytest.warns(UserWarning, match="torn last line of 15 bytes"):
        results.append_registry(tmp_path, {"i": 2})
    assert [line["i"] for line in results.read_registry(tmp_path)] == [0, 2]


# ------------------------------------------------------------------------------------------------ plugin


def test_example_claim_test_is_confirmed(pytester):
    pytester.makepyfile(test_example=EXAMPLE_CLAIM_TEST)
    result = run_inline(pytester, "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_hub_is_stable_across_seeds CONFIRMED*",
                                 "*MI-Atlas claims*",
                                 "HUB-SEEDS*smollm2-135m*cpu*CONFIRMED*hub_std = 0 (seed)*"])
    seed, rigorous = sorted(run_file(pytester.path / "results")["records"], key=lambda r: r["protocol"] != "seed")
    assert seed["figures"] == {"hub_std": 0.0, "hubs": [1, 1, 1]} and seed["seeds"] == [42, 137, 256]
    assert rigorous["verdict"] == "CONFIRMED" and rigorous["evidence"][0]["primitive"] == "argmax"
    assert rigorous["evidence"][0]["data"]["groups"][:2] == ["fam0", "fam1"] and rigorous["catalogue_sha256"]


def test_outcomes_summary_and_result_files(pytester):
    pytester.makepyfile(test_outcomes=OUTCOMES)
    result = run_inline(pytester, write_catalogue(pytester), "-v", "-rs", "--junitxml=junit.xml",
                        "-o", "junit_family=xunit1")
    assert outcomes(result) == {"revised": 2, "failed": 2, "skipped": 2, "warnings": 2}
    result.stdout.fnmatch_lines_random([
        "*test_confirmed_and_revised REVISED*",
        "*test_documented_revision REVISED*",
        "*test_untested UNTESTED*",
        "*ClaimRevisedWarning: T-FIG on smollm2-135m (rigorous): REVISED*figure = 7.5 vs the seed's 10*",
        "T-FIG on smollm2-135m [seed]: FAILED",  # the failure message carries the figures
        "*figures: figure = -3.25*",
        "*recorded no verdict*",
        "*UNTESTED: budget: the rigorous sweep needs 2 GPU hours*",
    ])
    result.stdout.fnmatch_lines([  # summary: one row per claim x model (x repeat), seed and rigorous side by side
        "claim*model*tier*seed*rigorous*key figure vs expectation",
        "T-FIG*gemma3-270m*cpu*REVISED*UNTESTED*figure = 4 (seed)*",
        "T-FIG*smollm2-135m*cpu*CONFIRMED*REVISED*figure = 10.4 (seed) | 7.5 (rigorous) vs seed figure 10 ±1*",
        "T-FIG*smollm2-135m*cpu*FAILED*UNTESTED*",
        "claims: 1 CONFIRMED, 2 REVISED, 1 FAILED, 0 INCONCLUSIVE, 2 UNTESTED*",
    ])
    root = pytester.path / "results"
    data = run_file(root)
    verdicts = sorted((r["test"].split("::")[1], r["protocol"], r["verdict"]) for r in data["records"])
    assert verdicts == [
        ("test_confirmed_and_revised", "rigorous", "REVISED"), ("test_confirmed_and_revised", "seed", "CONFIRMED"),
        ("test_documented_revision", "seed", "REVISED"), ("test_failed", "seed", "FAILED"),
        ("test_plain_skip_is_untested", "rigorous", "UNTESTED"), ("test_untested", "rigorous", "UNTESTED"),
    ]
    assert len(results.read_registry(root)) == 6
    assert list((root / "runs").iterdir()) == [(root / "latest").resolve()]
    markdown = (root / "latest" / "report.md").read_text()
    assert "| T-FIG | smollm2-135m | cpu | CONFIRMED | REVISED |" in markdown
    assert "**seed protocol: CONFIRMED.**" in markdown and "figure = 10.4 (95% CI [9.9, 10.9])" in markdown
    (case,) = [c for c in ET.parse(pytester.path / "junit.xml").iter("testcase")
               if c.get("name") == "test_confirmed_and_revised"]
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties["verdict[T-FIG|smollm2-135m|seed]"] == "CONFIRMED"
    assert properties["verdict[T-FIG|smollm2-135m|rigorous]"] == "REVISED"
    assert json.loads(properties["claim_record"])["protocol"] == "rigorous"  # full records ride along


SKIPS = '''
import pytest


@pytest.fixture
def weights():
    pytest.skip("UNTESTED: weights of x are not present")


@pytest.mark.claim("T-FIG", model="gemma3-270m")
def test_fixture_skip(claim, weights):
    pass


@pytest.mark.claim("T-FIG", model="smollm2-135m")
def test_seed_then_skip(claim):
    claim.record("seed", {"figure": 10.0}, holds=True)
    pytest.skip("rigorous sweep over budget")


@pytest.mark.claim("T-FIG", model="smollm2-135m", protocols=("rigorous",))
def test_error_is_an_error(claim):
    raise RuntimeError("measurement broke")
'''


def test_skips_leave_untested_verdicts_for_every_unrecorded_protocol(pytester):
    pytester.makepyfile(test_skips=SKIPS)
    result = run_inline(pytester, write_catalogue(pytester), "-rs")
    result.assert_outcomes(skipped=2, failed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: measurement broke*"])
    records = {(r["test"].split("::")[1], r["protocol"]): (r["verdict"], r["reason"])
               for r in run_file(pytester.path / "results")["records"]}
    assert records == {
        ("test_fixture_skip", "seed"): ("UNTESTED", "weights of x are not present"),
        ("test_fixture_skip", "rigorous"): ("UNTESTED", "weights of x are not present"),
        ("test_seed_then_skip", "seed"): ("CONFIRMED", records[("test_seed_then_skip", "seed")][1]),
        ("test_seed_then_skip", "rigorous"): ("UNTESTED", "rigorous sweep over budget"),
    }
    result.stdout.fnmatch_lines(["T-FIG*gemma3-270m*cpu*UNTESTED*UNTESTED*weights of x are not present*",
                                 "T-FIG*smollm2-135m*cpu*CONFIRMED*UNTESTED*"])


def test_markers_are_registered_in_one_place(pytester):
    result = run_inline(pytester, "--markers")
    names = ["gpu", "cpu", "slow", "bench", "claim(id, model=..., protocols=...)", "scale_135m", "scale_270m",
             "scale_05b", "scale_15b", "scale_3b", "scale_17b", "atlas", "lora", "steer", "quant"]
    result.stdout.fnmatch_lines_random([f"@pytest.mark.{name}: *" for name in names])


def test_collecting_without_claim_tests_writes_nothing(pytester):
    pytester.mkpydir("claims")
    result = run_inline(pytester, "claims", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert "error" not in result.stdout.str().lower()
    assert not (pytester.path / "results").exists()


def test_strict_mode_fails_revised_verdicts(pytester):
    pytester.makepyfile(test_outcomes=OUTCOMES)
    result = run_inline(pytester, write_catalogue(pytester), "--claims-strict", "-k", "revis")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*[[]rigorous[]]: REVISED (fails under --claims-strict)*"])


def test_summary_under_xdist_is_written_once_by_the_controller(pytester):
    pytester.makepyfile(test_outcomes=OUTCOMES)
    # The only subprocess run (xdist needs one).
    result = pytester.runpytest_subprocess("-p", "claims.plugin", f"--claims-results={pytester.path / 'results'}",
                                           write_catalogue(pytester), "-n", "2", *QUIET)
    assert outcomes(result) == {"revised": 2, "failed": 2, "skipped": 2, "warnings": 2}
    result.stdout.fnmatch_lines([
        "*MI-Atlas claims*",
        "T-FIG*smollm2-135m*cpu*CONFIRMED*REVISED*",
        "claims: 1 CONFIRMED, 2 REVISED, 1 FAILED, 0 INCONCLUSIVE, 2 UNTESTED*",
    ])
    assert result.stdout.str().count("MI-Atlas claims") == 1
    root = pytester.path / "results"
    assert len(list((root / "runs").iterdir())) == 1
    assert len(run_file(root)["records"]) == len(results.read_registry(root)) == 6


KILLED = '''
import os
import signal

import pytest


@pytest.mark.claim("T-FIG", model="smollm2-135m", protocols=("seed",))
def test_a_measured(claim):
    claim.record("seed", {"figure": 10.0}, holds=True)


@pytest.mark.claim("T-FIG", model="gemma3-270m", protocols=("seed",))
def test_b_killed(claim):
    claim.record("seed", {"figure": 3.0}, holds=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the run dies before its report reaches the session
'''


def test_a_killed_run_keeps_its_verdicts_in_the_registry_and_can_be_reported(pytester):
    pytester.makepyfile(test_killed=KILLED)
    root = pytester.path / "results"
    result = pytester.runpytest_subprocess("-p", "claims.plugin", f"--claims-results={root}",
                                           write_catalogue(pytester), "-p", "no:xdist", *QUIET)
    assert result.ret == -signal.SIGKILL
    (line,) = results.read_registry(root)  # the measured verdict, whole; nothing of the killed test
    assert (line["model"], line["verdict"]) == ("smollm2-135m", "CONFIRMED")
    (run,) = (root / "runs").iterdir()
    assert not (run / results.RUN_FILE).exists() and not (root / "latest").exists()

    from engine.cli.claims import render_report

    text = render_report(run.name, root)  # rebuilt from the registry lines of that run
    assert "**Interrupted run**" in text and "| T-FIG | smollm2-135m | cpu | CONFIRMED |" in text
    assert (run / results.REPORT_FILE).read_text() == text

    pytester.makepyfile(test_killed=KILLED.split("@pytest.mark.claim(\"T-FIG\", model=\"gemma3-270m\"")[0])
    assert run_inline(pytester, write_catalogue(pytester)).ret == 0  # the next run appends after it
    assert [r["run"] for r in results.read_registry(root)] == [run.name, run_file(root)["run"]]


MARKED = '''
import pytest
from claims.plugin import claim_params


@pytest.mark.parametrize("model", claim_params("HUB-Q05"))
def test_hub_q05(claim, model):
    claim.record("seed", {"hub_layer": 2}, holds=True)


@pytest.mark.claim("HUB-Q15", model="qwen2.5-1.5b")
def test_hub_q15(claim):
    claim.record("seed", {"hub_layer": 14}, holds=True)


@pytest.mark.claim("HUB-CODER", model=["qwen2.5-coder-0.5b", "qwen2.5-0.5b"])
def test_coder(claim):
    claim.record("seed", {"hub_layer": 22}, holds=True)


@pytest.mark.claim("QUANT-KL", model="gemma3-270m")
def test_quant(claim):
    claim.record("seed", {"amplification": 3.0}, holds=True)


def test_not_a_claim():
    pass
'''


@pytest.mark.parametrize("expression, selected", [
    ("gpu and scale_05b", ["test_coder", "test_hub_q05[qwen2.5-0.5b]"]),
    ("cpu", ["test_hub_q05[gemma3-270m]", "test_hub_q05[smollm2-135m]", "test_quant"]),
    ("quant", ["test_quant"]),
    ("scale_15b", ["test_hub_q15"]),
])
def test_markers_are_derived_from_catalogue_and_registry(pytester, expression, selected):
    pytester.makepyfile(test_marked=MARKED)
    result = run_inline(pytester, "--collect-only", "-q", "--strict-markers", "-m", expression)
    collected = sorted(line.split("::")[1] for line in result.outlines if "::" in line)
    assert collected == selected


def test_a_malformed_claim_marker_is_a_collection_error(pytester):
    pytester.makepyfile('''
import pytest

@pytest.mark.claim("HUB-Q05", model="qwen2.5-3b")
def test_wrong_model(claim):
    claim.record("seed", {"hub_layer": 2}, holds=True)
''')
    result = run_inline(pytester)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*'qwen2.5-3b' is not one of the claim's gpu-tier models (qwen2.5-0.5b)*"])


def test_gpu_claim_without_cuda_is_untested(pytester, monkeypatch):
    import torch

    monkeypatch.setattr(models, "availability", lambda key: (True, ""))  # weights present, GPU missing
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pytester.makepyfile(test_marked=MARKED)
    result = run_inline(pytester, "-m", "gpu and scale_05b", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*UNTESTED: no CUDA device for this gpu-tier claim*"])
    assert "not present" not in result.stdout.str()
    assert {(r["claim_id"], r["protocol"], r["verdict"]) for r in run_file(pytester.path / "results")["records"]} \
        == {(c, p, "UNTESTED") for c in ("HUB-Q05", "HUB-CODER") for p in ("seed", "rigorous")}


def test_gpu_claim_without_weights_is_untested(pytester, monkeypatch, tmp_path):
    monkeypatch.delenv("MI_ATLAS_MODEL_DIR", raising=False)
    pytester.makepyfile(test_marked=MARKED)
    result = run_inline(pytester, "-m", "scale_05b and gpu", "-rs", "--allow-cpu-gpu-tier",
                        f"--model-dir={tmp_path}")
    if models.availability("qwen2.5-0.5b")[0]:
        pytest.skip("qwen2.5-0.5b weights are in the offline Hugging Face cache of this machine")
    assert os.environ["MI_ATLAS_MODEL_DIR"] == str(tmp_path)
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*UNTESTED: weights of qwen2.5-0.5b (Qwen/Qwen2.5-0.5B) are not present*"])
    assert "CUDA" not in result.stdout.str()


BASELINED = '''
import os
import pytest


@pytest.mark.claim("T-FIG", model="smollm2-135m", protocols=("seed",))
def test_figure(claim):
    figure = float(os.environ["FIGURE"])
    claim.record("seed", {"figure": figure, "spread": float(os.environ["SPREAD"])}, holds=figure > 0)


# the gate expects every record the catalogue declares for the cpu tier (issue #25): the other three, UNTESTED
@pytest.mark.claim("T-FIG", model="smollm2-135m", protocols=("rigorous",))
def test_figure_rigorous(claim):
    claim.untested("not measured in this toy")


@pytest.mark.claim("T-FIG", model="gemma3-270m")
def test_figure_other_model(claim):
    claim.untested("not measured in this toy")
'''


def test_baseline_flips_and_moved_figures_are_reported(pytester, monkeypatch):
    """The regression report on the toy catalogue (the gate itself: tests/test_gate.py)."""
    pytester.makepyfile(test_baselined=BASELINED)
    catalogue = write_catalogue(pytester)
    root = pytester.path / "results"
    monkeypatch.setenv("FIGURE", "10.0")
    monkeypatch.setenv("SPREAD", "1.0")
    assert run_inline(pytester, catalogue, "--claims-update-baseline").ret == pytest.ExitCode.USAGE_ERROR  # reason?
    assert run_inline(pytester, catalogue, "--claims-update-baseline", "--claims-pin-reason", "first pin").ret == 0
    data = json.loads((root / "baselines" / "default" / "smollm2-135m.json").read_text())
    pinned = data["entries"]["T-FIG/seed"]
    assert data["reason"] == "first pin" and data["commit"] == "nogit" and pinned["verdict"] == "CONFIRMED"
    assert {n: f["value"] for n, f in pinned["figures"].items()} == {
        "verdict": "CONFIRMED", "figures.figure": 10.0, "figures.spread": 1.0}  # one run: bit-for-bit
    first = run_file(root)["run"]

    quiet = run_inline(pytester, catalogue, "--claims-fail-on-regression")
    assert quiet.ret == 0, quiet.stdout.str()
    quiet.stdout.fnmatch_lines(["gate [[]plan default[]]: 4 of 4 pinned record(s) compared, 6 gated figure(s)*"])

    monkeypatch.setenv("FIGURE", "12.5")  # CONFIRMED -> REVISED, and the figure moved
    monkeypatch.setenv("SPREAD", "2.0")
    moved = run_inline(pytester, catalogue)
    assert moved.ret == 0  # reported, not failed, by default
    moved.stdout.fnmatch_lines([
        "gate [[]plan default[]]: 4 of 4 pinned record(s) compared, 6 gated figure(s)*3 moved*",
        "*T-FIG*smollm2-135m*seed*verdict*CONFIRMED*REVISED*bit-for-bit here, rel 0.0001 (other CPUs)*CONFIRMED*REVISED*nogit*",
        "*T-FIG*smollm2-135m*seed*figures.figure*10*12.5*bit-for-bit here*",
        "*reported only*",
    ])
    assert "| T-FIG | smollm2-135m | seed | figures.spread | 1 | 2 | bit-for-bit here, rel 0.0001 (other CPUs) |" \
        in (root / "latest" / "report.md").read_text()
    second = run_file(root)["run"]
    gated = run_inline(pytester, catalogue, "--claims-baseline-gate")
    assert gated.ret == pytest.ExitCode.TESTS_FAILED
    gated.stdout.fnmatch_lines(["*--claims-baseline-gate: the session fails because of these changes*"])
    assert run_inline(pytester, catalogue, "--claims-baseline-gate", "--claims-update-baseline",
                      "--claims-pin-reason", "the figure moved on purpose").ret == 0  # re-pin
    assert run_inline(pytester, catalogue, "--claims-fail-on-regression").ret == 0  # same option, nothing moved

    # The CLI re-renders a run and diffs two runs with the same comparison.
    import typer

    from engine.cli.claims import pytest_command, register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # typer runs a lone command without its name
    runner = CliRunner()
    diff = runner.invoke(app, ["diff", first, second, "--results", str(root), "--catalogue",
                               str(pytester.path / "catalogue.toml")])
    assert diff.exit_code == 0, diff.output
    assert "FLIP  T-FIG smollm2-135m [seed]: CONFIRMED -> REVISED" in diff.output
    gate = runner.invoke(app, ["diff", first, second, "--results", str(root), "--fail-on-change", "--catalogue",
                               str(pytester.path / "catalogue.toml")])
    assert gate.exit_code == 1
    same = runner.invoke(app, ["diff", second, second, "--results", str(root), "--fail-on-change"])
    assert same.exit_code == 0 and "no verdict or figure changed beyond tolerance" in same.output
    (root / "runs" / first / "report.md").unlink()
    rendered = runner.invoke(app, ["report", first, "--results", str(root)])
    assert rendered.exit_code == 0 and "| T-FIG | smollm2-135m | cpu | CONFIRMED |" in rendered.output
    assert (root / "runs" / first / "report.md").read_text() == rendered.output
    missing = runner.invoke(app, ["report", "no-such-run", "--results", str(root)])
    assert missing.exit_code == 2 and "no-such-run" in missing.output
    assert pytest_command(["-m", "cpu"])[-3:-2] == [str(Path(__file__).parents[1] / "claims")]
    assert pytest_command(["claims/test_atlas.py::test_x"])[-1] == "claims/test_atlas.py::test_x"


# ------------------------------------------------------------------------------------------------ INCONCLUSIVE

INCONCLUSIVE = '''
import numpy as np
import pytest

from engine import decisions


def _straddling():
    rng = np.random.default_rng(3)
    values = rng.standard_normal(40)
    return values - values.mean() + 0.15, [f"fam{i % 4}" for i in range(40)]  # CI spans 0 and delta


@pytest.mark.claim("T-FIG", model="smollm2-135m")
def test_undecided(claim):
    values, groups = _straddling()
    evidence = decisions.greater(values, groups, delta=0.3, label="figure gap")
    claim.record("seed", {"figure": 10.0}, holds=evidence)
    parts = {"near_zero": decisions.greater(values + 2.0, groups, delta=0.3), "all_zero": evidence}
    claim.record("rigorous", {"figure": 10.0}, holds=parts)


@pytest.mark.claim("T-FIG", model="gemma3-270m")
def test_one_protocol_of_two(claim):
    claim.record("seed", {"figure": 10.0}, holds=True)
'''


def run_subprocess(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An inner session in its own process (scipy and numpy cannot be re-imported by an inline run)."""
    return pytester.runpytest_subprocess("-p", "claims.plugin", f"--claims-results={pytester.path / 'results'}",
                                         "-p", "no:xdist", *QUIET, *args)


def test_inconclusive_is_its_own_outcome_everywhere(pytester):
    import subprocess
    import sys

    pytester.makepyfile(test_inconclusive=INCONCLUSIVE)
    catalogue = write_catalogue(pytester)
    result = run_subprocess(pytester, catalogue, "-v")
    assert outcomes(result) == {"inconclusive": 1, "failed": 1}, result.stdout.str()  # not a pass
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the test that recorded one protocol of two fails
    result.stdout.fnmatch_lines_random([
        "*test_undecided INCONCLUSIVE*",
        "*recorded no verdict for protocol(s) rigorous that the claim declares*",
        "claims: 1 CONFIRMED, 0 REVISED, 0 FAILED, 2 INCONCLUSIVE, 0 UNTESTED*",
        "decisions: 1 of 3 record(s) decided (33%), 2 INCONCLUSIVE; distinct decisions: 1 of 3 decided*",
    ])
    root = pytester.path / "results"
    records = {(r["model"], r["protocol"]): r for r in run_file(root)["records"]}
    seed = records[("smollm2-135m", "seed")]
    assert seed["verdict"] == "INCONCLUSIVE" and "straddles the decision boundary" in seed["reason"]
    assert seed["n_to_decide"] and seed["n_to_decide"] > 10 and seed["catalogue_sha256"]
    assert len(seed["evidence"][0]["data"]["values"]) == 40  # the per-example data the decision used
    rigorous = records[("smollm2-135m", "rigorous")]
    assert rigorous["verdict"] == "INCONCLUSIVE" and "all_zero" in rigorous["reason"]
    assert [r["verdict"] for r in results.read_registry(root)].count("INCONCLUSIVE") == 2
    report = (root / "latest" / "report.md").read_text()
    assert "INCONCLUSIVE" in report and "power projection" in report and "Catalogue sha256" in report

    recomputed = subprocess.run([sys.executable, "-c", "from engine.cli import app; app()", "report", "--recompute",
                                 "--results", str(root), "--catalogue", catalogue.split("=", 1)[1]],
                                capture_output=True, text=True)
    assert recomputed.returncode == 0, recomputed.stdout + recomputed.stderr
    assert "2 verdict(s) recomputed identically, 0 differ" in recomputed.stdout

    strict = run_subprocess(pytester, catalogue, "--claims-strict", "-k", "undecided")
    assert outcomes(strict) == {"failed": 1, "deselected": 1}
    strict.stdout.fnmatch_lines(["*INCONCLUSIVE (fails under --claims-strict)*"])


def test_a_recomputed_verdict_that_differs_is_reported(tmp_path):
    from engine import decisions
    from engine.verdicts import parse_catalogue, recompute

    claim = parse_catalogue(TEST_CATALOGUE)["T-FIG"]
    recorder = Recorder(Target(claim=claim, model="gemma3-270m", tier="cpu"))
    values = [1.0 + 0.01 * i for i in range(40)]
    groups = [f"fam{i % 4}" for i in range(40)]
    record = recorder.record("seed", {"figure": 1.0}, holds=decisions.greater(values, groups, delta=0.3))
    assert record.verdict is Verdict.CONFIRMED and recompute(record, claim) is Verdict.CONFIRMED
    record.evidence[0]["data"]["values"] = [0.001 * i for i in range(40)]  # the stored data says otherwise now
    assert recompute(record, claim) is Verdict.FAILED


PLANNED = '''
import pytest

from claims.plugin import record_both
from engine.studies import atlas as A
from engine.studies.findings import Finding


@pytest.mark.claim("T-FIG", model="smollm2-135m")
def test_planned(claim):
    sizes = A.sizes_for(claim.tier, claim.params, claim.plan)  # the session's --plan, from its run settings
    seed = Finding("seed", {"figure": 10.0, "per_family": sizes.rigorous_per_family}, holds=True)
    rigorous = Finding("rigorous", {"figure": 10.0}, holds=True)
    record_both(claim, seed, rigorous)
'''


@pytest.mark.parametrize("plan", [None, "smoke"])
def test_the_plan_option_reaches_the_sizes_and_every_record(pytester, plan):
    pytester.makepyfile(test_planned=PLANNED)
    result = run_subprocess(pytester, write_catalogue(pytester), *(["--plan", plan] if plan else []))
    assert result.ret == 0, result.stdout.str()
    records = run_file(pytester.path / "results")["records"]
    assert {r["plan"] for r in records} == {plan or "default"}


def test_an_unknown_plan_is_a_usage_error(pytester):
    pytester.makepyfile(test_planned=PLANNED)
    result = run_subprocess(pytester, write_catalogue(pytester), "--plan", "nowhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--plan nowhere: no such plan in engine/data/plans.toml (plans: default, smoke*"])
