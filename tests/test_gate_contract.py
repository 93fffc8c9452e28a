"""Issue #25, items 1 and 3: the gate is a schema-checked contract, and run files are written whatever happens.

Every tampered-baseline variant of the issue's fault injection fails (each one re-signed with a valid sha256, so
the schema and the gate catch it, not the checksum alone); the records a gate expects come from the catalogue and
the plan; a session that is interrupted, hits an internal error or cannot write its registry or claims.json still
writes its run files, marked incomplete, never moves ``latest`` and cannot be pinned.

Toy catalogue (tests/test_gate.py's ``G-EV``) and constructed measurements only: no model is loaded. The pytest
sessions run in process (everything they import is imported here first), so the file stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_gate import CATALOGUE, GATED, QUIET, cli

from engine import decisions, models, plans, results  # noqa: F401  (models: the inner sessions' collection)
from engine.verdicts import Recorder, Target, load_catalogue, parse_catalogue

pytest_plugins = ["pytester"]

MODELS = ("smollm2-135m", "gemma3-270m")
PROTOCOLS = ("seed", "rigorous")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")


# ------------------------------------------------------------------------------------------------ helpers


def record(model: str = "smollm2-135m", protocol: str = "seed", offset: float = 0.5):
    """One evidence-decided G-EV record (offset 0.5: CONFIRMED, -0.5: FAILED)."""
    claim = parse_catalogue(CATALOGUE)["G-EV"]
    i = np.arange(20)
    values = offset + 0.1 * (i % 5)
    evidence = decisions.greater(values, [f"fam{k % 2}" for k in i], delta=0.05, label="A - B", n_resamples=200)
    recorder = Recorder(Target(claim=claim, model=model, tier="cpu"), git_commit="abc123", test="t::x")
    return recorder.record(protocol, {"train_seconds": 1.0, "gap": float(values.mean())}, holds=evidence,
                           plan="smoke")


def every_record(offset: float = 0.5) -> list:
    return [record(m, p, offset) for m in MODELS for p in PROTOCOLS]


def run_of(records, name: str = "r1") -> results.Run:
    return results.Run(name, {"git_commit": "abc123", "plan": "smoke", "machine": "m", "cpu_count": 2},
                       list(records))


def declared() -> set:
    return results.declared_records(parse_catalogue(CATALOGUE), "smoke")


def pin(where: Path, *runs: results.Run) -> Path:
    results.pin_plan_baselines(where, "smoke", list(runs) or [run_of(every_record())], "toy pin")
    return where / "smoke"


def tamper(path: Path, change, *, resign: bool = True) -> None:
    """Edit a baseline file; re-sign it (a valid sha256 over the edited entries) unless told not to, so what
    catches the edit is the schema or the gate, not the checksum."""
    data = json.loads(path.read_text())
    change(data)
    if resign:
        text = json.dumps(data["entries"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        import hashlib

        data["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def each_figure(data):
    for entry in data["entries"].values():
        yield from entry["figures"].values()


def refused(where: Path, match: str) -> str:
    with pytest.raises(results.BaselineError, match=match) as info:
        results.load_plan_baselines(where, "smoke")
    message = str(info.value)
    assert "\n" not in message and "re-pin it with `mi-atlas baselines pin`" in message
    return message


# ------------------------------------------------------------------------------------------------ the contract


def test_the_committed_smoke_baselines_hold_the_contract_and_pass_their_own_run():
    """What CI gates against: signed, valid, exactly the records the catalogue and the smoke plan declare, and
    the run they were pinned from passes the gate with every new check."""
    baselines = REPO / "results" / "baselines"
    sources = set()
    for path in results.baseline_files(baselines, "smoke"):
        data = json.loads(path.read_text())
        assert data["sha256"] == results.entries_sha256(data["entries"])
        sources.update(r["run"] for r in data["runs"])
    pinned = results.load_plan_baselines(baselines, "smoke")
    expected = results.declared_records(load_catalogue(), "smoke")
    assert set(pinned) == expected
    for name in sorted(sources):  # a pinned run kept under results/runs gates as it was pinned
        if not (REPO / "results" / results.RUNS_DIR / name / results.RUN_FILE).is_file():
            continue
        report = results.gate(pinned, results.load_run(REPO / "results", name).records, plan="smoke",
                              declared=expected)
        if len(sources) == 1:
            assert report.passed, "\n".join(report.lines()[:20])
            assert (report.compared, report.expected, report.not_pinned) == (len(expected), len(expected), [])


def test_a_pin_writes_a_sha256_of_its_entries_and_an_edit_or_its_absence_is_refused(tmp_path):
    path = pin(tmp_path) / "smollm2-135m.json"
    data = json.loads(path.read_text())
    assert data["sha256"] == results.entries_sha256(data["entries"])
    assert set(results.load_plan_baselines(tmp_path, "smoke")) == declared()

    def shift(data):  # a consistent edit (value and runs moved together): only the checksum can tell
        figure = data["entries"]["G-EV/seed"]["figures"]["evidence[A - B].estimate"]
        figure["value"] += 1000
        figure["runs"] = [v + 1000 for v in figure["runs"]]

    tamper(path, shift, resign=False)
    refused(tmp_path, "do not match its sha256")
    tamper(path, lambda d: d.pop("sha256"), resign=False)
    refused(tmp_path, "no sha256")
    # re-signed, the same edit loads (the schema holds) and the gate names the moved figure
    tamper(path, lambda d: None)
    report = results.gate(results.load_plan_baselines(tmp_path, "smoke"), every_record(), plan="smoke",
                          declared=declared())
    assert not report.passed
    assert {(c.model, c.figure) for c in report.changes} >= {("smollm2-135m", "evidence[A - B].estimate")}


def test_every_tolerance_infinity_and_every_value_plus_1000_is_refused(tmp_path):
    path = pin(tmp_path) / "smollm2-135m.json"

    def widen(data):
        for figure in each_figure(data):
            figure["tolerance"] = float("inf")
            if isinstance(figure["value"], float):
                figure["value"] += 1000
                figure["runs"] = [v + 1000 for v in figure["runs"]]

    tamper(path, widen)
    assert "Infinity" in path.read_text()
    refused(tmp_path, "non-finite number Infinity")
    # 1e400 is infinite too once parsed; a finite 1e300 does not follow from the runs it was pinned from
    path.write_text(path.read_text().replace("Infinity", "1e400"))
    refused(tmp_path, "non-finite number inf")
    tamper(path, lambda d: [f.update(tolerance=1e300) for f in each_figure(d)])
    refused(tmp_path, "do not follow from its pinned runs")
    nan = pin(tmp_path / "nan") / "smollm2-135m.json"
    nan.write_text(nan.read_text().replace('"tolerance": 0.0', '"tolerance": NaN', 1))
    refused(tmp_path / "nan", "non-finite number NaN")


def test_a_tolerance_written_as_a_string_is_refused(tmp_path):
    path = pin(tmp_path) / "gemma3-270m.json"
    tamper(path, lambda d: d["entries"]["G-EV/rigorous"]["figures"]["evidence[A - B].estimate"].update(
        tolerance="1e300"))
    message = refused(tmp_path, r"tolerance '1e300' is not a finite number >= 0")
    assert "gemma3-270m.json" in message and "entry G-EV/rigorous" in message


@pytest.mark.parametrize("change, match", [
    (lambda e: e.update({"G-EV/seed": ["not", "an", "entry"]}), "an entry must be an object, not list"),
    (lambda e: e["G-EV/seed"].update(figures=[1, 2]), "figures must be an object"),
    (lambda e: e["G-EV/seed"].update(verdict=3), "verdict 3 is not one of"),
    (lambda e: e["G-EV/seed"].pop("verdict"), "verdict None is not one of"),
    (lambda e: e["G-EV/seed"]["figures"].update(verdict="CONFIRMED"), "a figure must be an object, not str"),
    (lambda e: e["G-EV/seed"]["figures"]["evidence[A - B].ci_low"].update(runs=0.3), "'runs' must be a non-empty"),
    (lambda e: e["G-EV/seed"]["figures"]["evidence[A - B].ci_low"].update(tolerance=[0.1]), "tolerance \\[0.1\\]"),
    (lambda e: e["G-EV/seed"]["figures"]["evidence[A - B].ci_low"].update(value={"a": 1}), "is not a figure"),
    (lambda e: e["G-EV/seed"]["figures"]["evidence[A - B].ci_low"].update(delta="0.05"), "delta '0.05'"),
    (lambda e: e.update({"G-EV-seed": e.pop("G-EV/seed")}), "is not CLAIM/protocol"),
    (lambda e: e["G-EV/seed"].update(reported=[]), "reported must be an object"),
], ids=["entry-list", "figures-list", "verdict-int", "no-verdict", "figure-str", "runs-float", "tolerance-list",
        "value-dict", "delta-str", "key", "reported-list"])
def test_a_wrong_typed_entry_is_refused_when_read_in_one_line(tmp_path, change, match):
    path = pin(tmp_path) / "smollm2-135m.json"
    tamper(path, lambda d: change(d["entries"]))
    refused(tmp_path, match)


def test_file_level_fields_are_checked(tmp_path):
    path = pin(tmp_path) / "smollm2-135m.json"
    original = path.read_text()
    for change, match in [(lambda d: d.update(entries=[]), "'entries' must be a non-empty object"),
                          (lambda d: d.update(runs="r1"), "'runs' must be a non-empty list"),
                          (lambda d: d.update(model="gemma3-270m"), "is named smollm2-135m.json"),
                          (lambda d: d.update(reason=7), "'reason' must be non-empty text"),
                          (lambda d: d.update(extra=1), r"unknown field\(s\) \['extra'\]")]:
        path.write_text(original)
        tamper(path, change)
        refused(tmp_path, match)
    path.write_text("[1, 2]")
    refused(tmp_path, "a JSON object expected")


def test_a_deleted_model_file_or_a_deleted_record_fails_the_gate(tmp_path):
    where = pin(tmp_path)
    (where / "gemma3-270m.json").unlink()
    pinned = results.load_plan_baselines(tmp_path, "smoke")
    report = results.gate(pinned, every_record(), plan="smoke", declared=declared())
    assert not report.passed and report.expected == 4 and report.compared == 2
    assert report.not_pinned == [("G-EV", "gemma3-270m", "rigorous"), ("G-EV", "gemma3-270m", "seed")]
    assert report.unpinned == []  # declared records are never "new"
    text = "\n".join(report.lines())
    assert "2 not pinned" in text and "have no baseline (model(s) gemma3-270m)" in text
    assert ["G-EV", "gemma3-270m", "rigorous", "(record)", "not pinned", "declared"] == report.table()[1][0][:6]

    where = pin(tmp_path / "one")
    tamper(where / "smollm2-135m.json", lambda d: d["entries"].pop("G-EV/rigorous"))
    report = results.gate(results.load_plan_baselines(tmp_path / "one", "smoke"), every_record(), plan="smoke",
                          declared=declared())
    assert not report.passed and report.not_pinned == [("G-EV", "smollm2-135m", "rigorous")]


def test_emptied_figures_with_flipped_verdicts_are_refused_or_fail(tmp_path):
    """The pinned run FAILED; the tampered baselines say CONFIRMED with their figures emptied, and the run's
    verdicts were flipped to CONFIRMED."""
    where = pin(tmp_path, run_of(every_record(offset=-0.5)))
    assert {e["verdict"] for e in results.load_plan_baselines(tmp_path, "smoke").values()} == {"FAILED"}

    def empty(data):
        for entry in data["entries"].values():
            entry.update(verdict="CONFIRMED", figures={})

    for path in where.glob("*.json"):
        tamper(path, empty)
    refused(tmp_path, "figures must be an object holding at least the pinned 'verdict'")

    def verdict_only(data):  # keep a consistent verdict figure and nothing else
        for entry in data["entries"].values():
            entry.update(verdict="CONFIRMED", figures={"verdict": results.pinned_figure(["CONFIRMED"])})

    for path in where.glob("*.json"):
        tamper(path, verdict_only)
    report = results.gate(results.load_plan_baselines(tmp_path, "smoke"), every_record(offset=0.5), plan="smoke",
                          declared=declared())
    assert not report.passed and report.compared == 4
    assert {c.figure for c in report.changes} == {"evidence[A - B].outcome", "evidence[A - B].estimate",
                                                  "evidence[A - B].ci_low", "evidence[A - B].ci_high"}
    assert {c.tolerance for c in report.changes} == {"not pinned: re-pin"}

    def mismatched(data):  # the entry's verdict and its pinned verdict figure disagree
        data["entries"]["G-EV/seed"]["verdict"] = "CONFIRMED"

    pin(tmp_path, run_of(every_record(offset=-0.5)))
    tamper(where / "smollm2-135m.json", mismatched)
    refused(tmp_path, "verdict CONFIRMED differs from its pinned verdict figure FAILED")


def test_a_tolerance_reaching_its_decisions_delta_fails_the_gate_recomputed_from_the_run(tmp_path):
    runs = [run_of(every_record(offset), name=f"r{k}") for k, offset in enumerate((0.50, 0.56))]
    pin(tmp_path, *runs)  # the estimates' spread 0.06 >= delta 0.05: flagged by the pin ...
    pinned = results.load_plan_baselines(tmp_path, "smoke")
    report = results.gate(pinned, every_record(0.53), plan="smoke", declared=declared())
    assert report.flags and not [c for c in report.changes if c.kind != "swamped"]  # every value within
    assert not report.passed  # ... and failed by the gate
    swamped = [c for c in report.changes if c.kind == "swamped"]
    assert {c.figure for c in swamped} >= {"evidence[A - B].estimate"}
    assert "reaches the decision's delta 0.05" in swamped[0].tolerance and "WIDE" in swamped[0].describe()

    for path in (tmp_path / "smoke").glob("*.json"):  # the delta removed from the file: the run's own decides
        tamper(path, lambda d: [f.pop("delta", None) for f in each_figure(d)])
    report = results.gate(results.load_plan_baselines(tmp_path, "smoke"), every_record(0.53), plan="smoke",
                          declared=declared())
    assert not report.passed and any(c.kind == "swamped" for c in report.changes)


# ------------------------------------------------------------------------------------------------ run files


def test_a_short_registry_write_leaves_no_torn_line(tmp_path, monkeypatch):
    results.append_registry(tmp_path, record())
    before = (tmp_path / results.REGISTRY_FILE).read_bytes()
    real_write = os.write

    def half(fd, data):
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", half)
    with pytest.raises(OSError, match="short write"):
        results.append_registry(tmp_path, record(protocol="rigorous"))
    monkeypatch.setattr(os, "write", real_write)
    assert (tmp_path / results.REGISTRY_FILE).read_bytes() == before
    results.append_registry(tmp_path, record(protocol="rigorous"))
    assert [line["protocol"] for line in results.read_registry(tmp_path)] == ["seed", "rigorous"]


def test_latest_pointing_outside_runs_is_not_followed(tmp_path):
    root = tmp_path / "results"
    (root / "runs" / "ok").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "latest").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="points outside .*runs .*not followed"):
        results.run_dir(root)
    checked = cli("baselines", "check", "--plan", "smoke", "--results", str(root), "--baselines", str(REPO /
                  "results" / "baselines"))
    assert checked.exit_code == 2 and checked.output.count("\n") == 1 and "not followed" in checked.output
    (root / "latest").unlink()
    (root / "latest").write_text("../../elsewhere\n")
    with pytest.raises(ValueError, match="not followed"):
        results.run_dir(root)
    (root / "latest").write_text("ok\n")
    assert results.run_dir(root) == root / "runs" / "ok"


def test_an_incomplete_run_is_written_without_moving_latest_and_cannot_be_pinned(tmp_path):
    root = tmp_path / "results"
    complete = results.reserve_run_dir(root, "abc123")
    assert results.write_run(complete, run_of(every_record(), name=complete.name)) == []
    assert results.run_dir(root) == complete.resolve()
    partial = results.reserve_run_dir(root, "abc123")
    run = run_of(every_record()[:1], name=partial.name)
    results.mark_incomplete(run, "interrupted")
    assert results.write_run(partial, run) == []
    assert results.run_dir(root) == complete.resolve()  # latest did not move
    loaded = results.load_run(root, partial.name)
    assert loaded.meta["incomplete"] and loaded.meta["incomplete_reasons"] == ["interrupted"]
    assert "**Incomplete run** (interrupted)" in (partial / results.REPORT_FILE).read_text()
    with pytest.raises(results.BaselineError, match="is incomplete \\(interrupted\\): pin complete runs only"):
        results.pin_plan_baselines(tmp_path / "b", "smoke", [loaded], "why")


# ------------------------------------------------------------------------------------------------ pytest sessions

FAULTS = '''
import os

import pytest

from engine import results


def pytest_configure(config):
    if os.environ.get("FAULT") == "claims-write":  # a full disk, for claims.json only
        real = results.write_atomic

        def full(path, data, **kwargs):
            if str(path).endswith(results.RUN_FILE):
                raise OSError(28, "No space left on device")
            return real(path, data, **kwargs)

        results.write_atomic = full
        config.add_cleanup(lambda: setattr(results, "write_atomic", real))


def pytest_runtest_logfinish(nodeid):
    if nodeid.endswith("test_both") and os.environ.get("FAULT") == "interrupt":
        raise KeyboardInterrupt
    if nodeid.endswith("test_both") and os.environ.get("FAULT") == "internal":
        raise RuntimeError("a planted internal error")
'''


@pytest.fixture
def toy(pytester, monkeypatch):
    pytester.makepyfile(test_gated=GATED)
    pytester.makeconftest(FAULTS)
    (pytester.path / "cat.toml").write_text(CATALOGUE)
    for key, value in {"OFFSET": "0.5", "NOISE": "0", "SECONDS": "1", "FAULT": ""}.items():
        monkeypatch.setenv(key, value)

    def session(root: Path, *args: str, fault: str = "") -> pytest.RunResult:
        monkeypatch.setenv("FAULT", fault)
        return pytester.runpytest_inprocess("-p", "claims.plugin", f"--claims-catalogue={pytester.path / 'cat.toml'}",
                                            f"--claims-results={root}", "--plan", "smoke", *QUIET, *args,
                                            no_reraise_ctrlc=True)

    return session


def run_file(root: Path) -> dict:
    (directory,) = (root / results.RUNS_DIR).iterdir()
    return json.loads((directory / results.RUN_FILE).read_text())


def test_the_gate_refuses_bad_baselines_at_session_start_in_one_line(toy, tmp_path):
    baselines = pin(tmp_path / "baselines")
    gate = ("--claims-baseline-gate", f"--claims-baselines={tmp_path / 'baselines'}")
    tamper(baselines / "smollm2-135m.json", lambda d: d["entries"]["G-EV/seed"].update(figures="x"))
    wrong = toy(tmp_path / "r1", *gate)
    assert wrong.ret == pytest.ExitCode.USAGE_ERROR
    wrong.stderr.fnmatch_lines(["ERROR: --claims-baseline-gate: *smollm2-135m.json: not a format-2 baseline file "
                                "(entries: entry G-EV/seed: figures must be an object*"])
    assert not (tmp_path / "r1").exists()  # nothing ran

    pin(tmp_path / "baselines")
    (baselines / "gemma3-270m.json").unlink()
    deleted = toy(tmp_path / "r2", *gate)
    assert deleted.ret == pytest.ExitCode.USAGE_ERROR
    deleted.stderr.fnmatch_lines(["ERROR: --claims-baseline-gate: the baselines of plan 'smoke' under * lack 2 "
                                  "record(s) the catalogue declares (e.g. G-EV gemma3-270m [[]rigorous[]]; no file "
                                  "gemma3-270m.json): re-pin them with `mi-atlas baselines pin*"])
    assert not (tmp_path / "r2").exists()

    (tmp_path / "a-file").write_text("x")
    for option in ("--claims-results", "--claims-baselines"):
        result = toy(tmp_path / "r3", f"{option}={tmp_path / 'a-file'}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"ERROR: {option} *a-file: is a file, not a directory"])
    assert not (tmp_path / "r3").exists()


def test_an_unwritable_registry_is_one_warning_and_an_incomplete_run_that_pin_refuses(toy, tmp_path):
    root = tmp_path / "results"
    (root / results.REGISTRY_FILE).mkdir(parents=True)  # not a file: every append fails
    result = toy(root)
    assert result.ret == pytest.ExitCode.OK
    out = result.stdout.str()
    assert "INTERNALERROR" not in out and "Traceback" not in out
    assert out.count("registry.jsonl: verdicts not appended") == 1
    result.stdout.fnmatch_lines(["warning: *registry.jsonl: verdicts not appended (IsADirectoryError*): the run is "
                                 "marked incomplete",
                                 "run INCOMPLETE (write error: registry append failed*): latest not moved*"])
    data = run_file(root)
    assert len(data["records"]) == 4 and data["meta"]["incomplete"]
    assert not (root / results.LATEST).exists()
    (directory,) = (root / results.RUNS_DIR).iterdir()
    refused_pin = cli("baselines", "pin", "--plan", "smoke", "--reason", "x", "--baselines",
                      str(tmp_path / "b"), str(directory))
    assert refused_pin.exit_code == 2 and refused_pin.output.count("\n") == 1
    assert "is incomplete (write error: registry append failed" in refused_pin.output


@pytest.mark.parametrize("fault, reason", [("interrupt", "interrupted"),
                                           ("internal", "internal error during the session")])
def test_an_interrupted_or_crashed_session_writes_its_records_so_far_marked_incomplete(toy, tmp_path, fault,
                                                                                     reason):
    root = tmp_path / "results"
    complete = toy(root, "-k", "test_both")
    assert complete.ret == 0
    first = results.run_dir(root)
    broken = toy(root, fault=fault)
    assert broken.ret == (pytest.ExitCode.INTERRUPTED if fault == "interrupt" else pytest.ExitCode.INTERNAL_ERROR)
    (latest_run,) = [d for d in (root / results.RUNS_DIR).iterdir() if d != first]
    data = json.loads((latest_run / results.RUN_FILE).read_text())
    assert [(r["model"], r["protocol"]) for r in data["records"]] == [("smollm2-135m", "seed"),
                                                                      ("smollm2-135m", "rigorous")]
    assert data["meta"]["incomplete"] and data["meta"]["incomplete_reasons"] == [reason]
    assert f"**Incomplete run** ({reason})" in (latest_run / results.REPORT_FILE).read_text()
    assert results.run_dir(root) == first  # latest stays on the complete run
    assert len(results.read_registry(root)) == 4  # whole lines: 2 per session


def test_a_run_file_that_cannot_be_written_leaves_the_report_marked_incomplete_and_latest_unmoved(toy, tmp_path):
    root = tmp_path / "results"
    result = toy(root, fault="claims-write")
    assert result.ret == pytest.ExitCode.OK
    out = result.stdout.str()
    assert "INTERNALERROR" not in out and "Traceback" not in out
    result.stdout.fnmatch_lines(["error: *claims.json: not written (OSError: [[]Errno 28[]] No space left on device)",
                                 "run INCOMPLETE (write error: claims.json not written*): latest not moved*"])
    (directory,) = (root / results.RUNS_DIR).iterdir()
    assert not (directory / results.RUN_FILE).exists()
    assert "**Incomplete run** (write error: claims.json not written" in (directory / results.REPORT_FILE).read_text()
    assert not (root / results.LATEST).exists()
    rebuilt = results.load_run(root, directory.name)  # from its registry lines: interrupted, never pinned
    assert rebuilt.meta["interrupted"] and len(rebuilt.records) == 4


def test_a_resumed_run_lists_every_parts_wall_time_and_refuses_a_run_it_cannot_resume(toy, tmp_path):
    """An interrupted plan is resumed with --claims-resumes RUN (its measurements from the cache): the new run's meta
    lists each part (run, commit, start, wall time) and their sum; a finished run, another plan's or no run is a
    one-line usage error before anything runs."""
    root = tmp_path / "results"
    broken = toy(root, fault="interrupt")
    assert broken.ret == pytest.ExitCode.INTERRUPTED
    (first,) = (root / results.RUNS_DIR).iterdir()
    part1 = json.loads((first / results.RUN_FILE).read_text())["meta"]
    resumed = toy(root, "--claims-resumes", first.name)
    assert resumed.ret == pytest.ExitCode.OK
    (second,) = [d for d in (root / results.RUNS_DIR).iterdir() if d != first]
    meta = json.loads((second / results.RUN_FILE).read_text())["meta"]
    assert [p["run"] for p in meta["parts"]] == [first.name, second.name]
    assert meta["parts"][0]["duration_s"] == part1["duration_s"]
    assert meta["wall_s_total"] == round(part1["duration_s"] + meta["duration_s"], 1)
    for name, why in ((second.name, "that run finished"), ("no-such-run", "is not a run's claims file")):
        refused = toy(root, "--claims-resumes", name)
        assert refused.ret == pytest.ExitCode.USAGE_ERROR
        refused.stderr.fnmatch_lines([f"ERROR: --claims-resumes {name}: *{why}*"])
    other = toy(root, "--claims-resumes", first.name, "--plan", "default")
    assert other.ret == pytest.ExitCode.USAGE_ERROR
    other.stderr.fnmatch_lines([f"ERROR: --claims-resumes {first.name}: that run is of plan 'smoke'*"])
