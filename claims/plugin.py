"""The MI-Atlas pytest plugin: claim markers, the ``claim`` fixture, verdict outcomes, summary and result files.

Loaded by the root ``conftest.py`` (``pytest_plugins = ["claims.plugin"]``); elsewhere ``-p claims.plugin``.

Claims are rows
---------------
Every ``[[claim]]`` row of the catalogue names a rule template (``engine.templates``) or a procedure, and is
collected by the one generic test ``claims/test_claims.py`` (:func:`pytest_generate_tests` gives it one ``row``
param per row and target, marked ``claim(id, model=...)`` and with the row's ``marks``)::

    def test_claim(claim, row, load_model):
        seed, rigorous = templates.run(claim.context, load_model)   # the row's template: specs, then decision
        record_both(claim, seed, rigorous)

The run's settings (``--plan``, ``--claims-results``, ``--claims-baselines``) are one
:class:`~engine.settings.RunSettings` (:func:`settings`), which ``claim.context`` hands to the template.

Writing a claim test of your own
--------------------------------
A claim test names its claim and model once; tier, scale and block markers follow from the catalogue
(``engine/data/claims.toml``) and the model registry (``engine/data/models.toml``)::

    import pytest
    from claims.plugin import claim_params

    @pytest.mark.parametrize("model", claim_params("HUB-SEEDS"))   # every model of the claim, both tiers
    def test_hub_is_stable_across_seeds(claim, model, load_model):
        lm = load_model(model)                                     # claims/conftest.py
        ...measure with the engine...
        claim.record(protocol="seed", figures={"hub_std": std, "hubs": hubs}, holds=std == 0,
                     seeds=[42, 137, 256], suite_hash=suite.hash)
        claim.record(protocol="rigorous", figures={...}, holds=..., ci={"gap": (lo, hi)}, seeds=[...])

or one model: ``@pytest.mark.claim("HUB-SEEDS", model="smollm2-135m")`` (a multi-model claim names its models as
a list or joined with "+": ``model=["qwen2.5-coder-0.5b", "qwen2.5-0.5b"]``).

* ``claim_params(claim_id, models=None, *, protocols=None)``: one ``pytest.param(model)`` per target, each marked
  ``claim(claim_id, model=...)``, id = the model key. Default targets: the claim's gpu-tier models, then its
  cpu-tier targets (each cpu model, or all cpu models "+"-joined for a multi-model claim). ``protocols=("seed",)``
  restricts the test to some protocols (for a claim whose seed and rigorous measurements are separate tests).
* ``@pytest.mark.claim(claim_id, model=..., protocols=...)``: the same for one target.
* ``record_both(claim, seed, rigorous)``: record the two :class:`~engine.studies.findings.Finding` objects a claim
  study returns (seed first, with the plan that sized them): every claim test ends with it.
* The ``claim`` fixture (an ``engine.verdicts.Recorder``):
    - ``claim.record(protocol, figures, holds, *, key=None, expectation=None, seeds=(), suite_hash=None,
      ci=None, notes="", revised=False, reason="") -> VerdictRecord``, once per protocol. ``figures``: name ->
      number / list / dict / str (numpy and torch values are converted; NaN is an error). ``holds``: the claim's
      rule holds (False = its falsifier fired -> FAILED). ``key``: the figure compared with the seed's figure
      (default: the catalogue's ``key``; when the seed gives one for this model, the test must report it).
      ``ci``: figure -> (low, high). ``revised=True, reason=...``: a documented revision -> REVISED.
    - ``claim.untested(reason, protocols=None)``: UNTESTED for the protocols not yet recorded, and skips the test.
      A plain ``pytest.skip(reason)`` in the test or a fixture does the same (a leading "UNTESTED: " is dropped).
    - read-only: ``claim.claim`` (the catalogue row: ``id``, ``statement``, ``rule``, ``key``, ...),
      ``claim.model`` (registry key or "+"-joined keys), ``claim.models`` (tuple of keys), ``claim.tier``
      ("cpu" | "gpu"), ``claim.params`` (the row's ``[claim.params]``: thresholds the rule uses; thresholds live
      there, not in tests), ``claim.seed_figures`` (the seed's figures for this model; empty on the cpu tier),
      ``claim.unrecorded`` (protocols still without a verdict), ``claim.plan`` (the plan sizing this claim) and
      ``claim.context`` (the row on this target under the run's settings, for ``engine.templates``).
  Each record carries claim id, model, tier, protocol, figures, CIs, expectation, tolerance, seeds, suite hash,
  engine version, git commit, duration (seconds since the previous record, the first from test set-up) and test id.

Outcomes
--------
CONFIRMED passes; FAILED fails with the figures in the message; REVISED passes with the status word REVISED and a
``ClaimRevisedWarning`` (fails under ``--claims-strict``); INCONCLUSIVE is not a pass: its own status word, letter
``I`` and count in the summary (fails under ``--claims-strict``); UNTESTED is a skip whose reason starts with
"UNTESTED:". A test that records fewer protocols than it declares fails, naming the missing ones.
A gpu-tier claim without CUDA (unless ``--allow-cpu-gpu-tier``) or without its weights is UNTESTED before any
fixture runs, so it is listed in the table, never silently absent. A claim test that records nothing fails; an
exception in a claim test is an error, as in any test.

Markers (registered here, in one place): ``gpu``, ``cpu``, ``slow``, ``bench``, ``claim``, one scale marker per
model size from the catalogue's ``[scales]`` (``scale_135m``, ``scale_270m``, ``scale_05b``, ``scale_15b``,
``scale_3b``, ``scale_17b``) and one per block (``atlas``, ``lora``, ``steer``, ``quant``). Claim tests get theirs
derived at collection, before ``-m`` is applied: ``pytest -m "gpu and scale_05b"`` selects the 0.5B gpu claims,
``pytest claims -m cpu`` the cpu tier. Mark a long claim test ``slow`` yourself.

xdist: verdict records travel on the test reports (attribute ``claim_records``, serialised with the report), so
the controller alone appends them to ``registry.jsonl``, prints the summary table and writes the run files.

Results (``--claims-results DIR``, default ``<rootdir>/results``): ``runs/<timestamp>-<commit>/claims.json`` and
``report.md``, ``latest``, ``registry.jsonl`` (one locked, fsynced line per verdict as it arrives). Baselines are
read from ``--claims-baselines DIR`` (default ``<results root>/baselines``): ``<plan>/<model>.json`` per plan.
JUnit XML (``--junitxml``) gets ``verdict[ID|model|protocol]`` and ``claim_record``
properties per test case.

Regressions: every run is compared with the baselines of its plan (``--plan``, default ``default``):
``<baselines>/<plan>/<model>.json`` (``engine.results``: gated figures = each record's verdict and each decision's
outcome, estimate and CI bounds; timings and memory are reported, never gated; each gated figure reproduces
bit-for-bit or within the tolerance its spread across the pinned runs gave). A verdict flip, a figure moved
beyond its tolerance or a pinned record not measured is reported in the summary and in report.md with the commit
it was pinned at, but it does not fail the session unless ``--claims-baseline-gate`` (alias
``--claims-fail-on-regression``) is given. Why: each verdict already fails or passes its own test, and a figure
that moves after a deliberate method change is information for a researcher, not a broken build. CI opts in:
``pytest claims -m cpu --plan smoke --claims-baseline-gate --claims-results $TMP --claims-baselines
results/baselines`` exits 1 on any flip, moved figure or missing record, and is a usage error (one line, before
anything runs) when the plan has no baselines. Re-pinning is deliberate and needs a reason:
``mi-atlas baselines pin --plan smoke --reason "..." RUN_DIR [RUN_DIR ...]`` (several runs: spread ->
tolerance), or ``--claims-update-baseline --claims-pin-reason "..."`` (this run alone: bit-for-bit; it never fails
on the changes it pins).
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from engine import planner, plans, results, verdicts
from engine.settings import RunSettings
from engine.studies.findings import Finding
from engine.verdicts import GROUP_SEP, Catalogue, ClaimError, Recorder, Target, Verdict, VerdictRecord

BASE_MARKERS = {
    "gpu": "gpu tier: the seed's own models and figures (UNTESTED without CUDA or the weights)",
    "cpu": "cpu tier: the claim's rule on the embedded real models",
    "slow": "takes minutes; deselect with -m 'not slow'",
    "bench": "a benchmark (pytest-benchmark; run without xdist)",
    "claim(id, model=..., protocols=...)": "a claim test: catalogue id and registry model key "
                                            "(or keys joined with '+'); tier/scale/block markers are derived",
}

CATALOGUE = pytest.StashKey[Catalogue]()
SETTINGS = pytest.StashKey[RunSettings]()
RECORDER = pytest.StashKey[Recorder]()
TARGET = pytest.StashKey[Target]()
_PLAN: list[str] = [plans.DEFAULT_PLAN]  # the session's plan (set by pytest_configure): claim_params' cpu models
REPORTED = pytest.StashKey[int]()
EXECUTOR = pytest.StashKey[object]()  # this process's measurement executor (--executor ray)
PREVIOUS_EXECUTOR = pytest.StashKey[object]()
RESUMED_PARTS = pytest.StashKey[list]()  # --claims-resumes: the earlier parts of this run (their run ids and wall times)


# ------------------------------------------------------------------------------------------------ options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mi-atlas claims")
    group.addoption("--claims-results", metavar="DIR", default=None,
                    help="results root for runs, registry and baselines (default: <rootdir>/results)")
    group.addoption("--claims-catalogue", metavar="FILE", default=None,
                    help="claims catalogue TOML (default: the packaged engine/data/claims.toml)")
    group.addoption("--claims-file", metavar="FILE", default=None,
                    help="a researcher's own claims file (TOML rows run by the rule templates, about registry models "
                         "or local model directories): run its claims instead of the catalogue's (README, 'Write "
                         "your own claim')")
    group.addoption("--with-catalogue", action="store_true",
                    help="with --claims-file: run the catalogue's claims too")
    group.addoption("--claims-strict", action="store_true",
                    help="a REVISED or INCONCLUSIVE verdict fails its test")
    group.addoption("--claims-baselines", metavar="DIR", default=None,
                    help="where baselines are read and pinned: <DIR>/<plan>/<model>.json (default: "
                         "<results root>/baselines)")
    group.addoption("--claims-update-baseline", action="store_true",
                    help="re-pin the session plan's baselines from this run alone (bit-for-bit; needs "
                         "--claims-pin-reason)")
    group.addoption("--claims-pin-reason", metavar="TEXT", default=None,
                    help="why the baselines are re-pinned (stored in the baseline file with the commit)")
    group.addoption("--claims-baseline-gate", "--claims-fail-on-regression", action="store_true",
                    dest="claims_baseline_gate",
                    help="fail the session when a verdict flipped, a gated figure moved beyond its tolerance or "
                         "a pinned record was not measured, against the plan's baselines (CI)")
    group.addoption("--plan", metavar="NAME", default=None,
                    help="measurement plan whose sample sizes every claim uses (engine/data/plans.toml: default, "
                         "smoke, ...); shown in every record (default: each claim's own, usually 'default')")
    group.addoption("--yes", action="store_true",
                    help="run a plan whose estimated core time exceeds the limit (engine.planner.check_session)")
    group.addoption("--allow-cpu-gpu-tier", action="store_true",
                    help="run gpu-tier claims on CPU when their weights are present")
    group.addoption("--executor", metavar="NAME", default="local",
                    help="where the measurements a claim's cache misses need are computed: local (this process, "
                         "default) or ray (a Ray cluster, --ray-address; pip install -e '.[ray]'): same cache keys, "
                         "same records (README, 'A claims run on Ray')")
    group.addoption("--ray-address", metavar="ADDR", default=None,
                    help="with --executor ray: the cluster (HOST:PORT, ray://HOST:PORT, auto; default $RAY_ADDRESS, "
                         "else a running local cluster, else a new one)")
    group.addoption("--claims-resumes", metavar="RUN", default=None,
                    help="this session resumes RUN, an interrupted run of the same plan under the results root: its "
                         "measurements come from the cache, and this run's meta lists every part's wall time "
                         "(parts, wall_s_total)")
    group.addoption("--model-dir", metavar="DIR", default=None,
                    help="directory holding local model folders of the seed's models (sets MI_ATLAS_MODEL_DIR)")


def pytest_configure(config: pytest.Config) -> None:
    model_dir = config.getoption("--model-dir")
    if model_dir:
        os.environ["MI_ATLAS_MODEL_DIR"] = str(Path(model_dir).expanduser().resolve())
    try:  # the data files, whole, and the plan's estimated cost: one line each, before anything runs
        from engine import templates  # the blocks (their sizes, read from the plans file) and the rule templates

        planner.check_session(config.getoption("--plan"), yes=config.getoption("--yes") or config.option.collectonly)
        catalogue = verdicts.load_catalogue(config.getoption("--claims-catalogue"))
        templates.check(catalogue)  # every row's template and parameters (or procedure), before anything runs
        catalogue = _with_claims_file(config, catalogue)
    except (ClaimError, plans.PlanError) as exc:
        raise pytest.UsageError(str(exc)) from exc
    config.stash[CATALOGUE] = catalogue
    config.stash[RESUMED_PARTS] = _resumed_parts(config)
    _configure_executor(config)
    _PLAN[0] = settings(config).session_plan
    _check_baseline_options(config)
    for name, text in BASE_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    for scale, text in catalogue.scales.items():
        config.addinivalue_line("markers", f"{scale}: {text}")
    for block in catalogue.blocks:
        config.addinivalue_line("markers", f"{block}: claims of the {block} block")
    if not hasattr(config, "workerinput"):  # the xdist controller or a plain session writes the results
        config.pluginmanager.register(ClaimsSession(config), "mi-atlas-claims-session")


def _resumed_parts(config: pytest.Config) -> list[dict]:
    """``--claims-resumes RUN``: the parts of the interrupted run RUN (its own ``parts`` when it resumed another,
    else itself: run id, commit, start and wall time), checked before anything runs: RUN is a run under the results
    root, incomplete, of the session's plan; else a one-line usage error."""
    name = config.getoption("--claims-resumes")
    if not name:
        return []
    root = settings(config).results
    path = Path(root) / results.RUNS_DIR / name / results.RUN_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))["meta"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise pytest.UsageError(f"--claims-resumes {name}: {path} is not a run's claims file ({_one_line(exc)}); "
                                f"name a run directory under {Path(root) / results.RUNS_DIR}") from None
    plan = settings(config).session_plan
    if not meta.get("incomplete"):
        raise pytest.UsageError(f"--claims-resumes {name}: that run finished (not marked incomplete): there is "
                                "nothing to resume; run the plan anew")
    if meta.get("plan") != plan:
        raise pytest.UsageError(f"--claims-resumes {name}: that run is of plan {meta.get('plan')!r}, this session "
                                f"of {plan!r}; resume it with --plan {meta.get('plan')}")
    return list(meta.get("parts") or [{k: meta.get(k) for k in ("run", "git_commit", "started", "duration_s")}])


def _configure_executor(config: pytest.Config) -> None:
    """``--executor`` / ``--ray-address``: usage errors (one line, before anything runs), then this process's
    measurement executor (``engine.executors``: a Ray actor per pytest process, connected at the first cache miss;
    the xdist controller, which measures nothing, never connects)."""
    from engine import executors

    name, address = config.getoption("--executor"), config.getoption("--ray-address")
    try:
        executors.measurement_options(name, address)
    except executors.ExecutorError as exc:
        raise pytest.UsageError(str(exc)) from None
    if name == "ray":
        config.stash[EXECUTOR] = executors.RayMeasurements(address)
        config.stash[PREVIOUS_EXECUTOR] = executors.use_measurement_executor(config.stash[EXECUTOR])


def pytest_unconfigure(config: pytest.Config) -> None:
    executor = config.stash.get(EXECUTOR, None)
    if executor is not None:
        from engine import executors

        executors.use_measurement_executor(config.stash.get(PREVIOUS_EXECUTOR, None))
        executor.close()


def executor_meta(config: pytest.Config) -> dict:
    """What a run's meta says about where its measurements were computed (no figure depends on it)."""
    name = config.getoption("--executor")
    meta: dict = {"executor": name}
    if name == "ray":
        meta["ray_address"] = config.getoption("--ray-address") or os.environ.get("RAY_ADDRESS") or "default"
    return meta


def _with_claims_file(config: pytest.Config, catalogue: Catalogue) -> Catalogue:
    """The session's claims: the catalogue, or a user's ``--claims-file`` (beside the catalogue with
    ``--with-catalogue``), every row checked before anything runs."""
    path = config.getoption("--claims-file")
    if not path:
        if config.getoption("--with-catalogue"):
            raise ClaimError("--with-catalogue goes with --claims-file FILE (the catalogue runs by default)")
        return catalogue
    from engine import claims_file

    user = claims_file.load_claims_file(path)
    return claims_file.merged(catalogue, user) if config.getoption("--with-catalogue") else user


def settings(config: pytest.Config) -> RunSettings:
    """The session's run settings (``--plan``, ``--claims-results``, ``--claims-baselines``), built once from the
    options (by whichever hook asks first)."""
    if SETTINGS not in config.stash:
        config.stash[SETTINGS] = RunSettings.of(plan=config.getoption("--plan"),
                                                results=config.getoption("--claims-results"),
                                                baselines=config.getoption("--claims-baselines"),
                                                root=config.rootpath)
    return config.stash[SETTINGS]


def _check_baseline_options(config: pytest.Config) -> None:
    """Usage errors (one line, before anything runs): a results root or baselines directory that is a file, a
    re-pin without a reason, a gate without baselines, with a malformed baseline file (every file is validated
    here, not after the measurements) or with baselines lacking a record the catalogue and the plan declare."""
    for option in ("--claims-results", "--claims-baselines"):
        value = config.getoption(option)
        if value and Path(value).expanduser().exists() and not Path(value).expanduser().is_dir():
            raise pytest.UsageError(f"{option} {value}: is a file, not a directory")
    if config.getoption("--claims-update-baseline") and not (config.getoption("--claims-pin-reason") or "").strip():
        raise pytest.UsageError("--claims-update-baseline needs --claims-pin-reason \"why\" (stored in the baseline)")
    if config.getoption("claims_baseline_gate") and not config.getoption("--claims-update-baseline"):
        plan, where = settings(config).session_plan, settings(config).baselines_dir
        if not results.baseline_files(where, plan):
            raise pytest.UsageError(
                f"--claims-baseline-gate: no baselines pinned for plan {plan!r} under {where}: pin them with "
                f"`mi-atlas baselines pin --plan {plan} --reason \"...\" RUN_DIR [RUN_DIR ...]`")
        try:
            pinned = results.load_plan_baselines(where, plan)
            lacking = sorted(results.declared_records(config.stash[CATALOGUE], plan) - set(pinned))
        except results.BaselineError as exc:
            raise pytest.UsageError(f"--claims-baseline-gate: {exc}") from exc
        if lacking:
            files = sorted({m for _, m, _ in lacking} - {p.stem for p in results.baseline_files(where, plan)})
            raise pytest.UsageError(
                f"--claims-baseline-gate: the baselines of plan {plan!r} under {where} lack {len(lacking)} record(s) "
                f"the catalogue declares (e.g. {' '.join(lacking[0][:2])} [{lacking[0][2]}]"
                + (f"; no file {', '.join(f + '.json' for f in files)}" if files else "")
                + f"): re-pin them with `mi-atlas baselines pin --plan {plan} --reason \"...\" RUN_DIR`")


# ------------------------------------------------------------------------------------------------ collection


def claim_params(claim_id: str, models: list[str] | None = None, *, protocols: tuple[str, ...] | None = None,
                 claim_in_id: bool = False):
    """``pytest.param`` per model, each marked ``claim(claim_id, model=...)``: parametrize a claim test with it.

    Default models: the claim's gpu-tier models, then its cpu-tier targets (each cpu model the session's plan
    lists, or all of them as one "+"-joined group for a multi-model claim), from the packaged catalogue.
    ``claim_in_id``: the test id is ``<claim>:<model>`` (a test parametrized with several claims' params, which
    would share a model id).
    """
    catalogue = verdicts.load_catalogue()
    claim = catalogue[claim_id]
    if models is None:
        models = (list(claim.models) if "gpu" in claim.tiers else []) + (
            catalogue.cpu_targets(claim, _PLAN[0]) if "cpu" in claim.tiers else [])
    kwargs = {"protocols": tuple(protocols)} if protocols else {}
    return [pytest.param(model, marks=pytest.mark.claim(claim_id, model=model, **kwargs),
                         id=f"{claim_id}:{model}" if claim_in_id else model)
            for model in models]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The generic claim test (``claims/test_claims.py``) asks for ``row``: one param per catalogue row and
    target (every row naming a template or a procedure), each marked ``claim(id, model=...)`` and with the row's
    own ``marks``; the id is ``<claim>:<model>``."""
    if "row" not in metafunc.fixturenames:
        return
    catalogue = metafunc.config.stash[CATALOGUE]
    plan = settings(metafunc.config).session_plan  # the plan's cpu models (engine/data/plans.toml)
    params = []
    for claim in (c for c in catalogue if c.template or c.procedure):
        for model in catalogue.targets(claim, plan):
            marks = [pytest.mark.claim(claim.id, model=model), *(getattr(pytest.mark, m) for m in claim.marks)]
            params.append(pytest.param(claim.id, marks=marks, id=f"{claim.id}:{model}"))
    metafunc.parametrize("row", params)


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection sees the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    catalogue = config.stash[CATALOGUE]
    marked = [item for item in items if item.get_closest_marker("claim")]
    if not marked:
        return
    from engine import models as model_registry  # imports torch: only when claim tests are collected

    registered = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    for item in marked:
        try:
            target, markers = _target(item.get_closest_marker("claim"), catalogue, model_registry.REGISTRY)
        except ClaimError as exc:
            # A malformed claim marker is a collection error of that test (shown by xdist too), never a skip.
            items.remove(item)
            config.hook.pytest_collectreport(report=pytest.CollectReport(
                item.nodeid, "failed", f"{item.nodeid}: {exc}", []))
            continue
        item.stash[TARGET] = target
        for name in markers:
            if name not in registered:  # e.g. a scale the catalogue's [scales] does not list
                config.addinivalue_line("markers", f"{name}: derived from the model registry")
                registered.add(name)
            item.add_marker(name)


def _target(mark: pytest.Mark, catalogue: Catalogue, registry: dict) -> tuple[Target, list[str]]:
    """The claim x model a marked test measures, and the markers that follow from it."""
    if len(mark.args) != 1 or not isinstance(mark.args[0], str):
        raise ClaimError("use @pytest.mark.claim('CLAIM-ID', model='registry-key')")
    unknown = set(mark.kwargs) - {"model", "protocols"}
    if unknown:
        raise ClaimError(f"claim marker: unknown argument(s) {sorted(unknown)} (allowed: model, protocols)")
    claim = catalogue[mark.args[0]]
    model = mark.kwargs.get("model")
    if not model:
        raise ClaimError(f"claim marker for {claim.id} needs model=... (one of {', '.join(claim.models)} or a cpu "
                         f"model: {', '.join(catalogue.cpu_models)})")
    model = model if isinstance(model, str) else GROUP_SEP.join(model)
    specs = []
    for key in model.split(GROUP_SEP):
        if key not in registry:
            raise ClaimError(f"{claim.id}: model {key!r} is not in the model registry ({', '.join(registry)})")
        specs.append(registry[key])
    if any(spec.tier not in ("cpu", "gpu", "local") for spec in specs):
        raise ClaimError(f"{claim.id}: model {model!r} is not a cpu- or gpu-tier model (or a local directory of a "
                         "claims file); test-tier models never give a verdict")
    tier = "gpu" if any(spec.tier == "gpu" for spec in specs) else "cpu"
    if tier not in claim.tiers:
        raise ClaimError(f"{claim.id} has no {tier} tier (tiers: {', '.join(claim.tiers)})")
    if tier == "gpu" and model not in claim.models:
        raise ClaimError(f"{claim.id}: {model!r} is not one of the claim's gpu-tier models "
                         f"({', '.join(claim.models)}) in {catalogue.path}")
    protocols = tuple(mark.kwargs.get("protocols") or catalogue.protocols_of(claim))
    bad = [p for p in protocols if p not in catalogue.protocols]
    if bad:
        raise ClaimError(f"{claim.id}: unknown protocol(s) {bad} (catalogue: {', '.join(catalogue.protocols)})")
    scales = sorted({spec.scale for spec in specs})
    return Target(claim=claim, model=model, tier=tier, protocols=protocols), [tier, *scales, claim.block]


# ------------------------------------------------------------------------------------------------ running


@pytest.hookimpl(tryfirst=True)  # before any fixture (e.g. a model load) is set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    target = item.stash.get(TARGET, None)
    if target is None:
        return
    recorder = PytestRecorder(target, git_commit=results.git_commit(str(item.config.rootpath)), test=item.nodeid,
                              settings=settings(item.config))
    item.stash[RECORDER] = recorder
    item.stash[REPORTED] = 0
    reasons = _unavailable(target, item.config)
    if reasons:
        recorder.untested("; ".join(reasons))


def _unavailable(target: Target, config: pytest.Config) -> list[str]:
    """Why this claim x model cannot run here (empty when it can)."""
    from engine import models as model_registry

    reasons = []
    if target.tier == "gpu" and not config.getoption("--allow-cpu-gpu-tier"):
        import torch

        if not torch.cuda.is_available():
            reasons.append("no CUDA device for this gpu-tier claim (--allow-cpu-gpu-tier runs it on CPU)")
    for key in target.models:
        present, why = model_registry.availability(key)
        if not present:
            reasons.append(why)
    return reasons


class PytestRecorder(Recorder):
    """The ``claim`` fixture: a :class:`Recorder` whose ``untested`` also skips the test, and which knows the
    session's run settings (``context``: the claim row on this target under them, for ``engine.templates``)."""

    def __init__(self, target: Target, *, settings: RunSettings | None = None, **kwargs):
        super().__init__(target, **kwargs)
        self.settings = settings or RunSettings()

    @property
    def context(self):
        """The claim row on this target under the session's settings (``engine.templates.ClaimContext``)."""
        from engine import templates

        return templates.ClaimContext(self.target.claim, self.target.models, self.target.tier, self.settings)

    @property
    def plan(self) -> str:
        """The plan that sizes this claim (the session's ``--plan``, else the row's, else ``default``)."""
        return self.settings.plan_for(self.target.claim.params)

    def untested(self, reason: str, protocols=None):  # type: ignore[override]
        super().untested(reason, protocols)
        # reported at the test's own location, not at this line
        raise pytest.skip.Exception(f"UNTESTED: {reason}", _use_item_location=True)


@pytest.fixture
def claim(request: pytest.FixtureRequest) -> PytestRecorder:
    """The claim this test measures: ``claim.record(...)`` per protocol, ``claim.untested(reason)`` to skip.

    Also ``claim.model``, ``claim.models``, ``claim.tier``, ``claim.params`` (rule thresholds from the catalogue)
    and ``claim.seed_figures`` (the seed's figures for this model; empty on the cpu tier).
    """
    recorder = request.node.stash.get(RECORDER, None)
    if recorder is None:
        raise ClaimError(f"{request.node.nodeid} uses the claim fixture without @pytest.mark.claim(ID, model=...)")
    return recorder


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Map the test's verdicts to its outcome and attach the new verdict records to the report."""
    rep = yield
    recorder = item.stash.get(RECORDER, None)
    if recorder is None:
        return rep
    if rep.skipped and recorder.unrecorded and call.when in ("setup", "call"):
        # A plain pytest.skip() in a claim test or its fixtures still leaves a verdict: UNTESTED with the reason,
        # for every protocol the test had not recorded yet.
        Recorder.untested(recorder, _skip_reason(rep))
    if call.when == "call" and (rep.passed or rep.skipped):
        _apply_verdicts(rep, recorder, item.config.getoption("--claims-strict"),
                        gated=item.config.getoption("claims_baseline_gate"))
    start = item.stash[REPORTED]
    rep.claim_records = [json.dumps(r.to_dict()) for r in recorder.records[start:]]
    item.stash[REPORTED] = len(recorder.records)
    if call.when == "teardown":  # junitxml reads properties from the teardown report (junit_family=xunit1)
        for r in recorder.records:
            rep.user_properties.append((f"verdict[{r.claim_id}|{r.model}|{r.protocol}]", r.verdict.value))
            rep.user_properties.append(("claim_record", json.dumps(r.to_dict(), sort_keys=True)))
    return rep


def _skip_reason(rep: pytest.TestReport) -> str:
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    return reason.removeprefix("Skipped: ").removeprefix("UNTESTED: ") or "skipped without a reason"


def _apply_verdicts(rep: pytest.TestReport, recorder: Recorder, strict: bool, gated: bool = False) -> None:
    """A FAILED verdict (or, strictly, REVISED / INCONCLUSIVE) fails its test. Under ``--claims-baseline-gate``
    the session asks "did a verdict or figure move?", not "does the claim hold?": verdicts keep their words and
    letters, and the gate alone decides the exit status (a FAILED that is the pinned verdict is no regression)."""
    records = recorder.records
    if not records:
        rep.outcome = "failed"
        rep.longrepr = (f"claim test {recorder.claim.id} on {recorder.model} recorded no verdict: call "
                        "claim.record(...) for each protocol measured, or claim.untested(reason)")
        return
    missing = recorder.unrecorded
    if missing:
        rep.outcome = "failed"
        rep.longrepr = (f"claim test {recorder.claim.id} on {recorder.model} recorded no verdict for protocol(s) "
                        f"{', '.join(missing)} that the claim declares: record each (or claim.untested(reason, "
                        f"protocols=[...]) with the reason it cannot run)")
        return
    strict_fail = (Verdict.REVISED, Verdict.INCONCLUSIVE)
    failing = [r for r in records if r.verdict is Verdict.FAILED or (strict and r.verdict in strict_fail)]
    if failing and not gated:
        rep.outcome = "failed"
        rep.longrepr = "\n".join(_failure_text(r) for r in failing)


def _failure_text(r: VerdictRecord) -> str:
    head = f"{r.claim_id} on {r.model} [{r.protocol}]: {r.verdict.value}"
    if r.verdict in (Verdict.REVISED, Verdict.INCONCLUSIVE):
        head += " (fails under --claims-strict)"
    figures = "; ".join(f"{k} = {verdicts.fmt(v, 120)}" for k, v in r.figures.items())
    ci = "; ".join(f"{k} CI [{verdicts.fmt(lo)}, {verdicts.fmt(hi)}]" for k, (lo, hi) in r.ci.items())
    lines = [head, f"  reason: {r.reason}", f"  figures: {figures or '(none)'}", f"  expectation: {r.expectation}"]
    if ci:
        lines.append(f"  intervals: {ci}")
    if r.seeds:
        lines.append(f"  seeds: {r.seeds}")
    if r.n_to_decide:
        lines.append(f"  projected to decide at ~{r.n_to_decide} examples per family")
    return "\n".join(lines)


def _records_of(rep) -> list[VerdictRecord]:
    return [VerdictRecord.from_dict(json.loads(text)) for text in getattr(rep, "claim_records", None) or ()]


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config):
    """Status words of claim tests: INCONCLUSIVE (its own count and letter: not a pass), REVISED (yellow) or
    CONFIRMED for a pass, UNTESTED for a skip; under the gate a FAILED verdict keeps its word (letter ``f``)."""
    verdicts = {r.verdict for r in _records_of(report)}
    if not verdicts:
        return None
    if report.when == "call" and report.passed:
        if Verdict.FAILED in verdicts:  # only under --claims-baseline-gate: the gate, not the verdict, decides
            return "failed verdict", "f", ("FAILED (gated)", {"red": True})
        if Verdict.INCONCLUSIVE in verdicts:
            return "inconclusive", "I", ("INCONCLUSIVE", {"cyan": True})
        if Verdict.REVISED in verdicts:
            return "revised", "R", ("REVISED", {"yellow": True})
        return "passed", ".", ("CONFIRMED", {"green": True})
    if report.skipped and verdicts == {Verdict.UNTESTED}:
        return "skipped", "u", ("UNTESTED", {"purple": True})
    return None


def record_both(claim: Recorder, seed: Finding, rigorous: Finding) -> None:
    """Record the two findings on ``claim`` (a :class:`~engine.verdicts.Recorder`; in pytest the ``claim``
    fixture), seed first, for the protocols the claim's test measures.

    An untested finding becomes an UNTESTED record with its reason and the test goes on. When a finding says
    ``skip_test``, ``claim.untested(reason, [])`` follows the records: under pytest that skips the test with
    that reason (a claim that cannot run here at all is a skip); a plain Recorder records nothing more.
    """
    if (seed.protocol, rigorous.protocol) != ("seed", "rigorous"):
        raise ValueError(f"record_both(claim, seed, rigorous) got findings of {seed.protocol!r} and "
                         f"{rigorous.protocol!r}")
    wanted = getattr(getattr(claim, "target", None), "protocols", ("seed", "rigorous"))
    findings = [f for f in (seed, rigorous) if f.protocol in wanted]
    for f in findings:
        if f.untested:
            Recorder.untested(claim, f.untested, [f.protocol])
        else:
            claim.record(**f.record(), plan=getattr(claim, "plan", None) or plans.plan_name(claim.params))
    skips = [f for f in findings if f.untested and f.skip_test]
    if skips:
        claim.untested(skips[-1].untested, [])


# ------------------------------------------------------------------------------------------------ session


class ClaimsSession:
    """Controller-side state: collects verdicts from reports, appends the registry, writes the run at the end.

    The run files are written whatever happens (``pytest_sessionfinish``'s ``finally``), with the records made so
    far, and marked incomplete (``meta["incomplete"]`` with the reasons) when the session did not finish cleanly:
    interrupted, an internal error, a registry line or a run file that could not be written. ``latest`` moves
    only to a complete run and ``mi-atlas baselines pin`` refuses an incomplete one. A registry append that fails
    is one warning line, never an INTERNALERROR.
    """

    def __init__(self, config: pytest.Config):
        self.config = config
        self.settings = settings(config)
        self.root = self.settings.results
        self.records: list[VerdictRecord] = []
        self.run_dir: Path | None = None
        self.run: results.Run | None = None
        self.started = results.utc_now()
        self.clock = time.perf_counter()
        self.commit = results.git_commit(str(config.rootpath))
        self.plan = self.settings.session_plan
        self.baselines = self.settings.baselines_dir
        self.gate: results.GateReport | None = None
        self.gate_failed = False
        self.baseline_error = ""
        self.incomplete: list[str] = []  # why the run did not finish cleanly
        self.registry_error = ""  # the first failed registry append (one warning for all)
        self.run_dir_error = ""
        self.write_problems: list[str] = []
        self.pin_error = ""

    def _incomplete(self, reason: str) -> None:
        if reason not in self.incomplete:
            self.incomplete.append(reason)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for record in _records_of(report):
            if self.run_dir is None and not self.run_dir_error:
                try:
                    self.run_dir = results.reserve_run_dir(self.root, self.commit, self.started)
                except OSError as exc:
                    self.run_dir_error = f"{self.root / results.RUNS_DIR}: no run directory ({_one_line(exc)})"
                    self._incomplete("write error: no run directory")
            if self.run_dir is not None:
                record.run = self.run_dir.name
            self.records.append(record)
            try:
                results.append_registry(self.root, record)
            except (OSError, ValueError) as exc:
                if not self.registry_error:
                    self.registry_error = (f"{self.root / results.REGISTRY_FILE}: verdicts not appended "
                                           f"({_one_line(exc)})")
                    self._incomplete(f"write error: registry append failed ({_one_line(exc)})")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            self._incomplete("interrupted")
        elif exitstatus == pytest.ExitCode.INTERNAL_ERROR:
            self._incomplete("internal error during the session")
        try:
            self._finish(session, int(exitstatus))
        except BaseException as exc:
            self._incomplete(f"internal error at the session's end ({_one_line(exc)})")
            raise
        finally:
            self._write_run_files(int(exitstatus))

    def _finish(self, session: pytest.Session, exitstatus: int) -> None:
        """The gate and the re-pin; the run files are written by the caller, whatever happens here."""
        update = self.config.getoption("--claims-update-baseline")
        try:
            pinned = results.load_plan_baselines(self.baselines, self.plan)
            declared = results.declared_records(self.config.stash[CATALOGUE], self.plan) if pinned else set()
        except results.BaselineError as exc:  # a malformed file without the gate: reported, nothing compared
            pinned, declared, self.baseline_error = {}, set(), str(exc)
        if pinned:
            self.gate = results.gate(pinned, self.records, plan=self.plan, baselines=self.baselines,
                                     declared=declared)
        if not self.records:
            if self.fail_on_regression and self.gate is not None:  # the gate compared nothing: not a pass
                self.gate_failed = True
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        if self.run_dir is None:
            return
        self.run = self._make_run(exitstatus)
        if update:
            try:
                if self.incomplete:
                    raise results.BaselineError(f"the run is incomplete ({'; '.join(self.incomplete)})")
                results.pin_plan_baselines(self.baselines, self.plan, [self.run], self.config.getoption(
                    "--claims-pin-reason"), pinned_by="pytest --claims-update-baseline")
                self.run.meta["baseline_updated"] = True
            except (results.BaselineError, OSError) as exc:
                self.pin_error = f"--claims-update-baseline: baselines not re-pinned: {_one_line(exc, False)}"
                if session.exitstatus == pytest.ExitCode.OK:
                    session.exitstatus = pytest.ExitCode.TESTS_FAILED
        # A deliberate re-pin never fails; otherwise a gate that did not pass fails the session only when asked.
        if self.gate is not None and not self.gate.passed and self.fail_on_regression:
            self.gate_failed = True
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _make_run(self, exitstatus: int) -> results.Run:
        catalogue = self.config.stash[CATALOGUE]
        meta = {
            "run": self.run_dir.name, "git_commit": self.commit, "started": self.started.isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - self.clock, 1), "args": list(self.config.invocation_params.args),
            "catalogue": catalogue.path, "plan": self.plan, "baseline_updated": False,
            "claims_file": self.config.getoption("--claims-file"),
            "with_catalogue": bool(self.config.getoption("--with-catalogue")),
            "exit_status": int(exitstatus), "torch_threads": _torch_threads(), **results.provenance(),
            **executor_meta(self.config),
        }
        earlier = self.config.stash.get(RESUMED_PARTS, [])
        if earlier:  # a resumed run: every part's wall time, and their sum (what the plan took end to end)
            parts = [*earlier, {k: meta[k] for k in ("run", "git_commit", "started", "duration_s")}]
            meta["parts"] = parts
            meta["wall_s_total"] = round(sum(float(p.get("duration_s") or 0.0) for p in parts), 1)
        if self.gate is not None:
            meta["gate"] = self.gate.to_dict()
        changes = self.gate.changes if self.gate is not None else []
        return results.Run(self.run_dir.name, meta, self.records, changes)

    def _write_run_files(self, exitstatus: int) -> None:
        """claims.json and report.md with the records made so far (called from a ``finally``: never raises)."""
        if not self.records or self.run_dir is None:
            return
        try:
            if self.run is None:
                try:
                    self.run = self._make_run(exitstatus)
                except Exception as exc:  # provenance or the catalogue failed: the records still get written
                    self._incomplete(f"internal error while describing the run ({_one_line(exc)})")
                    self.run = results.Run(self.run_dir.name, {
                        "run": self.run_dir.name, "git_commit": self.commit, "plan": self.plan,
                        "started": self.started.isoformat(timespec="seconds"), "exit_status": int(exitstatus)},
                        self.records, [])
            for reason in self.incomplete:
                results.mark_incomplete(self.run, reason)
            from engine.report_html import write_page_quietly  # report.html, in the same finally

            self.write_problems = results.write_run(self.run_dir, self.run, pages=(write_page_quietly,))
            for reason in self.run.meta.get("incomplete_reasons", []):
                self._incomplete(reason)
        except Exception as exc:
            self.write_problems.append(f"{self.run_dir}: run files not written ({_one_line(exc)})")

    @property
    def fail_on_regression(self) -> bool:
        return (self.config.getoption("claims_baseline_gate")
                and not self.config.getoption("--claims-update-baseline"))

    def _write_gate(self, tr) -> None:
        """The gate's counts, the table of what moved (claim, model, protocol, figure, baseline, new, tolerance,
        verdicts, pinned commit) and the flagged figures."""
        if self.gate is None:
            why = self.baseline_error or f"no baselines pinned under {self.baselines / self.plan}"
            tr.write_line(f"gate [plan {self.plan}]: {why} (nothing compared)", yellow=bool(self.baseline_error))
            return
        failing = not self.gate.passed
        lines = self.gate.lines()
        tr.write_line(lines[0], bold=True, **({"yellow": True} if failing else {"green": True}))
        for line in lines[1:]:
            tr.write_line("  " + line, yellow=failing or line.startswith("flag:"))
        if failing and self.fail_on_regression:
            tr.write_line("  --claims-baseline-gate: the session fails because of these changes", red=True)
        elif failing and not self.config.getoption("--claims-update-baseline"):
            tr.write_line("  (reported only; --claims-baseline-gate makes them fail the session)")

    def _write_problems(self, tr) -> None:
        """One line per thing that could not be written, and whether the run is complete."""
        if self.registry_error:
            tr.write_line(f"warning: {self.registry_error}: the run is marked incomplete", yellow=True)
        if self.run_dir_error:
            tr.write_line(f"error: {self.run_dir_error}: {len(self.records)} verdict(s) not written", red=True)
        for problem in self.write_problems:
            tr.write_line(f"error: {problem}", red=True)
        if self.pin_error:
            tr.write_line(self.pin_error, red=True)
        if self.run is not None and self.run.meta.get("incomplete"):
            tr.write_line(f"run INCOMPLETE ({'; '.join(self.run.meta.get('incomplete_reasons', []))}): "
                          f"{results.LATEST} not moved; `mi-atlas baselines pin` refuses it", red=True)

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:
        if self.run is None:
            if self.gate_failed:
                terminalreporter.write_sep("=", "MI-Atlas claims")
                for line in self.gate.lines():
                    terminalreporter.write_line(line, red=True)
                terminalreporter.write_line("--claims-baseline-gate: no claim record was measured: the session fails",
                                            red=True)
            if self.records:
                self._write_problems(terminalreporter)
            return
        tr = terminalreporter
        tr.write_sep("=", "MI-Atlas claims")
        header, body = results.table_cells(self.run.records)
        widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header) - 1)]
        verdict_columns = range(3, len(header) - 1)
        tr.write_line("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[-1], bold=True)
        for cells in body:
            for i, (cell, width) in enumerate(zip(cells, widths)):
                tr.write(cell.ljust(width) + "  ", **(VERDICT_MARKUP.get(cell, {}) if i in verdict_columns else {}))
            room = max(40, config.get_terminal_writer().fullwidth - sum(widths) - 2 * len(widths) - 1)
            lines = textwrap.wrap(cells[-1], room) or [""]  # the decisive figure in full: wrapped, never cut
            tr.write_line(lines[0])
            for line in lines[1:]:
                tr.write_line(" " * (sum(widths) + 2 * len(widths)) + line)
        counts = self.run.counts()
        tr.write_line("claims: " + ", ".join(f"{n} {v}" for v, n in counts.items())
                      + " (per claim x model x protocol)")
        tr.write_line(results.decision_summary(self.run.records))
        self._write_gate(tr)
        if self.run.meta.get("baseline_updated"):
            tr.write_line(f"baselines of plan {self.plan} re-pinned at {self.commit} under {self.baselines} "
                          "(--claims-update-baseline)")
        tr.write_line(f"run: {self.run_dir} (claims.json, report.md)")
        tr.write_line(f"registry: {self.root / results.REGISTRY_FILE}")
        self._write_problems(tr)


def _one_line(exc: BaseException, name: bool = True) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0][:300] if lines else ""
    return f"{type(exc).__name__}: {text}" if name or not text else text


def _torch_threads() -> int | None:
    import sys

    torch = sys.modules.get("torch")  # recorded when the session used torch; never imported for it
    return torch.get_num_threads() if torch is not None else None


VERDICT_MARKUP = {
    Verdict.CONFIRMED.value: {"green": True, "bold": True},
    Verdict.REVISED.value: {"yellow": True, "bold": True},
    Verdict.FAILED.value: {"red": True, "bold": True},
    Verdict.INCONCLUSIVE.value: {"cyan": True, "bold": True},
    Verdict.UNTESTED.value: {"purple": True},
}
